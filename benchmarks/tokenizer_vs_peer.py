"""One tokenizer train step on CPU: ours beside magvit2-pytorch's `VideoTokenizer`, in one run.

    .venv/bin/python benchmarks/tokenizer_vs_peer.py [--repeats=2] [--ours=base64,base32] \
        [--theirs=exact,factorized] [--torch-python=/work/bench_venv/bin/python] [--thesis] \
        [--malloc=retain|default]

Same input for both: B=2 clips of 17x64x64 RGB -> 5x8x8 latents, 2^18 codes.
  - ours: `quickstart_tokenizer:recipe=reconstruction` widened to base 64,
    multipliers (1, 2, 4, 4), 1 residual block, temporal down-sampling (F, T, T),
    18 bits, exact codebook entropy (55.6M parameters; ``:base32``, base 32 and
    multipliers (1, 2, 4, 8): 34.9M); the trainer's real jitted step (L2 + LFQ
    commitment + entropy, Adam, EMA);
  - theirs: magvit2-pytorch 0.5.1 `VideoTokenizer` (`PEER_LAYERS`: conv-only,
    3 spatial + 2 temporal compressions, 2 residual units each, init_dim 32,
    max_dim 256; 26.5M parameters), LFQ with one 2^18 codebook (``exact``, their
    default full entropy) or 2 codebooks of 2^9 (``factorized``); no GAN,
    perceptual weight 0; ``loss.backward()`` and an Adam step. Their module
    imports torchvision (perceptual loss, data) and cv2 at the top; both are
    stubbed, as neither runs here.

Each side runs in a fresh subprocess (theirs under --torch-python, a venv that is
not a videogen dependency: ``python3 -m venv /work/bench_venv``, torch CPU,
``pip install --no-deps magvit2-pytorch==0.5.1 vector-quantize-pytorch einops
einx beartype gateloop-transformer taylor-series-linear-attention kornia
kornia_rs rotary-embedding-torch frozendict loguru torch-einops-utils packaging
jaxtyping pytorch-warmup pillow safetensors pyyaml numpy``).
Seconds per step: median of --repeats after --warmup steps (3: with freed memory
kept, the heap settles over the first steps). ``--malloc=retain`` (default) runs both
sides with glibc keeping freed memory for reuse: ours through
`videogen.allocator.retain_freed_memory`, as `videogen.main` runs, the peer through
the same settings as glibc environment variables (`allocator.ENVIRONMENT`); without it
each step re-faults its temporaries (``--malloc=default``). FLOPs: XLA's cost
analysis of our compiled step; torch's `FlopCounterMode` over one of their
forward + backward (it counts matmuls and convolutions only; Adam is not
counted by torch; XLA counts it, well under 1 GFLOP). Page faults and system
time: per timed step (fresh pages faulted in are most of the system time). Peak memory: the
child's resident-set high-water mark above its level before the first step
(benchmarks/lfq.py). The float32 matmul peak is measured in this process before
and after the rows; the larger is kept.

``--thesis`` adds the thesis K600 tokenizer (magvit2_k600, 370.6M parameters) at
B=1, 17x128x128, one step after compile (reconstruction recipe).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lfq import _cap_address_space, _is_allocation_failure, _measure  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TORCH_PYTHON = "/work/bench_venv/bin/python"
RESULT_PREFIX = "RESULT "
BATCH, FRAMES, SIZE, BITS = 2, 17, 64, 18
PEER_LAYERS = (
    "residual",
    "compress_space",
    ("consecutive_residual", 2),
    "compress_space",
    ("consecutive_residual", 2),
    "compress_space",
    ("consecutive_residual", 2),
    "compress_time",
    ("consecutive_residual", 2),
    "compress_time",
    ("consecutive_residual", 2),
)
GIB = 2**30


def _video(batch: int, frames: int, size: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8)


# ---- ours (this interpreter) ----


def our_config(thesis: bool, widths: str = "base64"):
    """``base64``: the issue's widened quickstart (55.6M); ``base32``: base 32, multipliers
    (1, 2, 4, 8) (34.9M parameters, still above the peer's, at about a third of the FLOPs:
    the width moves from the full-resolution levels to the 8x8 and 16x16 ones)."""
    from videogen import config as config_lib

    if thesis:
        path = os.path.join(ROOT, "experiments", "magvit2_k600.py")
        c = config_lib.load_experiment(path).get_config(None)
        c.batch_size, c.data.num_frames, c.data.resolution = 1, 17, 128
    else:
        path = os.path.join(ROOT, "experiments", "quickstart_tokenizer.py")
        c = config_lib.load_experiment(path).get_config("recipe=reconstruction")
        c.model.base_channels = 64 if widths == "base64" else 32
        c.model.channel_multipliers = (1, 2, 4, 4) if widths == "base64" else (1, 2, 4, 8)
        c.model.temporal_downsample = (False, True, True)
        c.model.num_res_blocks = 1
        c.model.num_bits = BITS
        c.batch_size, c.data.num_frames, c.data.resolution = BATCH, FRAMES, SIZE
    c.model.entropy_groups = 1
    c.loss.generator_adversarial_weight = 0.0
    c.loss.perceptual_weight = 0.0
    return c


def _run_ours(args) -> dict:
    import functools

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from videogen import mfu, optim
    from videogen.trainers import tokenizer as trainer

    config = our_config(args.thesis, args.variant)
    b, t, r = config.batch_size, config.data.num_frames, config.data.resolution
    batch = {"video": jnp.asarray(_video(b, t, r))}
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    graphdef, state = nnx.split(trainer.create_train_state(config))
    # No donation: the EMA model starts as the same buffers as the model.
    step = jax.jit(functools.partial(trainer.train_step, graphdef, None, config, schedule, False))
    compiled = step.lower(state, None, batch).compile()
    params = sum(
        x.size for x in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state).model, nnx.Param))
    )
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], None, batch)
        return jax.block_until_ready(metrics)

    _cap_address_space(args.memory_limit_gb)
    stats, metrics = _measure(one_step, args.warmup, args.repeats)
    return {
        **stats,
        "params": int(params),
        "flops": mfu.program_cost(compiled).flops_per_device,  # oneDNN's convolutions included
        "xla_temp_mb": compiled.memory_analysis().temp_size_in_bytes / 2**20,
        "loss": float(metrics.get("loss", float("nan"))) if hasattr(metrics, "get") else None,
    }


# ---- theirs (--torch-python) ----


def _stub_unused_imports() -> None:
    """magvit2_pytorch imports torchvision (VGG perceptual loss, data) and cv2 (data) at
    the top; neither runs with perceptual weight 0 and tensors as input."""
    from unittest import mock

    for name in (
        "torchvision",
        "torchvision.models",
        "torchvision.transforms",
        "torchvision.utils",
        "cv2",
        "accelerate",
        "accelerate.utils",
        "ema_pytorch",
        "pytorch_custom_utils",
        "pytorch_custom_utils.utils",
    ):
        sys.modules.setdefault(name, mock.MagicMock(name=name))

    class VGG16_Weights:  # a default argument's annotation; never used
        DEFAULT = None

    sys.modules["torchvision.models"].VGG16_Weights = VGG16_Weights


def _run_theirs(args) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    _stub_unused_imports()
    from magvit2_pytorch import VideoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    codebooks = dict(exact=(1, 2**BITS), factorized=(2, 2 ** (BITS // 2)))[args.variant]
    model = VideoTokenizer(
        image_size=SIZE,
        init_dim=32,
        max_dim=256,
        layers=PEER_LAYERS,
        num_codebooks=codebooks[0],
        codebook_size=codebooks[1],
        use_gan=False,
        perceptual_loss_weight=0.0,
        flash_attn=False,
    )
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    # Their layout is [b, c, t, h, w] in [-1, 1].
    video = torch.from_numpy(_video(BATCH, FRAMES, SIZE)).float().div(127.5).sub(1.0)
    video = video.permute(0, 4, 1, 2, 3).contiguous()

    def one_step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model(video, return_loss=True)
        loss.backward()
        optimizer.step()
        return loss

    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = model(video, return_loss=True)
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    _cap_address_space(args.memory_limit_gb)
    stats, loss = _measure(one_step, args.warmup, args.repeats)
    return {
        **stats,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops": float(counter.get_total_flops()),
        "loss": loss.item(),
        "threads": torch.get_num_threads(),
    }


def child_main(args) -> None:
    if args.child == "ours" and args.malloc == "retain":
        from videogen import allocator

        allocator.retain_freed_memory()  # before jax starts any thread
    try:
        result = _run_ours(args) if args.child == "ours" else _run_theirs(args)
    except Exception as error:  # only allocation failures are a result; others propagate
        if not _is_allocation_failure(error):
            raise
        result = {"over_limit": True, "error": str(error).splitlines()[0][:200]}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---- parent ----


def run_child(python: str, child: str, variant: str, args, thesis: bool = False) -> dict:
    command = [
        python,
        os.path.abspath(__file__),
        f"--child={child}",
        f"--variant={variant}",
        f"--warmup={args.warmup}",
        f"--repeats={1 if thesis else args.repeats}",
        f"--threads={args.threads}",
        f"--memory-limit-gb={args.memory_limit_gb}",
        f"--malloc={args.malloc}",
    ] + (["--thesis"] if thesis else [])
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if args.malloc == "retain" and child == "theirs":
        # Ours calls `retain_freed_memory`, as `videogen.main` does; the peer gets the same
        # settings as glibc's environment variables.
        from videogen import allocator

        env.update(allocator.ENVIRONMENT)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    lines = [s for s in proc.stdout.splitlines() if s.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        raise SystemExit(
            f"{child}/{variant} failed (exit {proc.returncode}): {shlex.join(command)}"
        )
    row = json.loads(lines[-1][len(RESULT_PREFIX) :])
    print(f"{child}/{variant}: {json.dumps(row)}", flush=True)
    return row


def _row(name: str, r: dict, peak: float, reference_s: float | None) -> str:
    if r.get("over_limit"):
        return f"| {name} | > memory limit | | | | | | |"
    s = r["median_ms"] / 1e3
    gflops = r["flops"] / 1e9
    speed = f"{reference_s / s:.2f}" if reference_s else "-"
    return (
        f"| {name} | {r['params'] / 1e6:.1f}M | {s:.2f} | {gflops:.0f} | {gflops / s:.0f} | "
        f"{gflops / s / peak:.2f} | {r['peak_mb'] / 1024:.2f} | {r['minor_faults'] / 1e3:.0f}k / "
        f"{r['system_s']:.2f} | {speed} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", choices=("ours", "theirs"))
    parser.add_argument("--variant", default="base64")
    parser.add_argument("--ours", default="base64,base32", help="widths: base64, base32")
    parser.add_argument("--theirs", default="exact,factorized")
    parser.add_argument("--thesis", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--malloc", choices=("retain", "default"), default="retain")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--memory-limit-gb", type=float, default=20.0)
    parser.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    from matmul_peak import measure_matmul_gflops

    peaks = [measure_matmul_gflops()["peak_gflops"]]
    rows = {}
    for variant in filter(None, args.theirs.split(",")):
        rows[f"magvit2-pytorch, {variant}"] = run_child(args.torch_python, "theirs", variant, args)
    for variant in filter(None, args.ours.split(",")):
        name = f"ours {variant}, exact"
        rows[name] = run_child(sys.executable, "ours", variant, args)
    if args.thesis:
        rows["ours, thesis K600 B=1 17x128x128"] = run_child(
            sys.executable, "ours", "base64", args, thesis=True
        )
    peaks.append(measure_matmul_gflops()["peak_gflops"])
    peak = max(peaks)
    reference = rows.get("magvit2-pytorch, exact")
    reference_s = reference["median_ms"] / 1e3 if reference and "median_ms" in reference else None
    print(
        "\nfloat32 matmul peak (jax/numpy, larger), before / after the rows: "
        f"{peaks[0]:.0f} / {peaks[1]:.0f} GFLOP/s"
    )
    print(
        "\n| run | params | s / step | GFLOP / step | GFLOP/s | fraction of matmul peak | "
        "peak memory GiB | page faults / system s per step | speed-up vs theirs exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(_row(name, r, peak, reference_s))


if __name__ == "__main__":
    main()
