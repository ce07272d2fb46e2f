"""Tokenizer throughput: train steps/s, encode and decode clips/s, and achieved FLOP/s.

    python benchmarks/tokenizer_throughput.py [--configs=quickstart_tokenizer,magvit2_k600:runlocal] \
        [--kernels=onednn+group_norm,onednn,none]

For each experiment config, times (best of --repeats after a compiled warm-up)
  - the trainer's real jitted train steps (forward, backward, Adam, EMA) on one batch: the
    step without the discriminator and, where the config's GAN starts, the step with it;
    the run's train steps/s weighs each by how many of the config's steps use it (until
    the eleventh session only the GAN step was timed, also for stages that never run it),
  - `tokenize` (encode + LFQ) and `detokenize` (decode) on one batch,
and divides each program's FLOPs (`mfu.program_cost`: XLA's cost analysis plus the
oneDNN convolutions it cannot see) by its time. The ratio to the machine's float32 matmul peak, measured in the same run
(benchmarks/matmul_peak.py), says how close the convolutions get to the
hardware on this noisy, shared machine. ``--kernels`` lists the sets of CPU kernels
(`videogen.kernels`) to measure each config with, interleaved: ``onednn`` (convolutions),
``group_norm`` (norms), joined by ``+``; ``none`` is XLA's own operations throughout (as
with VIDEOGEN_ONEDNN=0 VIDEOGEN_GROUP_NORM_KERNEL=0). The default is both kernels.
(Before the group-norm kernel this flag was ``--convolutions=onednn,xla``: now
``--kernels=onednn,none``.) Like `videogen.main`, the script keeps freed memory for reuse
(`videogen.allocator`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from unittest import mock

from videogen import allocator

allocator.retain_freed_memory()  # as videogen.main does, before jax starts its threads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
import numpy as np  # noqa: E402

from videogen import config as config_lib  # noqa: E402
from videogen import mfu, optim  # noqa: E402
from videogen.evaluation import lpips  # noqa: E402
from videogen.kernels import group_norm, onednn_conv  # noqa: E402
from videogen.trainers import frozen_tokenizer  # noqa: E402
from videogen.trainers import tokenizer as trainer  # noqa: E402

KERNELS = {"onednn": onednn_conv, "group_norm": group_norm}

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_peak import measure_matmul_gflops  # noqa: E402  (a sibling benchmark script)
from timing import best_seconds  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec: str):
    """The config of ``experiments/<name>.py[:arg]``."""
    name, _, arg = spec.partition(":")
    path = os.path.join(ROOT, "experiments", f"{name}.py")
    return config_lib.load_experiment(path).get_config(arg or None)


def flops_of(jitted, *args) -> float:
    return mfu.program_cost(jitted.lower(*args).compile()).flops_per_device


def split_specs(text: str) -> list[str]:
    """``--configs`` split at commas; a piece with ``=`` but no experiment name continues the
    previous config's arguments (``quickstart_tokenizer:image=true,recipe=reconstruction`` is
    one config)."""
    specs = []
    for piece in text.split(","):
        if specs and "=" in piece and ":" not in piece:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def phases(config) -> list[tuple[bool, int]]:
    """The train-step programs a run of ``config`` uses, with how many steps each runs: the
    step without the discriminator until ``loss.adversarial_start_step``, with it after
    (`trainer.make_step`). A stage whose GAN never starts (the quickstart's image stage)
    only ever runs the first."""
    steps = config.num_train_steps
    start = trainer.first_adversarial_step(config)
    start = steps if start is None else min(start, steps)
    return [(adversarial, n) for adversarial, n in ((False, start), (True, steps - start)) if n]


def measure(spec: str, repeats: int) -> dict:
    config = load_config(spec)
    b, t, r = config.batch_size, config.data.num_frames, config.data.resolution
    video = jnp.asarray(np.random.default_rng(0).integers(0, 256, (b, t, r, r, 3), dtype=np.uint8))
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    graphdef, state = nnx.split(trainer.create_train_state(config))
    lpips_graphdef, lpips_state = (
        nnx.split(lpips.load_lpips()) if config.loss.perceptual_weight > 0 else (None, None)
    )
    batch = {"video": video}
    # Each program the run uses, timed alone; the run's steps/s weighs them by their steps.
    per_phase, run_seconds, run_flops = {}, 0.0, 0.0
    for adversarial, steps in phases(config):
        step = jax.jit(
            functools.partial(
                trainer.train_step, graphdef, lpips_graphdef, config, schedule, adversarial
            )
        )
        step_flops = flops_of(step, state, lpips_state, batch)
        step_seconds = best_seconds(step, state, lpips_state, batch, repeats=repeats)
        per_phase["with_gan" if adversarial else "without_gan"] = {
            "steps": steps,
            "train_steps_per_s": 1 / step_seconds,
            "train_gflops_per_s": step_flops / step_seconds / 1e9,
        }
        run_seconds += steps * step_seconds
        run_flops += steps * step_flops

    model = nnx.merge(graphdef, state).model
    model_graphdef, model_state = nnx.split(model)
    encode = jax.jit(
        lambda s, v: nnx.merge(model_graphdef, s).tokenize(frozen_tokenizer.to_float(v))
    )
    tokens = encode(model_state, video)
    decode = jax.jit(lambda s, i: nnx.merge(model_graphdef, s).detokenize(i))
    encode_seconds = best_seconds(encode, model_state, video, repeats=repeats)
    decode_seconds = best_seconds(decode, model_state, tokens, repeats=repeats)
    encode_flops, decode_flops = (
        flops_of(encode, model_state, video),
        flops_of(decode, model_state, tokens),
    )
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {
        "config": spec,
        "batch": b,
        "clip": [t, r, r],
        "tokens": list(tokens.shape[1:]),
        "params": params,
        "train_steps_per_s": config.num_train_steps / run_seconds,
        "train_clips_per_s": b * config.num_train_steps / run_seconds,
        "train_gflops_per_s": run_flops / run_seconds / 1e9,
        "train_phases": per_phase,
        "encode_clips_per_s": b / encode_seconds,
        "encode_gflops_per_s": encode_flops / encode_seconds / 1e9,
        "decode_clips_per_s": b / decode_seconds,
        "decode_gflops_per_s": decode_flops / decode_seconds / 1e9,
    }


def phase_rates(row: dict) -> str:
    """``without / with`` GAN steps/s, ``-`` for a program the run does not use."""
    timed = row["train_phases"]
    return " / ".join(
        f"{timed[k]['train_steps_per_s']:.2f}" if k in timed else "-"
        for k in ("without_gan", "with_gan")
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        default="quickstart_tokenizer,quickstart_tokenizer:recipe=reconstruction,magvit2_k600:runlocal",
        help="experiments[:args], comma-separated; ':recipe=reconstruction' drops GAN + LPIPS; "
        "':image=true' is the quickstart's image stage",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--kernels", default="onednn+group_norm", help="sets of onednn, group_norm; or none"
    )
    args = parser.parse_args()
    peak = measure_matmul_gflops()
    print(
        f"float32 matmul peak: {peak['peak_gflops']:.0f} GFLOP/s "
        f"(numpy {peak['numpy_gflops']:.0f}, jax {peak['jax_gflops']:.0f})"
    )
    settings = args.kernels.split(",")
    for setting in settings:
        for name in setting.split("+"):
            if name != "none" and name not in KERNELS:
                raise SystemExit(f"--kernels: {name!r} is none of {sorted(KERNELS)} or none.")
            if name in KERNELS and not KERNELS[name].available():
                raise SystemExit(f"the {name} kernel is not available: {KERNELS[name].load()}")
    rows = []
    for spec in split_specs(args.configs):
        for setting in settings:
            # What `layers.use_onednn` / `use_group_norm_kernel` ask at trace time;
            # `measure` jits afresh.
            with contextlib.ExitStack() as stack:
                for name, module in KERNELS.items():
                    on = name in setting.split("+")
                    stack.enter_context(mock.patch.object(module, "available", lambda on=on: on))
                row = measure(spec, args.repeats)
            row["kernels"] = setting
            for kind in ("train", "encode", "decode"):
                row[f"{kind}_fraction_of_peak"] = row[f"{kind}_gflops_per_s"] / peak["peak_gflops"]
            rows.append(row)
            print(json.dumps(row, indent=1))
    print(
        "\n| config | kernels | clip | params | train steps/s (run; without / with GAN) | "
        "encode clips/s | decode clips/s | "
        "train / encode / decode GFLOP/s | fraction of matmul peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['kernels']} | {r['batch']}x{'x'.join(map(str, r['clip']))} | {r['params'] / 1e6:.1f}M | "
            f"{r['train_steps_per_s']:.2f} ({phase_rates(r)}) | {r['encode_clips_per_s']:.1f} | {r['decode_clips_per_s']:.1f} | "
            f"{r['train_gflops_per_s']:.0f} / {r['encode_gflops_per_s']:.0f} / {r['decode_gflops_per_s']:.0f} | "
            f"{r['train_fraction_of_peak']:.2f} / {r['encode_fraction_of_peak']:.2f} / "
            f"{r['decode_fraction_of_peak']:.2f} |"
        )


if __name__ == "__main__":
    main()
