"""The C++ group-norm kernel against XLA's norm, as the tokenizer uses it on CPU.

    .venv/bin/python benchmarks/group_norm_kernel.py [--repeats=5]

Times `layers.GroupNorm` followed by SiLU (a residual block's norm), forward + backward
with respect to its input and its scale and bias, jitted, at the largest maps of the
side-by-side benchmark's ``base32`` tokenizer (B=2, 17x64x64 clips: 32, 64, 128 and 256
channels at full, 1/2, 1/4 and 1/8 resolution) and of the quickstart's video stage (B=4,
9x32x32), with the kernel (`videogen.kernels.group_norm`) and with XLA's operations
(`group_norm.reference_normalize`, which the layer runs without it), interleaved. Best of
--repeats after a warm-up call; with the largest difference between the two's outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
from unittest import mock

from videogen import allocator

allocator.retain_freed_memory()  # as videogen.main does

from flax import nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from videogen.kernels import group_norm  # noqa: E402
from videogen.models import layers  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import best_of  # noqa: E402  (a sibling module)

# (b, t, h, w, c, groups): base32's four levels (8 groups, as the quickstart configs), the
# quickstart video stage's widest.
SHAPES = [
    (2, 17, 64, 64, 32, 8),
    (2, 17, 32, 32, 64, 8),
    (2, 9, 16, 16, 128, 8),
    (2, 5, 8, 8, 256, 8),
    (4, 9, 32, 32, 32, 8),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not group_norm.available():
        raise SystemExit(f"the group-norm kernel is not available: {group_norm.load()}")
    print("| b x t x h x w x c (groups) | XLA ms | kernel ms | speed-up | largest difference |")
    print("|---|---|---|---|---|")
    for b, t, h, w, c, groups in SHAPES:
        graphdef, params = nnx.split(layers.GroupNorm(c, num_groups=groups))
        x = jax.random.normal(jax.random.key(0), (b, t, h, w, c)) * 2.0 + 0.5
        weights = jax.random.normal(jax.random.key(1), x.shape)

        def loss(x, params):
            return jnp.sum(jax.nn.silu(nnx.merge(graphdef, params)(x)) * weights)

        times, outs = {}, {}
        for name, on in (("xla", False), ("kernel", True)):
            # `layers.use_group_norm_kernel` is asked at trace time: a fresh jit per setting.
            with mock.patch.object(group_norm, "available", lambda on=on: on):
                step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
                times[name], outs[name] = best_of(step, x, params, repeats=args.repeats)
        difference = max(
            float(np.max(np.abs(a - k)) / (np.max(np.abs(a)) + 1e-30))
            for a, k in zip(jax.tree.leaves(outs["xla"]), jax.tree.leaves(outs["kernel"]))
        )
        print(
            f"| {b}x{t}x{h}x{w}x{c} ({groups}) | {1e3 * times['xla']:.1f} | "
            f"{1e3 * times['kernel']:.1f} | {times['xla'] / times['kernel']:.2f}x | "
            f"{difference:.1e} |"
        )


if __name__ == "__main__":
    main()
