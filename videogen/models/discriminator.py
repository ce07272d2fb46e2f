"""StyleGAN-style 3D discriminator of the MAGVIT and MAGVIT-v2 tokenizers.

MAGVIT inflates the StyleGAN discriminator to 3D: one deep network judges whole
clips instead of separate 2D and 3D discriminators (thesis Sec. 3.2.1-3.2.2).
MAGVIT-v2 down-samples it with 3D blur pooling for shift invariance
(Sec. 5.3.2) and trains it from scratch rather than inflating it from an image
model, for stability (Sec. 5.4.2); the channel multipliers at 128x128 are
(2, 4, 4, 4, 4) (Secs. 3.3.1 and 5.4.1).

There is no normalisation and nothing mixes the clips of a batch, so each
clip's logit depends on that clip only; the R1 penalty in
`videogen.trainers.gan_losses` relies on this to get per-clip input gradients
from one backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from videogen.models.layers import CONV_BIAS_AXES, CausalConv3d, apply_blocks

# The flattened features feed the dense layer, so "channels_in" names its input axis;
# both names already have sharding rules.
DENSE_KERNEL_AXES = ("channels_in", "channels_out")
LEAKY_RELU_SLOPE = 0.2
# Binomial [1, 3, 3, 1] / 8 as in StyleGAN2's down-sampling and the blur pool paper.
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)

# Xavier-uniform, as in the MAGVIT release's discriminator.
_KERNEL_INIT = nnx.initializers.xavier_uniform()


def _leaky_relu(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, negative_slope=LEAKY_RELU_SLOPE)


def _blur_down_axis(x: jax.Array, taps: tuple[float, ...], axis: int) -> jax.Array:
    """1D blur along ``axis`` then stride 2: ``n -> ceil(n / 2)``, edge padding."""
    n = x.shape[axis]
    out = -(-n // 2)
    before = (len(taps) - 1) // 2
    after = 2 * (out - 1) + len(taps) - n - before
    pad = [(0, 0)] * x.ndim
    pad[axis] = (before, after)
    x = jnp.pad(x, pad, mode="edge")
    y = None
    for k, tap in enumerate(taps):
        term = tap * jax.lax.slice_in_dim(x, k, k + 2 * (out - 1) + 1, stride=2, axis=axis)
        y = term if y is None else y + term
    return y


class BlurPool3d(nnx.Module):
    """Anti-aliased x2 down-sampling of t, h and w: a separable binomial blur, then stride 2.

    The normalised taps (default ``[1, 3, 3, 1] / 8``) act depthwise along each
    axis as compile-time constants: no parameters, nothing to train or
    checkpoint. Each axis of length ``n`` is edge-padded (``len(taps)`` = 4: one
    sample before, two after) and sampled with stride 2, giving
    ``ceil(n / 2)`` outputs. Even ``n`` gets the symmetric StyleGAN placement
    (output ``i`` centred between inputs ``2i`` and ``2i + 1``); odd ``n`` gets one
    more output whose window runs past the end into the padding, so the last
    sample is not dropped (17 frames -> 9 -> 5 -> 3 -> 2 -> 1); ``n = 1`` stays 1,
    so a single frame (an image) is blurred in space only. Edge rather than zero
    padding keeps a constant video exactly constant, borders included.
    """

    def __init__(self, taps: Sequence[float] = BLUR_TAPS):
        taps = tuple(float(t) for t in taps)
        if len(taps) < 2 or sum(taps) <= 0:
            raise ValueError(
                f"BlurPool3d taps={taps} must have at least 2 entries with a positive sum "
                "(e.g. (1, 3, 3, 1))."
            )
        total = sum(taps)
        self.taps = tuple(t / total for t in taps)

    def __call__(self, x: Float[Array, "b t h w c"]) -> Float[Array, "b t2 h2 w2 c"]:
        """``[b, t, h, w, c] -> [b, ceil(t/2), ceil(h/2), ceil(w/2), c]``."""
        for axis in (1, 2, 3):
            x = _blur_down_axis(x, self.taps, axis)
        return x


class DiscriminatorBlock3d(nnx.Module):
    """Residual down-sampling block of the StyleGAN discriminator, in 3D.

    Main path: conv 3x3x3 -> leaky ReLU -> blur pool x2 -> conv 3x3x3 (to
    ``out_channels``) -> leaky ReLU. Skip path: blur pool x2 -> bias-free 1x1x1
    conv. The sum is scaled by 1/sqrt(2) so that adding two branches of similar
    variance does not double the activation variance from block to block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        # Non-causal: the discriminator judges whole clips, so frames may see the future.
        conv = {
            "causal": False,
            "kernel_init": _KERNEL_INIT,
            "dtype": dtype,
            "param_dtype": param_dtype,
        }
        self.conv1 = CausalConv3d(in_channels, in_channels, **conv, rngs=rngs)
        self.conv2 = CausalConv3d(in_channels, out_channels, **conv, rngs=rngs)
        self.skip = CausalConv3d(
            in_channels, out_channels, (1, 1, 1), use_bias=False, **conv, rngs=rngs
        )
        self.blur = BlurPool3d()

    def __call__(self, x: Float[Array, "b t h w ci"]) -> Float[Array, "b t2 h2 w2 co"]:
        """``[b, t, h, w, ci] -> [b, ceil(t/2), h/2, w/2, co]``."""
        y = self.blur(_leaky_relu(self.conv1(x)))
        y = _leaky_relu(self.conv2(y))
        skip = self.skip(self.blur(x))
        return (y + skip.astype(y.dtype)) * (1.0 / math.sqrt(2.0))


class StyleGANDiscriminator3d(nnx.Module):
    """3D StyleGAN discriminator: one real/fake logit per clip.

    Stem conv 3x3x3 to ``base_channels`` -> one `DiscriminatorBlock3d` per channel
    multiplier (each halves t, h and w; widths ``base_channels * m``) -> conv
    3x3x3 -> flatten -> dense (last width) -> dense to one logit; every hidden
    layer uses leaky ReLU(0.2). Input clips are ``[b, num_frames, resolution,
    resolution, in_channels]`` floats in [-1, 1]; the flatten fixes that shape.

    ``resolution`` must be divisible by ``2 ** len(channel_multipliers)``.
    Time needs no such condition: it is halved with ``ceil`` and stops at one
    frame (17 -> 9 -> 5 -> 3 -> 2 -> 1), so ``num_frames = 1`` (images) works and
    a short clip simply stops shrinking in time once it has one frame left.
    The defaults are the thesis' 17x128x128 setup; the thesis gives only the
    multipliers, and ``base_channels = 128`` is the tokenizer's base width, as
    the MAGVIT release ties the two. Always trained from scratch (Sec. 5.4.2).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        base_channels: int = 128,
        channel_multipliers: Sequence[int] = (2, 4, 4, 4, 4),
        num_frames: int = 17,
        resolution: int = 128,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        channel_multipliers = tuple(int(m) for m in channel_multipliers)
        num_down = len(channel_multipliers)
        if num_down == 0:
            raise ValueError("channel_multipliers is empty; the thesis uses (2, 4, 4, 4, 4).")
        if resolution < 1 or resolution % 2**num_down:
            raise ValueError(
                f"StyleGANDiscriminator3d: resolution={resolution} cannot be halved "
                f"{num_down} times (once per entry of channel_multipliers="
                f"{channel_multipliers}); use a resolution divisible by {2**num_down} or "
                "fewer channel multipliers (the thesis uses 4 at 64x64, 5 at 128x128)."
            )
        if num_frames < 1:
            raise ValueError(f"StyleGANDiscriminator3d: num_frames={num_frames} must be >= 1.")
        self.in_channels = in_channels
        self.num_frames = num_frames
        self.resolution = resolution
        self.remat = remat
        common = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv_in = CausalConv3d(
            in_channels, base_channels, causal=False, kernel_init=_KERNEL_INIT, **common
        )
        self.blocks = nnx.List()
        channels = base_channels
        frames = num_frames
        for m in channel_multipliers:
            self.blocks.append(DiscriminatorBlock3d(channels, base_channels * m, **common))
            channels = base_channels * m
            frames = -(-frames // 2)
        self.conv_out = CausalConv3d(
            channels, channels, causal=False, kernel_init=_KERNEL_INIT, **common
        )
        side = resolution // 2**num_down
        dense = dict(
            kernel_init=_KERNEL_INIT,
            kernel_metadata={"out_sharding": DENSE_KERNEL_AXES},
            bias_metadata={"out_sharding": CONV_BIAS_AXES},
            **common,
        )
        self.dense = nnx.Linear(frames * side * side * channels, channels, **dense)
        self.logit = nnx.Linear(channels, 1, **dense)

    def __call__(self, video: Float[Array, "b T H W c"]) -> Float[Array, " b"]:
        """Logits ``[b]`` (float32; > 0 means "real") of clips ``[b, t, h, w, c]``."""
        expected = (self.num_frames, self.resolution, self.resolution, self.in_channels)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"the discriminator was built for clips [batch, {', '.join(map(str, expected))}] "
                f"(its dense layer has a fixed input size) but got shape {tuple(video.shape)}; "
                "build it with the num_frames and resolution of the training clips."
            )
        x = _leaky_relu(self.conv_in(video))
        x = apply_blocks(self.blocks, x, remat=self.remat)
        x = _leaky_relu(self.conv_out(x))
        x = _leaky_relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.logit(x)[:, 0].astype(jnp.float32)
