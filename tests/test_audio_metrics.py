"""Audio metrics: SI-SNR (gain invariance, known SNRs), multi-scale spectral distance (0 for
identical signals, grows with noise, differentiable), STFT against numpy, mel filterbank,
waveform errors, and the 2 kbit/s mu-law baseline (round-trip error bound, bit rate, what it
keeps and loses of a real moving-digits soundtrack)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogen.data.moving_digits import DIGIT_PITCHES_HZ, soundtrack
from videogen.evaluation.audio_metrics import (
    mel_filterbank,
    mu_law_codec,
    mu_law_decode,
    mu_law_encode,
    multiscale_spectral_distance,
    rvq_bitrate,
    si_snr,
    stft,
    waveform_l1,
    waveform_mse,
)

SAMPLE_RATE = 16_000


def _noise(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def track() -> np.ndarray:
    """A real soundtrack: the digit-5 tone with two bounce clicks, 2.125 s at 16 kHz."""
    return soundtrack(5, [4, 11], num_frames=17, fps=8.0, sample_rate=SAMPLE_RATE)


@pytest.fixture(scope="module")
def spectral():
    return jax.jit(multiscale_spectral_distance)


def test_si_snr_ignores_gain_and_measures_known_snrs(track):
    ref = np.stack([track, track])
    si = jax.jit(si_snr)
    # A scaled copy (any gain) is a perfect estimate: float32 rounding is all that is left.
    scaled = np.stack([0.25 * track, -3.0 * track])
    assert np.all(np.asarray(si(scaled, ref)) > 60) and np.all(np.asarray(si(ref, ref)) > 60)
    # Noise orthogonal-ish to the signal at a known power ratio gives that SNR.
    noise = _noise(ref.shape, 0)
    power = np.mean(track**2)
    for snr_db in (0.0, 10.0, 20.0):
        scale = np.sqrt(power / 10 ** (snr_db / 10) / np.mean(noise**2, axis=-1, keepdims=True))
        np.testing.assert_allclose(si(ref + scale * noise, ref), snr_db, atol=0.1)
    # Gain on the estimate does not change a finite SI-SNR.
    noisy = ref + 0.1 * noise
    np.testing.assert_allclose(si(7.0 * noisy, ref), si(noisy, ref), atol=1e-3)


def test_waveform_errors():
    a = np.array([[0.0, 1.0, -1.0, 2.0]], np.float32)
    b = np.array([[0.5, 1.0, 1.0, 2.0]], np.float32)
    np.testing.assert_allclose(waveform_l1(a, b), [0.625])
    np.testing.assert_allclose(waveform_mse(a, b), [(0.25 + 4.0) / 4])


def test_stft_matches_numpy_frames_and_mel_filters_cover_the_band():
    x = _noise((1, 1000), 1)
    spec = np.asarray(jax.jit(stft, static_argnums=1)(x, 256))
    padded = np.pad(x[0], 128, mode="reflect")
    window = np.hanning(257)[:-1]
    expected = np.fft.rfft(padded[64 * 3 : 64 * 3 + 256] * window)
    assert spec.shape == (1, 1 + 1000 // 64, 129)
    np.testing.assert_allclose(spec[0, 3], expected, rtol=1e-4, atol=1e-4)
    fb = mel_filterbank(1024, 64, SAMPLE_RATE)
    assert fb.shape == (513, 64) and fb.max() <= 1.0
    # Each filter is a triangle with one peak; together they cover 0 Hz..Nyquist but the ends.
    assert np.all(fb.max(axis=0) > 0.5)
    assert np.all(fb[1:-1].sum(axis=1) > 0)
    peaks = np.argmax(fb, axis=0)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > peaks[0]


def test_spectral_distance_is_zero_for_identical_and_grows_with_noise(track, spectral):
    ref = np.stack([track, track])
    np.testing.assert_allclose(spectral(ref, ref), [0.0, 0.0], atol=1e-6)
    noise = _noise(ref.shape, 2)
    distances = [float(spectral(ref + level * noise, ref)[0]) for level in (0.001, 0.01, 0.1)]
    assert 0 < distances[0] < distances[1] < distances[2], distances
    # Symmetric, per example.
    noisy = ref + 0.01 * noise
    np.testing.assert_allclose(spectral(noisy, ref), spectral(ref, noisy), rtol=1e-5)


def test_spectral_distance_is_differentiable_and_descends(track, spectral):
    ref = jnp.asarray(track[None, :8000])
    estimate = ref + 0.05 * jnp.asarray(_noise(ref.shape, 3))

    def loss(e):
        return jnp.mean(multiscale_spectral_distance(e, ref))

    value, grad = jax.jit(jax.value_and_grad(loss))(estimate)
    assert np.all(np.isfinite(grad)) and float(jnp.max(jnp.abs(grad))) > 0
    # A small step against the gradient lowers the loss.
    step = 1e-3 / float(jnp.max(jnp.abs(grad)))
    assert float(jax.jit(loss)(estimate - step * grad)) < float(value)


def test_mu_law_round_trip_error_is_within_half_a_step():
    x = np.linspace(-1.0, 1.0, 20001)
    codes = mu_law_encode(x)
    assert codes.dtype == np.int32 and codes.min() == 0 and codes.max() == 255
    error = np.abs(mu_law_decode(codes) - x)
    # Half a step of 2/256 in the companded domain, times the expander's slope
    # d|x|/d|y| = ln(256) (1 + 255 |x|) / 255 (up to the curvature within a step).
    bound = (1 / 256) * np.log(256) / 255 * (1 + 255 * np.abs(x)) * 1.03
    assert np.all(error <= bound + 1e-7)
    # Largest at full scale: (1/256) ln(256) (256/255) = 0.0217.
    assert error.max() < 0.022 and np.abs(mu_law_decode(mu_law_encode(np.zeros(1)))).max() < 1e-4
    # Mu-law's point: below 0.01 the error is at most 3e-4, 13x finer than the
    # 1/256 half-step of linear 8-bit PCM.
    small = np.abs(x) < 0.01
    assert error[small].max() < 3.1e-4 < (1 / 256) / 12


def test_mu_law_codec_at_the_tokenizer_bit_rate(track):
    assert rvq_bitrate(4, 1024, 50) == 2000.0 == 250 * 8
    decoded = mu_law_codec(track[None])
    assert decoded.shape == (1, track.size) and decoded.dtype == np.float32
    # A 125 Hz band keeps nothing of the digit tone (>= 220 Hz): the baseline loses it,
    # while a codec at 16 kHz / 8 bit would keep it nearly exactly.
    assert min(DIGIT_PITCHES_HZ) > 125
    si = float(si_snr(decoded, track[None])[0])
    assert si < 1.0, si
    assert np.sqrt(np.mean(decoded**2)) < 0.2 * np.sqrt(np.mean(track**2))
    full_rate = mu_law_codec(track[None], codec_rate=SAMPLE_RATE)
    assert float(si_snr(full_rate, track[None])[0]) > 30
    # Within its band it works: a 60 Hz tone survives 250 Hz mu-law.
    t = np.arange(16000) / SAMPLE_RATE
    low = (0.5 * np.sin(2 * np.pi * 60 * t)).astype(np.float32)[None]
    assert float(si_snr(mu_law_codec(low)[:, 1000:-1000], low[:, 1000:-1000])[0]) > 20
