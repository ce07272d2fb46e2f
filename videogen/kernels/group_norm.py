"""Per-frame group normalisation on CPU as a C++ kernel: built once, loaded, differentiable
to any order.

XLA:CPU runs the tokenizer's group norms at about 2 GFLOP/s: with oneDNN's convolutions they
were 21% of a 17x64x64 train step (BUILD_NOTES.md, issue 19). `group_norm.cc` normalises
whole frames per thread in two passes over contiguous channels (sums, then output) and
computes the input gradient the same way; this module compiles it with g++ and OpenMP
against jaxlib's FFI headers (no other library), registers it, and defines `normalize`.
Its first derivative is the kernel's; derivatives of that derivative (an R1 penalty through
a norm) are XLA's, from `reference_normalize`.

`layers.GroupNorm` decides when to use it (`use_kernel`). Without g++ the reason is logged
once and every norm stays XLA's; `VIDEOGEN_GROUP_NORM_KERNEL=0` turns it off.

    python -m videogen.kernels    # builds this and the oneDNN convolution (setup.sh runs it)
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float
import numpy as np

from videogen.kernels.build import KernelUnavailable, compile_library
from videogen.kernels.build import library_path as library_path_for
from videogen.kernels.build import load as load_library

SOURCE = Path(__file__).with_name("group_norm.cc")
FORWARD, INPUT_GRAD = "GroupNormForward", "GroupNormInputGrad"
DISABLE_VARIABLE = "VIDEOGEN_GROUP_NORM_KERNEL"
FLAGS = ("-fopenmp",)


def library_path() -> Path:
    """The built library: one per source text and jax version."""
    return library_path_for(SOURCE, " ".join(FLAGS))


def build() -> Path:
    """Compiles `group_norm.cc` unless this exact build exists; returns the library's path."""
    return compile_library(SOURCE, FLAGS)


@functools.cache
def load() -> str | None:
    """Builds if needed, loads and registers the handlers once. None when they are ready,
    else the reason they are not (logged once)."""
    return load_library(
        build,
        (FORWARD, INPUT_GRAD),
        disable_variable=DISABLE_VARIABLE,
        unavailable="group-norm kernel unavailable, using XLA's norms",
    )


def available() -> bool:
    """Whether `normalize` can run here (builds and loads the library on first call)."""
    return load() is None


def reference_normalize(
    x: Float[Array, "b t h w c"], groups: int, epsilon: float
) -> Float[Array, "b t h w c"]:
    """Zero mean, unit variance over (h, w, channels of a group) of each frame, in XLA's
    operations: what `normalize` computes, and what `layers.GroupNorm` runs without it."""
    b, t, h, w, c = x.shape
    xg = x.reshape(b, t, h, w, groups, c // groups)
    mean = jnp.mean(xg, axis=(2, 3, 5), keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=(2, 3, 5), keepdims=True)
    return ((xg - mean) * jax.lax.rsqrt(var + epsilon)).reshape(x.shape)


def _call(target: str, *args: jax.Array, groups: int, epsilon: float) -> jax.Array:
    reason = load()
    if reason is not None:
        raise KernelUnavailable(f"the group-norm kernel was called but cannot run: {reason}")
    b, t, h, w, c = args[0].shape
    frames = jax.ShapeDtypeStruct((b * t, h * w, c), jnp.float32)
    call = jax.ffi.ffi_call(target, frames, vmap_method="sequential")
    out = call(
        *(a.reshape(frames.shape) for a in args),
        groups=np.int64(groups),
        epsilon=np.float32(epsilon),
    )
    return out.reshape(args[0].shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def normalize(
    x: Float[Array, "b t h w c"], groups: int, epsilon: float
) -> Float[Array, "b t h w c"]:
    """`reference_normalize` of float32 ``x`` by the C++ kernel."""
    return _call(FORWARD, x, groups=groups, epsilon=epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def input_grad(
    x: Float[Array, "b t h w c"], dy: Float[Array, "b t h w c"], groups: int, epsilon: float
) -> Float[Array, "b t h w c"]:
    """The gradient of `normalize` at ``x`` for the output cotangent ``dy``, by the kernel."""
    return _call(INPUT_GRAD, x, dy, groups=groups, epsilon=epsilon)


def _reference_input_grad(x, dy, groups, epsilon):
    return jax.vjp(lambda x: reference_normalize(x, groups, epsilon), x)[1](dy)[0]


def _normalize_forward(x, groups, epsilon):
    return normalize(x, groups, epsilon), x


def _normalize_backward(groups, epsilon, x, dy):
    return (input_grad(x, dy, groups, epsilon),)


def _input_grad_forward(x, dy, groups, epsilon):
    return input_grad(x, dy, groups, epsilon), (x, dy)


def _input_grad_backward(groups, epsilon, residuals, g):
    # Second derivatives are rare (an R1 penalty through a norm) and small next to the
    # convolutions around them: XLA's, from the reference formula.
    x, dy = residuals
    return jax.vjp(lambda x, dy: _reference_input_grad(x, dy, groups, epsilon), x, dy)[1](g)


normalize.defvjp(_normalize_forward, _normalize_backward)
input_grad.defvjp(_input_grad_forward, _input_grad_backward)
