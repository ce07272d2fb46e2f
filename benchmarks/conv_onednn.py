"""oneDNN's convolution inside XLA (an FFI custom call) against XLA:CPU's own, per tap of the
tokenizer's 3x3x3 causal convolutions (issue 19).

    .venv/bin/python benchmarks/conv_onednn.py [--onednn-prefix=/work/onednn_venv] \
        [--shapes=2x17x64x64x64x64,2x9x32x32x128x128] [--repeats=3]

The tokenizer's CPU convolution (`layers.conv3d_by_temporal_taps`: a sum over temporal taps
of 2D convolutions) spends most of a train step in its backward pass, which XLA:CPU runs at
about half the rate of the forward (BUILD_NOTES.md, issue 19). This script compiles
`conv_onednn.cc` (three XLA FFI handlers: forward, input gradient, kernel gradient, each one
oneDNN primitive) with g++ against jaxlib's FFI headers and oneDNN, and times the same
per-tap 3D convolution with either 2D convolution inside, forward and forward + backward,
for each `--shapes` entry (b x t x h x w x c_in x c_out, 3x3x3 kernel, causal padding),
next to the float32 matmul peak measured in the same run; it checks that values and both
gradients agree to float32 tolerance.

oneDNN comes from PyPI in a separate venv, not a videogen dependency:
    python3 -m venv /work/onednn_venv
    /work/onednn_venv/bin/pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0
(the `onednn` 2026 wheel needs Intel's compiler runtime and SYCL; the GOMP build needs only
libgomp). FLOPs are counted by formula (XLA's cost analysis does not see custom calls).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_peak import measure_matmul_gflops  # noqa: E402
from tokenizer_profile import best_seconds  # noqa: E402  (sibling benchmarks)

from videogen.models import layers  # noqa: E402

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv_onednn.cc")
TARGETS = ("OnednnConvForward", "OnednnConvInputGrad", "OnednnConvKernelGrad")


def build(prefix: str) -> str:
    """Compiles `conv_onednn.cc` into a temporary directory; returns the library's path."""
    header = os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl.hpp")
    if not os.path.exists(header):
        raise SystemExit(
            f"no oneDNN headers under --onednn-prefix={prefix} ({header} is missing); create "
            "the venv as this script's docstring says, or point --onednn-prefix at it."
        )
    out = os.path.join(tempfile.mkdtemp(prefix="conv_onednn_"), "libconv_onednn.so")
    lib = os.path.join(prefix, "lib")
    command = [
        "g++", "-O2", "-std=c++17", "-shared", "-fPIC", SOURCE, "-o", out,
        f"-I{jax.ffi.include_dir()}", f"-I{os.path.join(prefix, 'include')}",
        f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-w",
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return out


def register(path: str) -> None:
    library = ctypes.cdll.LoadLibrary(path)
    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")


def _attrs(strides, padding) -> dict:
    (ph0, ph1), (pw0, pw1) = padding
    values = dict(sh=strides[0], sw=strides[1], ph0=ph0, ph1=ph1, pw0=pw0, pw1=pw1)
    return {key: np.int64(value) for key, value in values.items()}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def onednn_conv2d(x, kernel, strides, padding):
    """`layers.conv2d_nhwc` computed by oneDNN (float32)."""
    n, h, w, _ = x.shape
    kh, kw, _, co = kernel.shape
    (ph0, ph1), (pw0, pw1) = padding
    shape = (n, (h + ph0 + ph1 - kh) // strides[0] + 1, (w + pw0 + pw1 - kw) // strides[1] + 1, co)
    call = jax.ffi.ffi_call("OnednnConvForward", jax.ShapeDtypeStruct(shape, jnp.float32))
    return call(x, kernel, **_attrs(strides, padding))


def _forward(x, kernel, strides, padding):
    return onednn_conv2d(x, kernel, strides, padding), (x, kernel)


def _backward(strides, padding, residuals, dy):
    x, kernel = residuals
    attrs = _attrs(strides, padding)
    input_grad = jax.ffi.ffi_call("OnednnConvInputGrad", jax.ShapeDtypeStruct(x.shape, x.dtype))
    kernel_grad = jax.ffi.ffi_call(
        "OnednnConvKernelGrad", jax.ShapeDtypeStruct(kernel.shape, kernel.dtype)
    )
    return input_grad(dy, kernel, x, **attrs), kernel_grad(x, dy, kernel, **attrs)


onednn_conv2d.defvjp(_forward, _backward)


def measure(shape: tuple[int, ...], repeats: int) -> dict:
    b, t, h, w, ci, co = shape
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (b, t, h, w, ci))
    kernel = jax.random.normal(keys[1], (3, 3, 3, ci, co)) / np.sqrt(27 * ci)
    dy = jax.random.normal(keys[2], (b, t, h, w, co))
    padding = ((2, 0), (1, 1), (1, 1))  # causal in time, 'same' in space
    flops = 2 * b * t * h * w * 27 * ci * co
    row, values = {}, {}
    for name, conv2d in (("xla", layers.conv2d_nhwc), ("onednn", onednn_conv2d)):

        def conv(x, kernel, conv2d=conv2d):
            return layers.conv3d_by_temporal_taps(x, kernel, (1, 1, 1), padding, conv2d)

        forward = jax.jit(conv)
        backward = jax.jit(lambda x, kernel, dy, conv=conv: jax.vjp(conv, x, kernel)[1](dy))
        values[name] = (forward(x, kernel), *backward(x, kernel, dy))
        row[f"{name}_forward_s"] = best_seconds(forward, (x, kernel), repeats)
        row[f"{name}_backward_s"] = best_seconds(backward, (x, kernel, dy), repeats)
    for label, ours, theirs in zip(("y", "dx", "dk"), values["onednn"], values["xla"]):
        row[f"{label}_relative_error"] = float(
            jnp.max(jnp.abs(ours - theirs)) / jnp.max(jnp.abs(theirs))
        )
    row["gflop"] = flops / 1e9
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onednn-prefix", default="/work/onednn_venv")
    parser.add_argument("--shapes", default="2x17x64x64x64x64,2x9x32x32x128x128")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    register(build(args.onednn_prefix))
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
        total = {n: row[f"{n}_forward_s"] + row[f"{n}_backward_s"] for n in ("xla", "onednn")}
        for name in ("xla", "onednn"):
            rate = 3 * row["gflop"] / total[name]
            print(
                f"| {shape} | {name} | {row[f'{name}_forward_s'] * 1e3:.0f} | "
                f"{total[name] * 1e3:.0f} | {rate:.0f} | {rate / peak:.2f} | "
                f"{total['xla'] / total[name]:.2f} |"
            )
        errors = ", ".join(f"{k} {row[f'{k}_relative_error']:.1e}" for k in ("y", "dx", "dk"))
        print(f"|  | max relative difference | {errors} | | | | |")


if __name__ == "__main__":
    main()
