"""Audio reconstruction metrics and losses, and the mu-law codec baseline.

* `stft_magnitude`, `mel_filterbank`, `multiscale_spectral_distance`: the
  multi-scale spectral loss of neural audio codecs, in pure jnp so it is
  differentiable: for each FFT size (default 512, 1024, 2048 at 16 kHz, hop a
  quarter of the size, Hann window) the mean L1 distance of the mel
  spectrograms plus the mean L1 distance of their logs.
* `si_snr`: scale-invariant signal-to-noise ratio in dB (higher is better).
* `waveform_l1`, `waveform_mse`: time-domain errors.
* `mu_law_encode` / `mu_law_decode` / `mu_law_codec`: the baseline at the audio
  tokenizer's bit rate. 4 RVQ levels x 10 bits x 50 frames/s = 2000 bit/s, and
  so is 8-bit mu-law (mu = 255) at 250 samples/s: `mu_law_codec` low-passes and
  down-samples 16 kHz by 64 with `scipy.signal.resample_poly` (polyphase FIR,
  Kaiser window, beta 5), quantizes each sample to 8 bits, and up-samples back
  with the same filter. Everything above 125 Hz is lost, which is what 2 kbit/s
  buys without a learned codec.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, Int

SAMPLE_RATE = 16_000
FFT_SIZES = (512, 1024, 2048)
NUM_MELS = 64
# log(mel + LOG_FLOOR): a floor ~ -100 dB power keeps the log finite on silence.
LOG_FLOOR = 1e-5
MU = 255


def stft(
    audio: Float[Array, "b s"], fft_size: int, hop_length: int | None = None
) -> Complex[Array, "b frames bins"]:
    """Complex STFT with a periodic Hann window, hop ``fft_size // 4`` by default.

    ``fft_size // 2`` reflect padding on both sides centres frame ``i`` on sample
    ``hop * i``; ``fft_size // 2 + 1`` bins.
    """
    hop = fft_size // 4 if hop_length is None else hop_length
    if audio.shape[-1] <= fft_size // 2:
        raise ValueError(
            f"audio of {audio.shape[-1]} samples is too short for fft_size={fft_size}: reflect "
            f"padding needs more than {fft_size // 2}; use smaller FFT sizes."
        )
    x = jnp.pad(audio.astype(jnp.float32), ((0, 0), (fft_size // 2, fft_size // 2)), "reflect")
    num_frames = 1 + (x.shape[-1] - fft_size) // hop
    starts = hop * np.arange(num_frames)[:, None] + np.arange(fft_size)[None, :]
    window = np.hanning(fft_size + 1)[:-1].astype(np.float32)
    return jnp.fft.rfft(x[:, starts] * window, axis=-1)


def stft_magnitude(
    audio: Float[Array, "b s"], fft_size: int, hop_length: int | None = None
) -> Float[Array, "b frames bins"]:
    """|`stft`|, smoothed as ``sqrt(re^2 + im^2 + 1e-12)``: |.| has an infinite gradient at 0."""
    spectrum = stft(audio, fft_size, hop_length)
    return jnp.sqrt(jnp.square(spectrum.real) + jnp.square(spectrum.imag) + 1e-12)


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.cache
def mel_filterbank(fft_size: int, num_mels: int, sample_rate: int) -> np.ndarray:
    """float32 ``[fft_size // 2 + 1, num_mels]`` triangular filters, equally spaced on the
    HTK mel scale from 0 Hz to Nyquist, each peaking at 1."""
    bins = np.linspace(0.0, sample_rate / 2, fft_size // 2 + 1)
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(sample_rate / 2), num_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


def mel_spectrogram(
    audio: Float[Array, "b s"],
    fft_size: int,
    *,
    num_mels: int = NUM_MELS,
    sample_rate: int = SAMPLE_RATE,
) -> Float[Array, "b frames mels"]:
    """Mel-filtered STFT magnitude (hop ``fft_size // 4``)."""
    fb = jnp.asarray(mel_filterbank(fft_size, num_mels, sample_rate))
    return jnp.matmul(stft_magnitude(audio, fft_size), fb, precision=jax.lax.Precision.HIGHEST)


def multiscale_spectral_distance(
    estimate: Float[Array, "b s"],
    reference: Float[Array, "b s"],
    *,
    fft_sizes: tuple[int, ...] = FFT_SIZES,
    num_mels: int = NUM_MELS,
    sample_rate: int = SAMPLE_RATE,
) -> Float[Array, " b"]:
    """Per-example mean over scales of ``mean|M_e - M_r| + mean|log M_e - log M_r|`` on mel
    spectrograms; 0 for identical signals, differentiable."""
    total = 0.0
    for n in fft_sizes:
        m_e = mel_spectrogram(estimate, n, num_mels=num_mels, sample_rate=sample_rate)
        m_r = mel_spectrogram(reference, n, num_mels=num_mels, sample_rate=sample_rate)
        linear = jnp.mean(jnp.abs(m_e - m_r), axis=(1, 2))
        log = jnp.mean(jnp.abs(jnp.log(m_e + LOG_FLOOR) - jnp.log(m_r + LOG_FLOOR)), axis=(1, 2))
        total = total + linear + log
    return total / len(fft_sizes)


def si_snr(
    estimate: Float[Array, "b s"], reference: Float[Array, "b s"], *, eps: float = 1e-8
) -> Float[Array, " b"]:
    """Scale-invariant SNR in dB: ``10 log10(|t|^2 / |e - t|^2)`` with ``t`` the projection of
    the (zero-mean) estimate ``e`` onto the (zero-mean) reference; blind to gain."""
    e = estimate.astype(jnp.float32)
    r = reference.astype(jnp.float32)
    e = e - jnp.mean(e, axis=-1, keepdims=True)
    r = r - jnp.mean(r, axis=-1, keepdims=True)
    scale = jnp.sum(e * r, axis=-1, keepdims=True) / (jnp.sum(r * r, axis=-1, keepdims=True) + eps)
    target = scale * r
    noise = e - target
    return 10.0 * jnp.log10(
        (jnp.sum(target**2, axis=-1) + eps) / (jnp.sum(noise**2, axis=-1) + eps)
    )


def waveform_l1(
    estimate: Float[Array, "b s"], reference: Float[Array, "b s"]
) -> Float[Array, " b"]:
    """Per-example mean absolute error."""
    return jnp.mean(jnp.abs(estimate.astype(jnp.float32) - reference), axis=-1)


def waveform_mse(
    estimate: Float[Array, "b s"], reference: Float[Array, "b s"]
) -> Float[Array, " b"]:
    """Per-example mean squared error."""
    return jnp.mean(jnp.square(estimate.astype(jnp.float32) - reference), axis=-1)


def mu_law_encode(audio: np.ndarray, bits: int = 8, mu: int = MU) -> np.ndarray:
    """Companded levels ``int32 [0, 2^bits)`` of ``audio`` in [-1, 1] (clipped outside)."""
    x = np.clip(np.asarray(audio, np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu)
    levels = 2**bits
    return np.clip(np.floor((y + 1.0) / 2.0 * levels), 0, levels - 1).astype(np.int32)


def mu_law_decode(codes: Int[np.ndarray, " ..."], bits: int = 8, mu: int = MU) -> np.ndarray:
    """float32 waveform from `mu_law_encode` levels (each level's centre, expanded)."""
    y = (np.asarray(codes, np.float64) + 0.5) / 2**bits * 2.0 - 1.0
    return (np.sign(y) * np.expm1(np.abs(y) * math.log1p(mu)) / mu).astype(np.float32)


def mu_law_codec(
    audio: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    codec_rate: int = 250,
    bits: int = 8,
    mu: int = MU,
) -> np.ndarray:
    """Baseline codec at ``codec_rate * bits`` bit/s (2000 by default) along the last axis:
    resample to ``codec_rate``, mu-law ``bits``-bit round trip, resample back."""
    from scipy.signal import resample_poly  # Deferred: only the baseline needs scipy.

    audio = np.asarray(audio, np.float32)
    low = resample_poly(audio, codec_rate, sample_rate, axis=-1)
    decoded = mu_law_decode(mu_law_encode(low, bits, mu), bits, mu)
    back = resample_poly(decoded, sample_rate, codec_rate, axis=-1)
    return back[..., : audio.shape[-1]].astype(np.float32)


def rvq_bitrate(num_levels: int, codebook_size: int, frames_per_second: float) -> float:
    """Bits per second of RVQ tokens: ``levels * log2(codebook) * frame rate`` (4x10x50 = 2000)."""
    return num_levels * math.log2(codebook_size) * frames_per_second
