"""Video tokenizers: MAGVIT-v2 (thesis Sec. 5.3.2, Fig. 5.4) and the MAGVIT 3D-VQ (Sec. 3.2).

Both are an encoder -> quantizer -> decoder built from the same layers
(`videogen.models.layers`) and expose one interface: ``encode``, ``quantize``,
``decode``, ``tokenize``, ``detokenize``, ``latent_shape``, ``temporal_factor``,
``spatial_factor`` and ``__call__(video) -> (reconstruction, aux)`` with the
quantizer's ``aux = {"indices", "losses", "metrics"}`` (see `quantizers`).
``config.model_class`` names the class.

`CausalVideoTokenizer` (MAGVIT-v2): a temporally causal 3D-CNN maps a clip of
``1 + f*k`` frames (``f`` = temporal factor) to ``1 + k`` latent frames of
``num_bits`` channels, LFQ turns each latent vector into a token in
``[0, 2^num_bits)``, and a mirrored causal decoder, conditioned on the quantized
latents through adaptive group norms, maps them back. The first latent frame
depends on the first video frame only, so a single image is tokenized by the
same model. Changes over MAGVIT: causal convolutions, strided-conv
down-sampling, depth-to-space up-sampling, temporal down-sampling deferred to
the last encoder levels, adaptive group norms in the decoder.

`VQVideoTokenizer` (MAGVIT 3D-VQ): the VQGAN encoder/decoder with every conv
3D, non-causal with reflect padding, average-pool down-sampling (spatio-temporal
at the shallow levels, spatial-only near the latent), nearest-resize + conv
up-sampling mirroring it, and a 1024 x 256 VQ codebook: 16x128x128 -> 4x16x16.

Image models for pre-training and inflation (`videogen.models.inflation`):
``temporal_kernel_size=1`` makes every conv a per-frame 2D conv.

Long videos (`CausalVideoTokenizer.start_stream`): the causal tokenizer also
takes a video chunk by chunk, carrying each conv's causal context, so that the
chunks' tokens (and frames) equal those of one pass; `videogen.streaming`
drives it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from videogen.models.layers import (
    AdaptiveGroupNorm,
    AvgPoolDownsample,
    CausalConv3d,
    DepthToSpaceUpsample,
    Downsample,
    GroupNorm,
    NearestUpsample,
    PaddingMode,
    ResBlock3d,
    apply_blocks,
    start_stream,
)
from videogen.models.quantizers import LFQ, VectorQuantizer

DOWNSAMPLERS = ("conv", "avg_pool")
UPSAMPLERS = {"depth_to_space": DepthToSpaceUpsample, "nearest_conv": NearestUpsample}


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; use one of {tuple(choices)}.")


def _res_stack(in_channels: int, out_channels: int, count: int, **kwargs) -> nnx.List[ResBlock3d]:
    """``count`` residual blocks; the first changes the width."""
    return nnx.List(
        [
            ResBlock3d(in_channels if i == 0 else out_channels, out_channels, **kwargs)
            for i in range(count)
        ]
    )


class Encoder(nnx.Module):
    """``[b, T, H, W, c] -> [b, t, H/s, W/s, latent_channels]`` continuous latents.

    conv -> per level: residual blocks, then down-sampling (not after the last
    level) -> residual blocks -> GroupNorm -> Swish -> 1x1x1 conv.
    ``downsample="conv"``: strided conv (MAGVIT-v2); ``"avg_pool"``: average
    pooling (MAGVIT 3D-VQ). ``temporal_downsample[i]`` halves time after level ``i``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        base_channels: int,
        channel_multipliers: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        latent_channels: int,
        num_groups: int,
        causal: bool,
        padding_mode: PaddingMode,
        temporal_kernel_size: int,
        downsample: str,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        remat: bool,
        rngs: nnx.Rngs,
    ):
        _check_choice("downsample", downsample, DOWNSAMPLERS)
        self.remat = remat
        conv = dict(
            causal=causal,
            padding_mode=padding_mode,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        block = dict(num_groups=num_groups, temporal_kernel_size=temporal_kernel_size, **conv)
        kernel = (temporal_kernel_size, 3, 3)
        widths = [base_channels * m for m in channel_multipliers]
        self.conv_in = CausalConv3d(in_channels, base_channels, kernel, **conv)
        self.levels = nnx.List()
        self.downsamples = nnx.List()
        channels = base_channels
        for i, width in enumerate(widths):
            self.levels.append(_res_stack(channels, width, num_res_blocks, **block))
            channels = width
            if i < len(widths) - 1:
                temporal = temporal_downsample[i]
                self.downsamples.append(
                    Downsample(channels, channels, temporal=temporal, kernel_size=kernel, **conv)
                    if downsample == "conv"
                    else AvgPoolDownsample(temporal=temporal)
                )
        self.mid = _res_stack(channels, channels, num_res_blocks, **block)
        self.norm_out = GroupNorm(
            channels, num_groups=num_groups, per_frame=causal, param_dtype=param_dtype
        )
        self.conv_out = CausalConv3d(channels, latent_channels, kernel_size=(1, 1, 1), **conv)

    def __call__(self, video: Float[Array, "b T H W c"]) -> Float[Array, "b t h w k"]:
        x = self.conv_in(video)
        for i, blocks in enumerate(self.levels):
            x = apply_blocks(blocks, x, remat=self.remat)
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        x = apply_blocks(self.mid, x, remat=self.remat)
        x = self.conv_out(jax.nn.silu(self.norm_out(x)))
        return x.astype(jnp.float32)


class Decoder(nnx.Module):
    """``[b, t, h, w, latent_channels] -> [b, T, h*s, w*s, c]``, the mirror of `Encoder`.

    conv -> residual blocks -> per level, deepest first: [adaptive GroupNorm on
    the quantized latents (MAGVIT-v2)], residual blocks, up-sampling (not after
    the last level) -> GroupNorm -> Swish -> conv. ``upsample`` is
    ``"depth_to_space"`` (MAGVIT-v2) or ``"nearest_conv"`` (MAGVIT 3D-VQ).
    ``adaptive_norm_out`` makes that last GroupNorm adaptive too (not in the thesis):
    its per-frame statistics leave a flat region's level to the rest of the frame,
    and the latents' own shift and scale give it back per location.
    """

    def __init__(
        self,
        *,
        out_channels: int,
        base_channels: int,
        channel_multipliers: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        latent_channels: int,
        num_groups: int,
        causal: bool,
        padding_mode: PaddingMode,
        temporal_kernel_size: int,
        upsample: str,
        adaptive_norm: bool,
        adaptive_norm_out: bool,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        remat: bool,
        rngs: nnx.Rngs,
    ):
        _check_choice("upsample", upsample, UPSAMPLERS)
        self.remat = remat
        conv = dict(
            causal=causal,
            padding_mode=padding_mode,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        block = dict(num_groups=num_groups, temporal_kernel_size=temporal_kernel_size, **conv)
        norm = dict(num_groups=num_groups, causal=causal, dtype=dtype, param_dtype=param_dtype)
        kernel = (temporal_kernel_size, 3, 3)
        upsampler = UPSAMPLERS[upsample]
        widths = [base_channels * m for m in channel_multipliers]
        channels = widths[-1]
        self.conv_in = CausalConv3d(latent_channels, channels, kernel, **conv)
        self.mid = _res_stack(channels, channels, num_res_blocks, **block)
        # Stored deepest level first, in the order they run; no adaptive norms for the 3D-VQ.
        self.adaptive_norms = nnx.List()
        self.levels = nnx.List()
        self.upsamples = nnx.List()
        for i in reversed(range(len(widths))):
            if adaptive_norm:
                self.adaptive_norms.append(
                    AdaptiveGroupNorm(channels, latent_channels, **norm, rngs=rngs)
                )
            self.levels.append(_res_stack(channels, widths[i], num_res_blocks, **block))
            channels = widths[i]
            if i > 0:
                self.upsamples.append(
                    upsampler(
                        channels,
                        channels,
                        temporal_factor=2 if temporal_downsample[i - 1] else 1,
                        kernel_size=kernel,
                        **conv,
                    )
                )
        if adaptive_norm_out:
            self.norm_out = AdaptiveGroupNorm(channels, latent_channels, **norm, rngs=rngs)
        else:
            self.norm_out = GroupNorm(
                channels, num_groups=num_groups, per_frame=causal, param_dtype=param_dtype
            )
        self.conv_out = CausalConv3d(channels, out_channels, kernel, **conv)

    def __call__(self, z_q: Float[Array, "b t h w k"]) -> Float[Array, "b T H W c"]:
        x = self.conv_in(z_q)
        x = apply_blocks(self.mid, x, remat=self.remat)
        for i, blocks in enumerate(self.levels):
            if self.adaptive_norms:
                x = self.adaptive_norms[i](x, z_q)
            x = apply_blocks(blocks, x, remat=self.remat)
            if i < len(self.upsamples):
                x = self.upsamples[i](x)
        if isinstance(self.norm_out, AdaptiveGroupNorm):
            x = self.norm_out(x, z_q)
        else:
            x = self.norm_out(x)
        x = self.conv_out(jax.nn.silu(x))
        return x.astype(jnp.float32)


class _Tokenizer(nnx.Module):
    """Encoder, quantizer and decoder behind the interface both tokenizers share.

    Subclasses choose the layers and define ``latent_shape(num_frames, height, width)``.
    """

    def __init__(
        self,
        *,
        quantizer: Callable[[], nnx.Module],
        latent_channels: int,
        base_channels: int,
        channel_multipliers: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        num_groups: int,
        temporal_kernel_size: int,
        in_channels: int,
        causal: bool,
        padding_mode: PaddingMode,
        downsample: str,
        upsample: str,
        adaptive_norm: bool,
        adaptive_norm_out: bool,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        remat: bool,
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
        if temporal_kernel_size < 1:
            raise ValueError(
                f"temporal_kernel_size={temporal_kernel_size} must be >= 1 (1 = image model, "
                "3 = video model)."
            )
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.temporal_downsample = temporal_downsample
        self.num_downsamples = len(channel_multipliers) - 1
        arch = dict(
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            temporal_downsample=temporal_downsample,
            latent_channels=latent_channels,
            num_groups=num_groups,
            causal=causal,
            padding_mode=padding_mode,
            temporal_kernel_size=temporal_kernel_size,
            dtype=dtype,
            param_dtype=param_dtype,
            remat=remat,
            rngs=rngs,
        )
        self.encoder = Encoder(in_channels=in_channels, downsample=downsample, **arch)
        self.quantizer = quantizer()
        self.decoder = Decoder(
            out_channels=in_channels,
            upsample=upsample,
            adaptive_norm=adaptive_norm,
            adaptive_norm_out=adaptive_norm_out,
            **arch,
        )

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame (after the first, for the causal tokenizer)."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent position along height and width."""
        return 2**self.num_downsamples

    def _check_frame_size(self, height: int, width: int) -> None:
        s = self.spatial_factor
        if height % s or width % s:
            raise ValueError(
                f"frame size {height}x{width} is not supported: height and width must be "
                f"divisible by the spatial factor {s}; crop or resize, e.g. to "
                f"{max(s, height // s * s)}x{max(s, width // s * s)}."
            )

    def encode(self, video: Float[Array, "b T H W c"]) -> Float[Array, "b t h w k"]:
        """Continuous latents ``[b, t, h, w, latent_channels]`` (float32) of ``video``."""
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
        """``(z_q with straight-through gradient, aux = {indices, losses, metrics})``."""
        return self.quantizer(z)

    def decode(self, z_q: Float[Array, "b t h w k"]) -> Float[Array, "b T H W c"]:
        """Video ``[b, T, h*s, w*s, c]`` (float32) from quantized latents."""
        if z_q.ndim != 5 or z_q.shape[-1] != self.latent_channels:
            raise ValueError(
                f"latents must be [batch, t, h, w, {self.latent_channels}], got shape {z_q.shape}."
            )
        return self.decoder(z_q)

    def tokenize(self, video: Float[Array, "b T H W c"]) -> Int[Array, "b t h w"]:
        """Token indices ``[b, t, h, w]`` int32 in ``[0, quantizer.codebook_size)``."""
        _, aux = self.quantize(self.encode(video))
        return aux["indices"]

    def detokenize(self, indices: Int[Array, "b t h w"]) -> Float[Array, "b T H W c"]:
        """Video from token indices ``[b, t, h, w]``."""
        return self.decode(self.quantizer.codes_from_indices(indices))

    def __call__(
        self, video: Float[Array, "b T H W c"]
    ) -> tuple[Float[Array, "b T H W c"], dict[str, jax.Array]]:
        """Reconstruction ``[b, T, H, W, c]`` and the quantizer's aux (indices, losses, metrics)."""
        z_q, aux = self.quantize(self.encode(video))
        return self.decode(z_q), aux


class CausalVideoTokenizer(_Tokenizer):
    """MAGVIT-v2 tokenizer: causal 3D-CNN encoder, LFQ, causal decoder.

    Videos are ``[b, T, H, W, c]`` floats in [-1, 1] with ``T = 1 + temporal_factor*k``
    (``T = 1`` is an image) and ``H, W`` divisible by ``spatial_factor``; tokens are
    ``[b, 1 + k, H/spatial_factor, W/spatial_factor]`` int32 in ``[0, 2^num_bits)``.
    The defaults are the thesis' K600 setup: 17x128x128 -> 5x16x16 tokens, vocabulary 2^18.
    ``temporal_kernel_size=1`` (same other arguments) is the image model whose
    parameters ``inflate_params(..., mode="last")`` turns into this video model's.
    ``adaptive_norm_out=True`` also conditions the decoder's last norm on the latents
    (`Decoder`; not in the thesis).
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
        temporal_kernel_size: int = 3,
        adaptive_norm_out: bool = False,
        in_channels: int = 3,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.num_bits = num_bits
        super().__init__(
            quantizer=lambda: LFQ(
                num_bits, entropy_temperature=entropy_temperature, entropy_groups=entropy_groups
            ),
            latent_channels=num_bits,
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            temporal_downsample=temporal_downsample,
            num_groups=num_groups,
            temporal_kernel_size=temporal_kernel_size,
            in_channels=in_channels,
            causal=True,
            padding_mode="zeros",
            downsample="conv",
            upsample="depth_to_space",
            adaptive_norm=True,
            adaptive_norm_out=adaptive_norm_out,
            dtype=dtype,
            param_dtype=param_dtype,
            remat=remat,
            rngs=rngs,
        )

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
        self._check_frame_size(height, width)
        return 1 + (num_frames - 1) // f, height // s, width // s

    def start_stream(self) -> None:
        """Starts a stream: `stream_tokenize` and `stream_detokenize` then take a video (or its
        tokens) chunk by chunk, each chunk continuing the previous one (`layers.start_stream`).

        Call it on a copy made for the stream (e.g. inside a jitted function, after
        ``nnx.merge``): the carried frames become state of the model.
        """
        start_stream(self)

    def _check_stream(self, part: nnx.Module, call: str) -> bool:
        """Whether ``part`` continues its stream; raises if no stream was started."""
        if part.conv_in.carry is None:
            raise ValueError(f"{call} needs a stream: call start_stream() on the model first.")
        return part.conv_in.continues_stream

    def stream_tokenize(self, video: Float[Array, "b n H W c"]) -> Int[Array, "b m h w"]:
        """Tokens of the next chunk of a stream (`start_stream`).

        The first chunk has ``1 + f*k`` frames (``f`` = temporal factor) and gives
        ``1 + k`` token frames; each later chunk has ``f*m`` frames and gives ``m``.
        The chunks' tokens, concatenated, equal `tokenize` of the whole video.
        """
        if self._check_stream(self.encoder, "stream_tokenize"):
            f = self.temporal_factor
            frames = video.shape[1] if video.ndim == 5 else 0
            if not frames or frames % f or video.shape[-1] != self.in_channels:
                raise ValueError(
                    f"a stream's later chunks must be [batch, {f}m, height, width, "
                    f"{self.in_channels}] (m >= 1: a multiple of the temporal factor {f} "
                    f"frames), got shape {video.shape}."
                )
            self._check_frame_size(*video.shape[2:4])
            z = self.encoder(video)
        else:
            z = self.encode(video)
        _, aux = self.quantize(z)
        return aux["indices"]

    def stream_detokenize(self, indices: Int[Array, "b m h w"]) -> Float[Array, "b n H W c"]:
        """Frames of the next token chunk of a stream (`start_stream`): ``1 + f*(m-1)``
        frames for the first chunk of ``m`` token frames, ``f*m`` for each later one. The
        chunks' frames, concatenated, equal `detokenize` of all the tokens."""
        self._check_stream(self.decoder, "stream_detokenize")
        return self.detokenize(indices)


class VQVideoTokenizer(_Tokenizer):
    """MAGVIT 3D-VQ tokenizer (thesis Sec. 3.2): non-causal 3D-CNN, VQ codebook, 3D-CNN decoder.

    Videos are ``[b, T, H, W, c]`` floats in [-1, 1] with ``T`` a multiple of
    ``temporal_factor`` and ``H, W`` of ``spatial_factor``; tokens are
    ``[b, T/temporal_factor, H/spatial_factor, W/spatial_factor]`` int32 in
    ``[0, codebook_size)``. Latent frame ``i`` summarises frames
    ``f*i .. f*i + f - 1`` but, through the receptive field, sees the whole clip.
    Defaults are the thesis' 3D-VQ-B (Sec. 3.3.1): 16x128x128 -> 4x16x16 tokens,
    codebook 1024 x 256, base channels 64 (128 for L). The thesis does not give
    the residual blocks per level; 2 is the public MAGVIT B/L config and gives
    the thesis' 41M (B) and 158M (L) parameters.
    The image model (ImageNet pre-training, then ``inflate_params(...,
    mode="central")``) is ``temporal_kernel_size=1`` with all
    ``temporal_downsample`` False (pooling has no parameters, so the parameter
    trees still match).
    """

    def __init__(
        self,
        *,
        base_channels: int = 64,
        channel_multipliers: Sequence[int] = (1, 2, 2, 4),
        num_res_blocks: int = 2,
        temporal_downsample: Sequence[bool] = (True, True, False),
        codebook_size: int = 1024,
        embedding_dim: int = 256,
        num_groups: int = 32,
        temporal_kernel_size: int = 3,
        padding_mode: PaddingMode = "reflect",
        in_channels: int = 3,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            quantizer=lambda: VectorQuantizer(
                codebook_size, embedding_dim, param_dtype=param_dtype, rngs=rngs
            ),
            latent_channels=embedding_dim,
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            temporal_downsample=temporal_downsample,
            num_groups=num_groups,
            temporal_kernel_size=temporal_kernel_size,
            in_channels=in_channels,
            causal=False,
            padding_mode=padding_mode,
            downsample="avg_pool",
            upsample="nearest_conv",
            adaptive_norm=False,
            adaptive_norm_out=False,
            dtype=dtype,
            param_dtype=param_dtype,
            remat=remat,
            rngs=rngs,
        )

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid ``(t, h, w)`` of a ``num_frames x height x width`` clip; raises if invalid."""
        f, s = self.temporal_factor, self.spatial_factor
        if num_frames < 1 or num_frames % f:
            below = f * (num_frames // f)
            nearest = f"{below} or {below + f}" if below else f"{f}"
            raise ValueError(
                f"num_frames={num_frames} is not supported: the 3D-VQ tokenizer needs a "
                f"multiple of {f} frames; use {nearest} frames."
            )
        self._check_frame_size(height, width)
        return num_frames // f, height // s, width // s
