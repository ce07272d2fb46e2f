"""oneDNN's convolution inside XLA (`videogen.kernels.onednn_conv`) against XLA:CPU's own,
per tap of the tokenizer's 3x3x3 causal convolutions (issue 19).

    .venv/bin/python benchmarks/conv_onednn.py \
        [--shapes=2x17x64x64x64x64,2x9x32x32x128x128] [--repeats=3]

The tokenizer's CPU convolution (`layers.conv3d_by_temporal_taps`: a sum over temporal taps
of 2D convolutions) spent most of a train step in its backward pass, which XLA:CPU runs at
about half the rate of its forward (BUILD_NOTES.md, issue 19). This script times the same
per-tap 3D convolution with either 2D convolution inside (`layers.conv2d_xla`; oneDNN's 2D
`onednn_conv.conv`: ``onednn_taps``) and oneDNN's 3D convolution in one call (``onednn``,
what `layers.CausalConv3d` runs on CPU), forward and forward + backward, for each `--shapes` entry
(b x t x h x w x c_in x c_out, 3x3x3 kernel, causal padding), next to the float32 matmul
peak measured in the same run, and checks that values and both gradients agree to float32
tolerance. `./setup.sh` builds the library; FLOPs are counted by formula (XLA's cost
analysis does not see custom calls).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_peak import measure_matmul_gflops  # noqa: E402
from timing import best_seconds  # noqa: E402  (a sibling module)

from videogen.kernels import onednn_conv  # noqa: E402
from videogen.models import layers  # noqa: E402


def measure(shape: tuple[int, ...], repeats: int) -> dict:
    b, t, h, w, ci, co = shape
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (b, t, h, w, ci))
    kernel = jax.random.normal(keys[1], (3, 3, 3, ci, co)) / np.sqrt(27 * ci)
    dy = jax.random.normal(keys[2], (b, t, h, w, co))
    padding = ((2, 0), (1, 1), (1, 1))  # causal in time, 'same' in space
    flops = 2 * b * t * h * w * 27 * ci * co
    row, values = {}, {}
    forms = {
        "xla": functools.partial(layers.conv3d_by_temporal_taps, conv2d=layers.conv2d_xla),
        "onednn_taps": functools.partial(layers.conv3d_by_temporal_taps, conv2d=onednn_conv.conv),
        "onednn": onednn_conv.conv,
    }
    for name, form in forms.items():

        def conv(x, kernel, form=form):
            return form(x, kernel, (1, 1, 1), padding)

        forward = jax.jit(conv)
        backward = jax.jit(lambda x, kernel, dy, conv=conv: jax.vjp(conv, x, kernel)[1](dy))
        values[name] = (forward(x, kernel), *backward(x, kernel, dy))
        row[f"{name}_forward_s"] = best_seconds(forward, x, kernel, repeats=repeats)
        row[f"{name}_backward_s"] = best_seconds(backward, x, kernel, dy, repeats=repeats)
    for name in ("onednn_taps", "onednn"):
        for label, ours, theirs in zip(("y", "dx", "dk"), values[name], values["xla"]):
            row[f"{name}_{label}_relative_error"] = float(
                jnp.max(jnp.abs(ours - theirs)) / jnp.max(jnp.abs(theirs))
            )
    row["gflop"] = flops / 1e9
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="2x17x64x64x64x64,2x9x32x32x128x128")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    reason = onednn_conv.load()
    if reason is not None:
        raise SystemExit(f"oneDNN's convolution is not available: {reason}")
    peak_before = measure_matmul_gflops()["peak_gflops"]
    rows = {
        s: measure(tuple(int(v) for v in s.split("x")), args.repeats)
        for s in args.shapes.split(",")
    }
    peak_after = measure_matmul_gflops()["peak_gflops"]
    peak = max(peak_before, peak_after)
    print(f"float32 matmul peak {peak_before:.0f} / {peak_after:.0f} GFLOP/s (before / after)")
    print(
        "| b x t x h x w x ci x co | conv | forward ms | fwd+bwd ms | fwd+bwd GFLOP/s | of peak | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for shape, row in rows.items():
        names = ("xla", "onednn_taps", "onednn")
        total = {n: row[f"{n}_forward_s"] + row[f"{n}_backward_s"] for n in names}
        for name in names:
            rate = 3 * row["gflop"] / total[name]
            print(
                f"| {shape} | {name} | {row[f'{name}_forward_s'] * 1e3:.0f} | "
                f"{total[name] * 1e3:.0f} | {rate:.0f} | {rate / peak:.2f} | "
                f"{total['xla'] / total[name]:.2f} |"
            )
        for name in names[1:]:
            errors = ", ".join(
                f"{k} {row[f'{name}_{k}_relative_error']:.1e}" for k in ("y", "dx", "dk")
            )
            print(f"|  | {name}: max relative difference | {errors} | | | | |")


if __name__ == "__main__":
    main()
