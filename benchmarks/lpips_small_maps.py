"""LPIPS speed on small frames: XLA:CPU convolutions vs the small-map matmul path.

    python benchmarks/lpips_small_maps.py [--sizes=32,64] [--pairs=8]

VGG16's last stages see 2x2 (and 4x4) maps when LPIPS runs on 32x32 (64x64)
frames, the quickstart's perceptual loss. XLA:CPU's convolution is very slow on
maps under 4x4, so `videogen.evaluation.lpips` runs those layers as one matmul
over the nine shifted copies (`SMALL_MAP`). This script times, in one process,
the forward pass and the gradient w.r.t. the reconstruction (what the tokenizer's
train step pays) with that path on and with it off (`SMALL_MAP = 0`), and checks
both give the same distances.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from flax import nnx

from videogen.evaluation import lpips

from timing import best_seconds  # a sibling module (benchmarks/ is the script's directory)


def measure(size: int, pairs: int, small_map: int) -> tuple[float, float, np.ndarray]:
    lpips.SMALL_MAP = small_map
    graphdef, state = nnx.split(lpips.load_lpips())
    rng = np.random.default_rng(size)
    a = rng.uniform(-1, 1, (pairs, size, size, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), -1, 1).astype(np.float32)
    forward = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))
    gradient = jax.jit(jax.grad(lambda a, s, b: nnx.merge(graphdef, s)(a, b).mean()))
    return (
        best_seconds(forward, state, a, b, repeats=5),
        best_seconds(gradient, a, state, b, repeats=5),
        np.asarray(forward(state, a, b)),
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    default = lpips.SMALL_MAP
    print("| frame | pairs | forward ms (XLA conv / small-map matmul) | gradient ms | speed-up |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        xla_f, xla_g, xla_d = measure(size, args.pairs, 0)
        ours_f, ours_g, ours_d = measure(size, args.pairs, default)
        np.testing.assert_allclose(ours_d, xla_d, rtol=1e-4, atol=1e-6)
        print(
            f"| {size}x{size} | {args.pairs} | {xla_f * 1e3:.0f} / {ours_f * 1e3:.0f} | "
            f"{xla_g * 1e3:.0f} / {ours_g * 1e3:.0f} | {xla_f / ours_f:.1f}x / "
            f"{xla_g / ours_g:.1f}x |",
            flush=True,
        )
    lpips.SMALL_MAP = default


if __name__ == "__main__":
    main()
