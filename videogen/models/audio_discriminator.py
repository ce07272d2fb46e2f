"""Multi-scale STFT discriminator for the audio tokenizer's optional adversarial loss.

Neural audio codecs (SoundStream's STFT discriminator, EnCodec's multi-scale
STFT discriminator) judge complex spectrograms rather than waveforms: the real
and imaginary parts keep the phase, and several FFT sizes trade time against
frequency resolution. Each scale here: complex STFT ``[b, frames, bins]`` ->
channels (real, imag) ``[b, frames, bins, 2]`` -> 2-D convs (leaky ReLU) that
halve the frequency axis -> a 1-channel map of logits ``[b, frames, bins', 1]``.
The 2-D convs are `layers.CausalConv3d` with a time kernel of 1 on a one-frame
"video" (non-causal, 'SAME' padding), so they carry the same logical axis names.

Nothing mixes the examples of a batch (no normalisation), so each example's
logits depend on that example only. The trainer averages the logits into the
existing GAN losses (`videogen.trainers.gan_losses`) and adds
`feature_matching_loss` on the returned feature maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from videogen.evaluation.audio_metrics import stft
from videogen.models.discriminator import LEAKY_RELU_SLOPE
from videogen.models.layers import CausalConv3d

FFT_SIZES = (256, 512, 1024)


class STFTDiscriminator(nnx.Module):
    """One scale: ``[b, S]`` waveform -> (logits ``[b, frames, bins', 1]``, feature maps).

    conv (3 x 9) -> ``num_layers`` convs (3 x 9, frequency stride 2) -> conv (3 x 3)
    -> conv (3 x 3) to one channel; every conv but the last is followed by a
    leaky ReLU and its output is a feature map.
    """

    def __init__(
        self,
        fft_size: int,
        *,
        channels: int = 32,
        num_layers: int = 3,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.fft_size = fft_size
        conv = {"causal": False, "dtype": dtype, "rngs": rngs}
        convs = [CausalConv3d(2, channels, (1, 3, 9), **conv)]
        convs += [
            CausalConv3d(channels, channels, (1, 3, 9), (1, 1, 2), **conv)
            for _ in range(num_layers)
        ]
        convs.append(CausalConv3d(channels, channels, (1, 3, 3), **conv))
        self.convs = nnx.List(convs)
        self.head = CausalConv3d(channels, 1, (1, 3, 3), **conv)

    def __call__(
        self, audio: Float[Array, "b s"]
    ) -> tuple[Float[Array, "b t f 1"], list[Float[Array, "b t f2 c"]]]:
        spectrum = stft(audio, self.fft_size)
        x = jnp.stack([spectrum.real, spectrum.imag], axis=-1)[:, None]  # [b, 1, t, f, 2]
        features = []
        for conv in self.convs:
            x = jax.nn.leaky_relu(conv(x), LEAKY_RELU_SLOPE)
            features.append(x[:, 0])
        return self.head(x)[:, 0].astype(jnp.float32), features


class MultiScaleSTFTDiscriminator(nnx.Module):
    """One `STFTDiscriminator` per FFT size; returns lists (one entry per scale) of logits
    ``[b, frames, bins', 1]`` and of feature maps."""

    def __init__(
        self,
        *,
        fft_sizes: Sequence[int] = FFT_SIZES,
        channels: int = 32,
        num_layers: int = 3,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.scales = nnx.List(
            [
                STFTDiscriminator(
                    n, channels=channels, num_layers=num_layers, dtype=dtype, rngs=rngs
                )
                for n in fft_sizes
            ]
        )

    def __call__(
        self, audio: Float[Array, "b s"]
    ) -> tuple[list[Float[Array, "b t f 1"]], list[list[Float[Array, "b t f2 c"]]]]:
        outputs = [scale(audio) for scale in self.scales]
        return [logits for logits, _ in outputs], [features for _, features in outputs]


def per_example_logits(logits: list[Float[Array, "b t f 1"]]) -> Float[Array, " b"]:
    """Mean over scales and positions: one logit per example for the GAN losses."""
    return jnp.mean(jnp.stack([jnp.mean(x, axis=(1, 2, 3)) for x in logits]), axis=0)


def feature_matching_loss(
    real_features: list[list[jax.Array]], fake_features: list[list[jax.Array]]
) -> Float[Array, ""]:
    """Mean over scales and layers of ``mean|f_real - f_fake|`` (real features get no gradient),
    in float32 whatever the features' dtype."""
    terms = [
        jnp.mean(jnp.abs(jax.lax.stop_gradient(r).astype(jnp.float32) - f.astype(jnp.float32)))
        for real, fake in zip(real_features, fake_features)
        for r, f in zip(real, fake)
    ]
    return sum(terms) / len(terms)
