"""Tokenizer throughput: train steps/s, encode and decode clips/s, and achieved FLOP/s.

    python benchmarks/tokenizer_throughput.py [--configs=quickstart_tokenizer,magvit2_k600:runlocal] \
        [--convolutions=onednn,xla]

For each experiment config, times (best of --repeats after a compiled warm-up)
  - the trainer's real jitted train step (forward, backward, Adam, EMA) on one batch,
  - `tokenize` (encode + LFQ) and `detokenize` (decode) on one batch,
and divides each program's FLOPs (`mfu.program_cost`: XLA's cost analysis plus the
oneDNN convolutions it cannot see) by its time. The ratio to the machine's float32 matmul peak, measured in the same run
(benchmarks/matmul_peak.py), says how close the convolutions get to the
hardware on this noisy, shared machine. ``--convolutions=onednn,xla`` measures each
config twice, interleaved: with the CPU's convolutions on oneDNN (the default,
`videogen.kernels.onednn_conv`) and on XLA's own (as with VIDEOGEN_ONEDNN=0).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

from videogen import config as config_lib
from videogen import mfu, optim
from videogen.evaluation import lpips
from videogen.kernels import onednn_conv
from videogen.trainers import frozen_tokenizer
from videogen.trainers import tokenizer as trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_peak import measure_matmul_gflops  # noqa: E402  (a sibling benchmark script)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec: str):
    """The config of ``experiments/<name>.py[:arg]``."""
    name, _, arg = spec.partition(":")
    path = os.path.join(ROOT, "experiments", f"{name}.py")
    return config_lib.load_experiment(path).get_config(arg or None)


def best_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def flops_of(jitted, *args) -> float:
    return mfu.program_cost(jitted.lower(*args).compile()).flops_per_device


def measure(spec: str, repeats: int) -> dict:
    config = load_config(spec)
    b, t, r = config.batch_size, config.data.num_frames, config.data.resolution
    video = jnp.asarray(np.random.default_rng(0).integers(0, 256, (b, t, r, r, 3), dtype=np.uint8))
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    graphdef, state = nnx.split(trainer.create_train_state(config))
    lpips_graphdef, lpips_state = (
        nnx.split(lpips.load_lpips()) if config.loss.perceptual_weight > 0 else (None, None)
    )
    step = jax.jit(
        functools.partial(
            trainer.train_step, graphdef, lpips_graphdef, config, schedule, trainer.uses_gan(config)
        )
    )
    batch = {"video": video}
    step_flops = flops_of(step, state, lpips_state, batch)
    step_seconds = best_seconds(lambda: step(state, lpips_state, batch), repeats)

    model = nnx.merge(graphdef, state).model
    model_graphdef, model_state = nnx.split(model)
    encode = jax.jit(
        lambda s, v: nnx.merge(model_graphdef, s).tokenize(frozen_tokenizer.to_float(v))
    )
    tokens = encode(model_state, video)
    decode = jax.jit(lambda s, i: nnx.merge(model_graphdef, s).detokenize(i))
    encode_seconds = best_seconds(lambda: encode(model_state, video), repeats)
    decode_seconds = best_seconds(lambda: decode(model_state, tokens), repeats)
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
        "train_steps_per_s": 1 / step_seconds,
        "train_clips_per_s": b / step_seconds,
        "train_gflops_per_s": step_flops / step_seconds / 1e9,
        "encode_clips_per_s": b / encode_seconds,
        "encode_gflops_per_s": encode_flops / encode_seconds / 1e9,
        "decode_clips_per_s": b / decode_seconds,
        "decode_gflops_per_s": decode_flops / decode_seconds / 1e9,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        default="quickstart_tokenizer,quickstart_tokenizer:recipe=reconstruction,magvit2_k600:runlocal",
        help="experiments[:args], comma-separated; ':recipe=reconstruction' drops GAN + LPIPS",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--convolutions", default="onednn", help="onednn, xla, or both")
    args = parser.parse_args()
    peak = measure_matmul_gflops()
    print(
        f"float32 matmul peak: {peak['peak_gflops']:.0f} GFLOP/s "
        f"(numpy {peak['numpy_gflops']:.0f}, jax {peak['jax_gflops']:.0f})"
    )
    convolutions = args.convolutions.split(",")
    for conv in convolutions:
        if conv not in ("onednn", "xla"):
            raise SystemExit(f"--convolutions: {conv!r} is neither onednn nor xla.")
        if conv == "onednn" and not onednn_conv.available():
            raise SystemExit(f"oneDNN's convolution is not available: {onednn_conv.load()}")
    rows = []
    for spec in args.configs.split(","):
        for conv in convolutions:
            # What `layers.use_onednn` asks at trace time; `measure` jits afresh.
            with mock.patch.object(onednn_conv, "available", lambda conv=conv: conv == "onednn"):
                row = measure(spec, args.repeats)
            row["convolutions"] = conv
            for kind in ("train", "encode", "decode"):
                row[f"{kind}_fraction_of_peak"] = row[f"{kind}_gflops_per_s"] / peak["peak_gflops"]
            rows.append(row)
            print(json.dumps(row, indent=1))
    print(
        "\n| config | convolutions | clip | params | train steps/s | encode clips/s | decode clips/s | "
        "train / encode / decode GFLOP/s | fraction of matmul peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['convolutions']} | {r['batch']}x{'x'.join(map(str, r['clip']))} | {r['params'] / 1e6:.1f}M | "
            f"{r['train_steps_per_s']:.2f} | {r['encode_clips_per_s']:.1f} | {r['decode_clips_per_s']:.1f} | "
            f"{r['train_gflops_per_s']:.0f} / {r['encode_gflops_per_s']:.0f} / {r['decode_gflops_per_s']:.0f} | "
            f"{r['train_fraction_of_peak']:.2f} / {r['encode_fraction_of_peak']:.2f} / "
            f"{r['decode_fraction_of_peak']:.2f} |"
        )


if __name__ == "__main__":
    main()
