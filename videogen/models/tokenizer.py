"""MAGVIT-v2 causal video tokenizer (thesis Sec. 5.3.2, Fig. 5.4).

A temporally causal 3D-CNN encoder maps a clip of ``1 + f*k`` frames
(``f`` = temporal factor) to ``1 + k`` latent frames of ``num_bits`` channels,
LFQ turns each latent vector into a token in ``[0, 2^num_bits)``, and a
mirrored causal decoder, conditioned on the quantized latents through adaptive
group norms, maps them back. The first latent frame depends on the first video
frame only, so a single image is tokenized by the same model.

Thesis changes over MAGVIT, all here: causal convolutions, strided-conv
down-sampling, depth-to-space up-sampling, temporal down-sampling deferred to
the last encoder levels, and an adaptive group norm before the residual blocks
of each decoder level.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from videogen.models.layers import (
    AdaptiveGroupNorm,
    CausalConv3d,
    DepthToSpaceUpsample,
    Downsample,
    GroupNorm,
    ResBlock3d,
    apply_blocks,
)
from videogen.models.quantizers import LFQ


def _res_stack(in_channels: int, out_channels: int, count: int, **kwargs) -> nnx.List[ResBlock3d]:
    """``count`` residual blocks; the first changes the width."""
    return nnx.List(
        [
            ResBlock3d(in_channels if i == 0 else out_channels, out_channels, **kwargs)
            for i in range(count)
        ]
    )


class CausalEncoder(nnx.Module):
    """``[b, 1+f*k, H, W, c] -> [b, 1+k, H/s, W/s, num_bits]`` continuous latents."""

    def __init__(
        self,
        *,
        in_channels: int,
        base_channels: int,
        channel_multipliers: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        num_bits: int,
        num_groups: int,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        remat: bool,
        rngs: nnx.Rngs,
    ):
        self.remat = remat
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        block = dict(num_groups=num_groups, **common)
        widths = [base_channels * m for m in channel_multipliers]
        self.conv_in = CausalConv3d(in_channels, base_channels, **common)
        self.levels = nnx.List()
        self.downsamples = nnx.List()
        channels = base_channels
        for i, width in enumerate(widths):
            self.levels.append(_res_stack(channels, width, num_res_blocks, **block))
            channels = width
            if i < len(widths) - 1:
                self.downsamples.append(
                    Downsample(channels, channels, temporal=temporal_downsample[i], **common)
                )
        self.mid = _res_stack(channels, channels, num_res_blocks, **block)
        self.norm_out = GroupNorm(channels, num_groups=num_groups, param_dtype=param_dtype)
        self.conv_out = CausalConv3d(channels, num_bits, kernel_size=(1, 1, 1), **common)

    def __call__(self, video: Float[Array, "b T H W c"]) -> Float[Array, "b t h w k"]:
        x = self.conv_in(video)
        for i, blocks in enumerate(self.levels):
            x = apply_blocks(blocks, x, remat=self.remat)
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        x = apply_blocks(self.mid, x, remat=self.remat)
        x = self.conv_out(jax.nn.silu(self.norm_out(x)))
        return x.astype(jnp.float32)


class CausalDecoder(nnx.Module):
    """``[b, 1+k, h, w, num_bits] -> [b, 1+f*k, h*s, w*s, c]``, mirror of `CausalEncoder`."""

    def __init__(
        self,
        *,
        out_channels: int,
        base_channels: int,
        channel_multipliers: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        num_bits: int,
        num_groups: int,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        remat: bool,
        rngs: nnx.Rngs,
    ):
        self.remat = remat
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        block = dict(num_groups=num_groups, **common)
        widths = [base_channels * m for m in channel_multipliers]
        channels = widths[-1]
        self.conv_in = CausalConv3d(num_bits, channels, **common)
        self.mid = _res_stack(channels, channels, num_res_blocks, **block)
        # Stored deepest level first, in the order they run.
        self.adaptive_norms = nnx.List()
        self.levels = nnx.List()
        self.upsamples = nnx.List()
        for i in reversed(range(len(widths))):
            self.adaptive_norms.append(AdaptiveGroupNorm(channels, num_bits, **block))
            self.levels.append(_res_stack(channels, widths[i], num_res_blocks, **block))
            channels = widths[i]
            if i > 0:
                self.upsamples.append(
                    DepthToSpaceUpsample(
                        channels,
                        channels,
                        temporal_factor=2 if temporal_downsample[i - 1] else 1,
                        **common,
                    )
                )
        self.norm_out = GroupNorm(channels, num_groups=num_groups, param_dtype=param_dtype)
        self.conv_out = CausalConv3d(channels, out_channels, **common)

    def __call__(self, z_q: Float[Array, "b t h w k"]) -> Float[Array, "b T H W c"]:
        x = self.conv_in(z_q)
        x = apply_blocks(self.mid, x, remat=self.remat)
        for i, (norm, blocks) in enumerate(zip(self.adaptive_norms, self.levels)):
            x = norm(x, z_q)
            x = apply_blocks(blocks, x, remat=self.remat)
            if i < len(self.upsamples):
                x = self.upsamples[i](x)
        x = self.conv_out(jax.nn.silu(self.norm_out(x)))
        return x.astype(jnp.float32)


class CausalVideoTokenizer(nnx.Module):
    """MAGVIT-v2 tokenizer: causal 3D-CNN encoder, LFQ, causal decoder.

    Videos are ``[b, T, H, W, c]`` floats in [-1, 1] with ``T = 1 + temporal_factor*k``
    (``T = 1`` is an image) and ``H, W`` divisible by ``spatial_factor``; tokens are
    ``[b, 1 + k, H/spatial_factor, W/spatial_factor]`` int32 in ``[0, 2^num_bits)``.
    The defaults are the thesis' K600 setup: 17x128x128 -> 5x16x16 tokens, vocabulary 2^18.
    """

    def __init__(
        self,
        *,
        base_channels: int = 128,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        num_res_blocks: int = 4,
        temporal_downsample: Sequence[bool] = (False, True, True),
        num_bits: int = 18,
        num_groups: int = 32,
        entropy_temperature: float = 0.01,
        entropy_groups: int = 1,
        in_channels: int = 3,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        channel_multipliers = tuple(channel_multipliers)
        temporal_downsample = tuple(bool(t) for t in temporal_downsample)
        if len(temporal_downsample) != len(channel_multipliers) - 1:
            raise ValueError(
                f"temporal_downsample={temporal_downsample} needs one flag per down-sampling "
                f"step, i.e. len(channel_multipliers) - 1 = {len(channel_multipliers) - 1} flags."
            )
        for m in channel_multipliers:
            if (base_channels * m) % num_groups:
                raise ValueError(
                    f"width base_channels*{m} = {base_channels * m} is not divisible by "
                    f"num_groups={num_groups}; pick num_groups dividing every width."
                )
        self.in_channels = in_channels
        self.num_bits = num_bits
        self.temporal_downsample = temporal_downsample
        self.num_downsamples = len(channel_multipliers) - 1
        arch = dict(
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            temporal_downsample=temporal_downsample,
            num_bits=num_bits,
            num_groups=num_groups,
            dtype=dtype,
            param_dtype=param_dtype,
            remat=remat,
            rngs=rngs,
        )
        self.encoder = CausalEncoder(in_channels=in_channels, **arch)
        self.quantizer = LFQ(
            num_bits, entropy_temperature=entropy_temperature, entropy_groups=entropy_groups
        )
        self.decoder = CausalDecoder(out_channels=in_channels, **arch)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first: ``1 + f*k`` frames -> ``1 + k``."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent position along height and width."""
        return 2**self.num_downsamples

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid ``(t, h, w)`` of a ``num_frames x height x width`` clip; raises if invalid."""
        f, s = self.temporal_factor, self.spatial_factor
        if num_frames < 1 or (num_frames - 1) % f:
            below = 1 + f * max((num_frames - 1) // f, 0)
            above = below + f if num_frames > below else below
            nearest = f"{below} or {above}" if below != above else f"{below}"
            raise ValueError(
                f"num_frames={num_frames} is not supported: the causal tokenizer needs "
                f"1 + {f}k frames (k >= 0; 1 frame is an image); use {nearest} frames."
            )
        if height % s or width % s:
            raise ValueError(
                f"frame size {height}x{width} is not supported: height and width must be "
                f"divisible by the spatial factor {s}; crop or resize, e.g. to "
                f"{max(s, height // s * s)}x{max(s, width // s * s)}."
            )
        return 1 + (num_frames - 1) // f, height // s, width // s

    def encode(self, video: Float[Array, "b T H W c"]) -> Float[Array, "b t h w k"]:
        """Continuous latents ``[b, t, h, w, num_bits]`` (float32) of ``video``."""
        if video.ndim != 5 or video.shape[-1] != self.in_channels:
            raise ValueError(
                f"video must be [batch, frames, height, width, {self.in_channels}], got "
                f"shape {video.shape}."
            )
        self.latent_shape(*video.shape[1:4])
        return self.encoder(video)

    def quantize(
        self, z: Float[Array, "b t h w k"]
    ) -> tuple[Float[Array, "b t h w k"], dict[str, jax.Array]]:
        """LFQ: ``(z_q in {-1,+1} with straight-through gradient, aux)``; see `LFQ`."""
        return self.quantizer(z)

    def decode(self, z_q: Float[Array, "b t h w k"]) -> Float[Array, "b T H W c"]:
        """Video ``[b, 1 + f*(t-1), h*s, w*s, c]`` (float32) from quantized latents."""
        if z_q.ndim != 5 or z_q.shape[-1] != self.num_bits:
            raise ValueError(
                f"latents must be [batch, t, h, w, {self.num_bits}], got shape {z_q.shape}."
            )
        return self.decoder(z_q)

    def tokenize(self, video: Float[Array, "b T H W c"]) -> Int[Array, "b t h w"]:
        """Token indices ``[b, t, h, w]`` int32 in ``[0, 2^num_bits)``."""
        _, aux = self.quantize(self.encode(video))
        return aux["indices"]

    def detokenize(self, indices: Int[Array, "b t h w"]) -> Float[Array, "b T H W c"]:
        """Video from token indices ``[b, t, h, w]``."""
        return self.decode(self.quantizer.codes_from_indices(indices))

    def __call__(
        self, video: Float[Array, "b T H W c"]
    ) -> tuple[Float[Array, "b T H W c"], dict[str, jax.Array]]:
        """Reconstruction ``[b, T, H, W, c]`` and the LFQ aux dict (indices, losses, stats)."""
        z_q, aux = self.quantize(self.encode(video))
        return self.decode(z_q), aux
