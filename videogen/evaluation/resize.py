"""Frame resizing for the evaluation networks, by name: which filter changes FVD / FID.

Two filters, because published numbers used different ones:
  - ``tf1_bilinear``: TensorFlow 1's ``resize_bilinear`` (align_corners=False, no
    half-pixel centres, no antialiasing). The official FVD and FID code and the
    MAGVIT evaluation resized with it; output pixel ``i`` samples input position
    ``i * size_in / size_out`` between its two neighbours, so a 2x down-sampling
    keeps every other pixel (aliasing included).
  - ``antialiased_linear``: `jax.image.resize` "linear" with antialiasing (a
    triangle filter widened by the scale, half-pixel centres): a 2x down-sampling
    averages neighbouring pixels.
Both are separable; the TF1 one runs as two small matrix products, which is
cheaper than a gather on every backend.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

RESIZE_METHODS = ("tf1_bilinear", "antialiased_linear")


def tf1_bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` weights of TF1 ``resize_bilinear`` along one axis."""
    # float32 positions as in TF's kernel: float64 positions land up to ~3e-5 px
    # away from TF's, which shows as ~4e-5 differences in [-1, 1] units.
    scale = np.float32(size_in) / np.float32(size_out)
    position = np.arange(size_out, dtype=np.float32) * scale
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, size_in - 1)  # clamped at the last input pixel
    frac = position - lower.astype(np.float32)
    matrix = np.zeros((size_out, size_in), np.float32)
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, lower), 1.0 - frac)
    np.add.at(matrix, (rows, upper), frac)
    return matrix


def resize_frames(
    x: Float[Array, "... H W c"],
    height: int,
    width: int,
    method: str,
    *,
    precision: jax.lax.Precision | None = None,
) -> Float[Array, "... height width c"]:
    """Resizes the two axes before the channels of ``x`` with the named filter.

    Equal sizes are returned unchanged by both filters (no matrix product).
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; choose one of {RESIZE_METHODS}.")
    x = jnp.asarray(x, jnp.float32)
    h, w = x.shape[-3], x.shape[-2]
    if method == "antialiased_linear":
        if (h, w) == (height, width):
            return x
        shape = (*x.shape[:-3], height, width, x.shape[-1])
        return jax.image.resize(x, shape, "linear", antialias=True)
    if h != height:
        rows = jnp.asarray(tf1_bilinear_matrix(h, height))
        x = jnp.einsum("oh,...hwc->...owc", rows, x, precision=precision)
    if w != width:
        cols = jnp.asarray(tf1_bilinear_matrix(w, width))
        x = jnp.einsum("pw,...owc->...opc", cols, x, precision=precision)
    return x
