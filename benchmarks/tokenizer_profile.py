"""Where the tokenizer's train step spends its time on CPU, op class by op class.

    .venv/bin/python benchmarks/tokenizer_profile.py [--widths=quickstart,base32,thesis] \
        [--clips=17x64x64,17x128x128] [--batch=2] [--repeats=2]

For each channel width (``quickstart``: the widened quickstart of
benchmarks/tokenizer_vs_peer.py, base 64, multipliers 1,2,4,4, 1 residual block; ``base32``:
its ``base32`` variant, base 32, multipliers 1,2,4,8;
``thesis``: magvit2_k600, base 128, multipliers 1,2,2,4, 4 residual blocks) and
clip, runs the model once abstractly to record every layer's input shape, then
times each distinct layer on its own, jitted, forward and forward + backward
(gradients w.r.t. its input and parameters, as in training), and multiplies by
how often it occurs. Layers are grouped by kind: 3x3x3 causal conv (residual
blocks, conv_in / conv_out), strided down-sampling conv, depth-to-space
up-sampler (its conv + the shuffle), 1x1x1 conv, group norm, adaptive group
norm, LFQ. The whole train step (reconstruction recipe: L2 + LFQ, Adam, EMA) is
timed too; what the layers do not account for (SiLU, residual adds, losses,
optimizer, and XLA's fusion across layers) is the remainder. FLOPs are
`mfu.program_cost` of each compiled program (XLA's cost analysis plus oneDNN's calls).
Each time is the best of --repeats after a warm-up call. On a shared machine a
single layer's time can be off by 2x; the sums per kind and the interleaved step
times are the figures to compare. Peak memory: about 8 GiB at 17x64x64 (the
compiled step's state and temporaries), so run nothing large beside it.
The float32 matmul peak is measured in the same run (benchmarks/matmul_peak.py).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_peak import measure_matmul_gflops  # noqa: E402
from timing import best_seconds  # noqa: E402
from tokenizer_vs_peer import our_config  # noqa: E402

from videogen import mfu, optim  # noqa: E402
from videogen.models import layers  # noqa: E402
from videogen.trainers import tokenizer as trainer  # noqa: E402

# Modules timed as a whole; their inner convs are not timed again.
WHOLE = (layers.DepthToSpaceUpsample, layers.AdaptiveGroupNorm)


def config_for(width: str, clip: tuple[int, int, int], batch: int):
    c = our_config(thesis=width == "thesis", widths="base32" if width == "base32" else "base64")
    c.batch_size, c.data.num_frames, c.data.resolution = batch, clip[0], clip[1]
    return c


def kind_of(path: tuple, module: nnx.Module) -> str | None:
    if isinstance(module, layers.DepthToSpaceUpsample):
        return "depth-to-space"
    if isinstance(module, layers.AdaptiveGroupNorm):
        return "adaptive group norm"
    if isinstance(module, layers.GroupNorm):
        return "group norm"
    if isinstance(module, layers.CausalConv3d):
        if any(p in ("upsamples", "adaptive_norms") for p in path):
            return None  # inside a module timed as a whole
        if max(module.strides) > 1:
            return "strided conv"
        return "1x1x1 conv" if module.kernel_size == (1, 1, 1) else "3x3x3 conv"
    return "LFQ" if type(module).__name__ == "LFQ" else None


def record_inputs(model: nnx.Module, video_shape) -> dict[int, tuple]:
    """Every module's input shapes by id, from one abstract forward pass."""
    seen: dict[int, tuple] = {}
    patched = {}
    for cls in (
        layers.CausalConv3d,
        layers.GroupNorm,
        layers.DepthToSpaceUpsample,
        layers.AdaptiveGroupNorm,
        type(model.quantizer),
    ):
        original = cls.__call__

        def call(self, *args, _original=original, **kwargs):
            seen.setdefault(id(self), tuple(a.shape for a in args))
            return _original(self, *args, **kwargs)

        patched[cls] = original
        cls.__call__ = call
    try:
        jax.eval_shape(lambda v: model(v), jax.ShapeDtypeStruct(video_shape, jnp.float32))
    finally:
        for cls, original in patched.items():
            cls.__call__ = original
    return seen


def flops_of(fn, args) -> float:
    return mfu.program_cost(fn.lower(*args).compile()).flops_per_device


def time_module(module: nnx.Module, shapes: tuple, repeats: int) -> dict:
    """Forward and forward + backward of one layer on N(0, 1) inputs."""
    graphdef, params = nnx.split(module)
    rng = np.random.default_rng(0)
    inputs = [jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes]

    def forward(params, *inputs):
        out = nnx.merge(graphdef, params)(*inputs)
        return out[0] if isinstance(out, tuple) else out

    def loss(params, *inputs):
        out = forward(params, *inputs)
        # A non-trivial cotangent: the sum's gradient would be all ones.
        return jnp.vdot(out, jnp.sin(out)) if out.ndim else out

    fwd = jax.jit(forward)
    fwd_bwd = jax.jit(jax.grad(loss, argnums=tuple(range(len(inputs) + 1))))
    args = (params, *inputs)
    return {
        "forward_s": best_seconds(fwd, *args, repeats=repeats),
        "forward_backward_s": best_seconds(fwd_bwd, *args, repeats=repeats),
        "forward_backward_flops": flops_of(fwd_bwd, args),
    }


def time_train_step(config, repeats: int) -> dict[str, float]:
    """Seconds (best of `repeats`) and XLA's FLOPs of the whole train step."""
    b, t, r = config.batch_size, config.data.num_frames, config.data.resolution
    video = jnp.asarray(np.random.default_rng(0).integers(0, 256, (b, t, r, r, 3), dtype=np.uint8))
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    graphdef, state = nnx.split(trainer.create_train_state(config))
    args = (state, None, {"video": video})
    step = functools.partial(trainer.train_step, graphdef, None, config, schedule, False)
    compiled = jax.jit(step).lower(*args).compile()
    return {
        "seconds": best_seconds(compiled, *args, repeats=repeats),
        "flops": mfu.program_cost(compiled).flops_per_device,
    }


def profile(width: str, clip, batch: int, repeats: int) -> dict:
    config = config_for(width, clip, batch)
    model = trainer.create_train_state(config).model
    inputs = record_inputs(model, (batch, *clip, 3))
    groups = collections.defaultdict(list)  # (kind, shapes, module signature) -> modules
    for path, module in nnx.iter_modules(model):
        kind = kind_of(path, module)
        if kind is not None and id(module) in inputs:
            params = tuple(x.shape for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
            key = (kind, inputs[id(module)], params, getattr(module, "strides", None))
            groups[key].append(module)
    rows = collections.defaultdict(lambda: collections.defaultdict(float))
    for (kind, shapes, _, _), modules in groups.items():
        timing = time_module(modules[0], shapes, repeats)
        row = rows[kind]
        row["count"] += len(modules)
        for key, value in timing.items():
            row[key] += value * len(modules)
        print(
            f"  {width} {clip} {kind} x{len(modules)} {shapes}: "
            f"{timing['forward_s'] * 1e3:.0f} / {timing['forward_backward_s'] * 1e3:.0f} ms",
            flush=True,
        )
    return {"rows": rows, "step": time_train_step(config, repeats)}


def print_table(width, clip, batch, result, peak) -> None:
    step = result["step"]
    print(
        f"\n{width} widths, B={batch} x {'x'.join(map(str, clip))}: train step "
        f"{step['seconds']:.1f} s, {step['flops'] / 1e9:.0f} GFLOP, "
        f"{step['flops'] / step['seconds'] / 1e9:.0f} GFLOP/s (matmul peak {peak:.0f})\n"
    )
    print(
        "| kind | layers | forward s | fwd+bwd s | share of step | fwd+bwd GFLOP | "
        "GFLOP/s | of peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = result["rows"]
    accounted = 0.0
    for kind in sorted(rows, key=lambda k: -rows[k]["forward_backward_s"]):
        r = rows[kind]
        s, flops = r["forward_backward_s"], r["forward_backward_flops"]
        accounted += s
        print(
            f"| {kind} | {int(r['count'])} | {r['forward_s']:.2f} | {s:.2f} | "
            f"{s / step['seconds']:.0%} | {flops / 1e9:.0f} | {flops / s / 1e9:.0f} | "
            f"{flops / s / 1e9 / peak:.2f} |"
        )
    rest = step["seconds"] - accounted
    print(
        f"| rest of the step (SiLU, adds, losses, Adam, EMA, fusion) | - | - | {rest:.2f} | "
        f"{rest / step['seconds']:.0%} | - | - | - |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--widths", default="quickstart")
    parser.add_argument("--clips", default="17x64x64")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    peak = measure_matmul_gflops()["peak_gflops"]
    results = []
    for width in args.widths.split(","):
        for clip_text in args.clips.split(","):
            clip = tuple(int(n) for n in clip_text.split("x"))
            result = profile(width, clip, args.batch, args.repeats)
            results.append((width, clip, result))
    peak = max(peak, measure_matmul_gflops()["peak_gflops"])
    for width, clip, result in results:
        print_table(width, clip, args.batch, result, peak)


if __name__ == "__main__":
    main()
