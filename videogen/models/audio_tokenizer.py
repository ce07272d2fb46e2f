"""SoundStream-style audio tokenizer (thesis Sec. 8.3.1): causal 1-D CNN + residual VQ.

VideoPoet tokenizes 2.125 s of 16 kHz audio into 106 latent frames of a
4-level, 1024-code residual vector quantizer (4096 audio ids after
level-major flattening, `quantizers.flatten_audio_tokens`).

Encoder: causal conv (kernel 7) -> per stride ``s`` in ``strides``: three
residual units (dilated causal conv, kernel 7, dilations 1, 3, 9 -> ELU -> 1x1
conv, plus the input) then a strided causal conv (kernel ``2s``) that widens the
channels -> causal conv (kernel 3) to ``latent_dim``. The default strides
(2, 4, 5, 8) give a hop of 320 samples: 50 latent frames per second at 16 kHz.
Decoder: the mirror image, with depth-to-space up-sampling (a causal conv to
``s`` times the channels, then each frame's channels become ``s`` samples).

Frame count: a strided stage maps ``n`` samples to ``floor(n / s)`` (``k - s``
zeros before, none after), so ``S`` samples give ``floor(S / hop)`` frames:
34000 samples (2.125 s) -> 106 frames, as in the thesis (``ceil`` would give
107). The last ``S mod hop`` samples (80 of 34000, 5 ms) belong to no frame;
the reconstruction is zero there (`coded_samples` tells how many are coded).

Causality: latent frame ``j`` depends on samples ``< hop * (j + 1)`` only, and
reconstructed sample ``t`` on frames ``<= t // hop``; so changing the input
from sample ``hop * m`` on changes no frame before ``m`` and no output sample
before ``hop * m`` (the codec's latency is one frame).

Tensors are channels-last (``[b, samples, channels]`` inside); parameters carry
the logical axis names of `videogen.models.layers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from videogen import sharding
from videogen.models.layers import CONV_BIAS_AXES
from videogen.models.quantizers import ResidualVQ

# A 1-D kernel's taps run along the time axis ("conv_t"), as in layers.CONV3D_KERNEL_AXES.
CONV1D_KERNEL_AXES = ("conv_t", "channels_in", "channels_out")
# Its output split by batch and output channel, and its kernel gathered for use but for the
# tensor-parallel output channels, as layers.CONV3D_ACTIVATION_AXES / CONV3D_KERNEL_USE_AXES.
CONV1D_ACTIVATION_AXES = ("activation_batch", None, "activation_channels")
CONV1D_KERNEL_USE_AXES = (None, None, "activation_channels")
RESIDUAL_DILATIONS = (1, 3, 9)
# PyTorch's default conv initialisation, U(+-1 / sqrt(fan_in)), which SoundStream-style
# codecs are trained from; also far cheaper to compile than a truncated normal.
_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class CausalConv1d(nnx.Module):
    """Causal 1-D convolution over ``[b, n, ci]``: output ``i`` sees inputs up to its own block.

    Stride 1: ``dilation * (k - 1)`` zeros before the signal, so output ``i``
    depends on inputs ``<= i``. Stride ``s``: ``k - s`` zeros before, none after,
    ``n -> floor(n / s)`` outputs, and output ``i`` depends on inputs
    ``< s * (i + 1)`` (the block it summarises and earlier ones).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if stride > 1 and (dilation != 1 or kernel_size < stride):
            raise ValueError(
                f"a strided CausalConv1d needs dilation 1 and kernel_size >= stride; got "
                f"kernel_size={kernel_size}, stride={stride}, dilation={dilation}."
            )
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.dtype = dtype
        shape = (kernel_size, in_channels, out_channels)
        self.kernel = nnx.Param(
            _KERNEL_INIT(rngs.params(), shape, param_dtype), out_sharding=CONV1D_KERNEL_AXES
        )
        self.bias = nnx.Param(jnp.zeros((out_channels,), param_dtype), out_sharding=CONV_BIAS_AXES)

    def __call__(self, x: Float[Array, "b n ci"]) -> Float[Array, "b m co"]:
        if self.stride == 1:
            left = self.dilation * (self.kernel_size - 1)
        else:
            left = self.kernel_size - self.stride
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            sharding.constrain(self.kernel[...].astype(self.dtype), CONV1D_KERNEL_USE_AXES),
            (self.stride,),
            [(left, 0)],
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return sharding.constrain(y + self.bias[...].astype(self.dtype), CONV1D_ACTIVATION_AXES)


class ResidualUnit(nnx.Module):
    """``x + conv1x1(elu(dilated_conv7(elu(x))))`` (SoundStream's residual unit), causal."""

    def __init__(self, channels: int, dilation: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv = CausalConv1d(channels, channels, 7, dilation=dilation, dtype=dtype, rngs=rngs)
        self.project = CausalConv1d(channels, channels, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x: Float[Array, "b n c"]) -> Float[Array, "b n c"]:
        return x + self.project(jax.nn.elu(self.conv(jax.nn.elu(x))))


def _residual_units(channels: int, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([ResidualUnit(channels, d, dtype=dtype, rngs=rngs) for d in RESIDUAL_DILATIONS])


class DepthToTime(nnx.Module):
    """Causal up-sampling by ``factor``: a causal conv to ``factor * co`` channels, then each
    frame's channels become ``factor`` consecutive samples (``[b, n, ci] -> [b, n*factor, co]``).

    Output sample ``t`` depends on frames ``<= t // factor`` (kernel ``kernel_size``
    frames back), like a transposed conv of kernel ``kernel_size * factor`` whose
    output is cropped to stay causal, without its checkerboard overlap.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        factor: int,
        *,
        kernel_size: int = 2,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.factor = factor
        self.out_channels = out_channels
        self.conv = CausalConv1d(
            in_channels, out_channels * factor, kernel_size, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: Float[Array, "b n ci"]) -> Float[Array, "b m co"]:
        y = self.conv(x)
        b, n, _ = y.shape
        return y.reshape(b, n * self.factor, self.out_channels)


class AudioEncoder(nnx.Module):
    """``[b, S] -> [b, floor(S / hop), latent_dim]`` continuous latents (see module docstring)."""

    def __init__(
        self,
        *,
        channels: int,
        channel_multipliers: Sequence[int],
        strides: Sequence[int],
        latent_dim: int,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.stem = CausalConv1d(1, channels, 7, dtype=dtype, rngs=rngs)
        widths = [channels] + [channels * m for m in channel_multipliers]
        self.units = nnx.List(
            [_residual_units(widths[i], dtype=dtype, rngs=rngs) for i in range(len(strides))]
        )
        self.downsamples = nnx.List(
            [
                CausalConv1d(widths[i], widths[i + 1], 2 * s, stride=s, dtype=dtype, rngs=rngs)
                for i, s in enumerate(strides)
            ]
        )
        self.head = CausalConv1d(widths[-1], latent_dim, 3, dtype=dtype, rngs=rngs)

    def __call__(self, audio: Float[Array, "b s"]) -> Float[Array, "b f d"]:
        x = self.stem(audio[..., None])
        for units, down in zip(self.units, self.downsamples):
            for unit in units:
                x = unit(x)
            x = down(jax.nn.elu(x))
        # Float32 latents whatever the computation dtype: the residual VQ works in float32.
        return self.head(jax.nn.elu(x)).astype(jnp.float32)


class AudioDecoder(nnx.Module):
    """``[b, f, latent_dim] -> [b, f * hop]`` waveform; mirrors `AudioEncoder`."""

    def __init__(
        self,
        *,
        channels: int,
        channel_multipliers: Sequence[int],
        strides: Sequence[int],
        latent_dim: int,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        widths = [channels] + [channels * m for m in channel_multipliers]
        self.stem = CausalConv1d(latent_dim, widths[-1], 7, dtype=dtype, rngs=rngs)
        levels = list(reversed(range(len(strides))))
        self.upsamples = nnx.List(
            [
                DepthToTime(widths[i + 1], widths[i], strides[i], dtype=dtype, rngs=rngs)
                for i in levels
            ]
        )
        self.units = nnx.List([_residual_units(widths[i], dtype=dtype, rngs=rngs) for i in levels])
        self.head = CausalConv1d(channels, 1, 7, dtype=dtype, rngs=rngs)

    def __call__(self, latents: Float[Array, "b f d"]) -> Float[Array, "b s"]:
        x = self.stem(latents)
        for up, units in zip(self.upsamples, self.units):
            x = up(jax.nn.elu(x))
            for unit in units:
                x = unit(x)
        return self.head(jax.nn.elu(x))[..., 0]


class SoundStreamTokenizer(nnx.Module):
    """Causal conv encoder -> `ResidualVQ` -> causal conv decoder on 16 kHz mono waveforms.

    Defaults follow SoundStream (C = 32, widths 2C..16C, strides 2, 4, 5, 8) and
    VideoPoet (4 levels x 1024 codes, 50 frames/s, 2 kbit/s). ``__call__(audio)``
    returns ``(reconstruction [b, S], aux)`` with the quantizer's ``aux``
    (``indices [b, frames, levels]``, ``losses``, ``metrics``); the quantizer's
    training behaviour (EMA updates, dead-code restarts, quantizer dropout)
    follows ``model.train()`` / ``model.eval()``.
    """

    def __init__(
        self,
        *,
        channels: int = 32,
        channel_multipliers: Sequence[int] = (2, 4, 8, 16),
        strides: Sequence[int] = (2, 4, 5, 8),
        latent_dim: int = 128,
        num_levels: int = 4,
        codebook_size: int = 1024,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.1,
        quantizer_dropout: bool = True,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(channel_multipliers) != len(strides) or not strides:
            raise ValueError(
                f"channel_multipliers={tuple(channel_multipliers)} and strides={tuple(strides)} "
                "need one entry per down-sampling stage (the same, non-zero, number)."
            )
        self.strides = tuple(int(s) for s in strides)
        self.hop_length = math.prod(self.strides)
        net = {
            "channels": channels,
            "channel_multipliers": tuple(channel_multipliers),
            "strides": self.strides,
            "latent_dim": latent_dim,
            "dtype": dtype,
            "rngs": rngs,
        }
        self.encoder = AudioEncoder(**net)
        self.quantizer = ResidualVQ(
            num_levels,
            codebook_size,
            latent_dim,
            decay=ema_decay,
            dead_code_threshold=dead_code_threshold,
            quantizer_dropout=quantizer_dropout,
            rngs=rngs,
        )
        self.decoder = AudioDecoder(**net)

    def latent_frames(self, num_samples: int) -> int:
        """``floor(num_samples / hop)``: 34000 samples -> 106 frames at the default hop 320."""
        return num_samples // self.hop_length

    def coded_samples(self, num_samples: int) -> int:
        """How many leading samples the tokens describe (``latent_frames * hop``)."""
        return self.latent_frames(num_samples) * self.hop_length

    def _check(self, audio: jax.Array) -> None:
        if audio.ndim != 2 or audio.shape[1] < self.hop_length:
            raise ValueError(
                f"audio must be [batch, samples] with at least hop_length={self.hop_length} "
                f"samples, got shape {audio.shape}."
            )

    def encode(self, audio: Float[Array, "b s"]) -> Float[Array, "b f d"]:
        """Continuous latents ``[b, floor(S / hop), latent_dim]``."""
        self._check(audio)
        return self.encoder(audio)

    def decode(self, latents: Float[Array, "b f d"], num_samples: int) -> Float[Array, "b s"]:
        """Waveform ``[b, num_samples]``; zeros past ``frames * hop``."""
        audio = self.decoder(latents).astype(jnp.float32)
        return jnp.pad(audio, ((0, 0), (0, num_samples - audio.shape[1])))

    def tokenize(self, audio: Float[Array, "b s"]) -> Int[Array, "b l f"]:
        """Tokens ``[b, num_levels, floor(S / hop)]`` in ``[0, codebook_size)``."""
        return self.quantizer.tokenize(self.encode(audio))

    def detokenize(
        self, tokens: Int[Array, "b l f"], num_samples: int | None = None
    ) -> Float[Array, "b s"]:
        """Waveform ``[b, num_samples]`` (default ``frames * hop``) from tokens of 1+ levels."""
        frames = tokens.shape[2]
        num_samples = frames * self.hop_length if num_samples is None else num_samples
        return self.decode(self.quantizer.detokenize(tokens), num_samples)

    def __call__(
        self, audio: Float[Array, "b s"]
    ) -> tuple[Float[Array, "b s"], dict[str, jax.Array]]:
        """Reconstruct ``audio [b, S]``; returns ``(reconstruction [b, S], quantizer aux)``."""
        latents = self.encode(audio)
        quantized, aux = self.quantizer(latents)
        return self.decode(quantized, audio.shape[1]), aux
