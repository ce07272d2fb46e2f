"""oneDNN's 2D and 3D convolution inside XLA on CPU: built once, loaded, differentiable to any order.

XLA:CPU computes the tokenizer's convolutions at a quarter of this machine's float32 matmul
peak on its widest maps, and their kernel gradients at half the rate of their forward pass;
oneDNN's direct convolution (what PyTorch runs on CPU) reaches 0.7 of the peak forward and
backward (BUILD_NOTES.md, issue 19). `onednn_conv.cc` wraps oneDNN's forward, input-gradient
and kernel-gradient primitives as XLA FFI handlers; this module compiles it with g++ against
jaxlib's FFI headers and the oneDNN that `setup.sh` installs from PyPI (`onednn-cpu-gomp`,
`onednn-devel-cpu-gomp`), registers the handlers, and defines `conv` (2D or 3D) with
gradients built from the same three calls, so second derivatives (the R1 penalty) stay on
oneDNN too.

`layers.use_onednn` decides when to use it. When the library cannot be built or loaded
(no g++, no oneDNN, another platform) `available()` is False, the reason is logged once, and
every convolution stays XLA's. `VIDEOGEN_ONEDNN=0` turns it off.

    python -m videogen.kernels    # builds this and the group-norm kernel (setup.sh runs it)
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
import re
import sysconfig

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float
import numpy as np

from videogen.kernels.build import KernelUnavailable, compile_library
from videogen.kernels.build import library_path as library_path_for
from videogen.kernels.build import load as load_library

SOURCE = Path(__file__).with_name("onednn_conv.cc")
FORWARD, INPUT_GRAD, KERNEL_GRAD = (
    "OnednnConvForward",
    "OnednnConvInputGrad",
    "OnednnConvKernelGrad",
)
DISABLE_VARIABLE = "VIDEOGEN_ONEDNN"

Padding = tuple[tuple[int, int], ...]  # (before, after) per spatial dimension


def onednn_prefix() -> Path:
    """Where pip put oneDNN's headers and library: the wheels install `include/` and `lib/`
    under the environment's data directory (the venv itself)."""
    return Path(sysconfig.get_paths()["data"])


def _flags() -> list[str]:
    prefix = onednn_prefix()
    lib = prefix / "lib"
    return [f"-I{prefix / 'include'}", f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"]


def library_path() -> Path:
    """The built library: one per source text, jax version and oneDNN location."""
    return library_path_for(SOURCE, " ".join(_flags()))


def build() -> Path:
    """Compiles `onednn_conv.cc` unless this exact build exists; returns the library's path."""
    prefix = onednn_prefix()
    header = prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
    if not header.exists():
        raise KernelUnavailable(
            f"oneDNN's headers are not installed ({header} is missing); run ./setup.sh, or "
            "`pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0` "
            "(Linux x86-64 wheels)."
        )
    return compile_library(SOURCE, _flags())


@functools.cache
def load() -> str | None:
    """Builds if needed, loads and registers the handlers once. None when they are ready,
    else the reason they are not (logged once)."""
    return load_library(
        build,
        (FORWARD, INPUT_GRAD, KERNEL_GRAD),
        disable_variable=DISABLE_VARIABLE,
        unavailable="oneDNN convolution unavailable, using XLA's (about 2x slower tokenizer "
        "steps on CPU)",
    )


def available() -> bool:
    """Whether `conv` can run here (builds and loads the library on first call)."""
    return load() is None


def _output_size(size: int, window: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - window) // stride + 1


def _call(target: str, shape: tuple[int, ...], *args, strides, padding, **extents) -> jax.Array:
    reason = load()
    if reason is not None:
        raise KernelUnavailable(f"oneDNN's convolution was called but cannot run: {reason}")
    attrs = dict(
        extents, strides=strides, lo=[lo for lo, _ in padding], hi=[hi for _, hi in padding]
    )
    # A batch of convolutions under vmap runs one after another: correct, if not fast.
    call = jax.ffi.ffi_call(
        target, jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method="sequential"
    )
    return call(*args, **{key: np.asarray(value, np.int64) for key, value in attrs.items()})


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(
    x: Float[Array, "n *size ci"],
    kernel: Float[Array, "*window ci co"],
    strides: tuple[int, ...],
    padding: Padding,
) -> Float[Array, "n *out co"]:
    """Zero-padded convolution of channels-last ``x`` over its 2 or 3 spatial dimensions
    ([n, h, w, c] or [n, t, h, w, c]; kernel HWIO or DHWIO, float32), computed by oneDNN:
    `layers.conv2d_nhwc` and `layers.conv3d_single`'s operation."""
    out = [
        _output_size(size, window, stride, pad)
        for size, window, stride, pad in zip(x.shape[1:-1], kernel.shape[:-2], strides, padding)
    ]
    return _call(
        FORWARD, (x.shape[0], *out, kernel.shape[-1]), x, kernel, strides=strides, padding=padding
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def input_grad(
    dy: Float[Array, "n *out co"],
    kernel: Float[Array, "*window ci co"],
    size: tuple[int, ...],
    strides: tuple[int, ...],
    padding: Padding,
) -> Float[Array, "n *size ci"]:
    """The gradient of `conv` with respect to its input of spatial extent `size`."""
    shape = (dy.shape[0], *size, kernel.shape[-2])
    return _call(INPUT_GRAD, shape, dy, kernel, strides=strides, padding=padding, size=size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def kernel_grad(
    x: Float[Array, "n *size ci"],
    dy: Float[Array, "n *out co"],
    window: tuple[int, ...],
    strides: tuple[int, ...],
    padding: Padding,
) -> Float[Array, "*window ci co"]:
    """The gradient of `conv` with respect to its kernel of spatial extent `window`."""
    shape = (*window, x.shape[-1], dy.shape[-1])
    return _call(KERNEL_GRAD, shape, x, dy, strides=strides, padding=padding, window=window)


# All three are bilinear, and each one's gradients are the other two: for y = conv(x, k),
# <dy, conv(x, k)> = <input_grad(dy, k), x> = <kernel_grad(x, dy), k>.
def _conv_forward(x, kernel, strides, padding):
    return conv(x, kernel, strides, padding), (x, kernel)


def _conv_backward(strides, padding, residuals, dy):
    x, kernel = residuals
    return (
        input_grad(dy, kernel, x.shape[1:-1], strides, padding),
        kernel_grad(x, dy, kernel.shape[:-2], strides, padding),
    )


def _input_grad_forward(dy, kernel, size, strides, padding):
    return input_grad(dy, kernel, size, strides, padding), (dy, kernel)


def _input_grad_backward(size, strides, padding, residuals, g):
    dy, kernel = residuals
    return (
        conv(g, kernel, strides, padding),
        kernel_grad(g, dy, kernel.shape[:-2], strides, padding),
    )


def _kernel_grad_forward(x, dy, window, strides, padding):
    return kernel_grad(x, dy, window, strides, padding), (x, dy)


def _kernel_grad_backward(window, strides, padding, residuals, g):
    x, dy = residuals
    return (
        input_grad(dy, g, x.shape[1:-1], strides, padding),
        conv(x, g, strides, padding),
    )


conv.defvjp(_conv_forward, _conv_backward)
input_grad.defvjp(_input_grad_forward, _input_grad_backward)
kernel_grad.defvjp(_kernel_grad_forward, _kernel_grad_backward)


# One custom call in a compiled program's text: its result's shape, its target, and its
# operands' shapes (XLA prints those in the layout constraints).
_HLO_CALL = re.compile(
    r"= f32\[([\d,]*)\]\S* custom-call\(.*?custom_call_target=\"(Onednn\w+)\", "
    r"operand_layout_constraints=\{f32\[([\d,]*)\]\S*, f32\[([\d,]*)\]"
)


def hlo_flops(hlo_text: str) -> float:
    """FLOPs of the oneDNN convolutions in a compiled program, which XLA's cost analysis
    cannot see into (it counts each custom call as -1 FLOP; this adds that back): 2 x
    (output-shaped elements) x window x ci per call, the padding's products included."""

    def dims(text: str) -> list[int]:
        return [int(d) for d in text.split(",") if d]

    total = 0.0
    for result, target, first, second in _HLO_CALL.findall(hlo_text):
        result, first, second = dims(result), dims(first), dims(second)
        # (the output-shaped array, the kernel-shaped one) of each call.
        y, kernel = {
            FORWARD: (result, second),
            INPUT_GRAD: (first, second),
            KERNEL_GRAD: (second, result),
        }[target]
        total += 2.0 * math.prod(y) * math.prod(kernel[:-1]) + 1.0
    return total
