"""Audio samples: WAV round trip, spectrogram geometry and scale, grids and written files."""

import wave

import numpy as np
import pytest
from PIL import Image

from videogen.evaluation import audio_grid, audio_metrics

RATE = 16_000


def _tone(hz: float, seconds: float = 0.5, amplitude: float = 1.0) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(round(seconds * RATE)) / RATE)).astype(
        np.float32
    )


def _read_wav(path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
        return pcm.astype(np.float32) / 32767.0, wav.getframerate()


def test_wav_round_trip_is_16_bit_exact_after_clipping(tmp_path):
    audio = np.concatenate(
        [np.linspace(-1.5, 1.5, 301), np.random.default_rng(0).uniform(-1, 1, 699)]
    ).astype(np.float32)
    path = audio_grid.write_wav(tmp_path / "new" / "folder" / "a.wav", audio, RATE)
    assert path == str(tmp_path / "new" / "folder" / "a.wav")
    decoded, rate = _read_wav(path)
    assert rate == RATE and decoded.shape == (1000,)
    # Rounding to the nearest of 65535 levels is off by at most half a step.
    assert np.abs(decoded - np.clip(audio, -1, 1)).max() <= 0.5 / 32767 + 1e-7
    assert decoded[0] == -1.0 and decoded[300] == 1.0  # -1.5 and 1.5, clipped.
    with pytest.raises(ValueError, match=r"float \[S\] mono.*\(2, 5\)"):
        audio_grid.write_wav(tmp_path / "b.wav", np.zeros((2, 5)), RATE)
    with pytest.raises(ValueError, match="positive integer, got 0"):
        audio_grid.write_wav(tmp_path / "b.wav", audio, 0)


def _mel_centre_hz(mel: int) -> float:
    """The FFT bin frequency where mel filter `mel` of the spectrogram images peaks."""
    filters = audio_metrics.mel_filterbank(audio_grid.SPECTROGRAM_FFT_SIZE, 64, RATE)
    return float(np.argmax(filters[:, mel]) * RATE / audio_grid.SPECTROGRAM_FFT_SIZE)


def test_tone_lights_its_mel_row_low_tones_lower():
    rows = {}
    for mel in (12, 45):  # 469 Hz and 3469 Hz.
        image = audio_grid.spectrogram_image(_tone(_mel_centre_hz(mel)), RATE)
        # 0.5 s, hop 128: 1 + 8000 // 128 = 63 frames; 64 mel rows.
        assert image.shape == (64, 63, 3) and image.dtype == np.uint8
        brightness = image.astype(np.int32).sum(axis=(1, 2))
        rows[mel] = int(np.argmax(brightness))
        assert rows[mel] == 63 - mel  # Row 0 is the top (highest mel).
        # A full-scale tone reaches the top of the fixed dB scale: white.
        assert image[rows[mel], 5:-5].min() >= 250
    assert rows[12] > rows[45]  # The low tone sits lower in the image.


def test_spectrogram_scale_is_fixed_decibels():
    # Not normalised per image: silence is black, and 20 dB less (amplitude
    # 0.01 -> 0.001) is 20 / 80 of the scale less. On the black-red-yellow-white
    # scale R + G + B = 765 * level.
    assert not audio_grid.spectrogram_image(np.zeros(8000, np.float32), RATE).any()
    levels = []
    for amplitude in (0.01, 0.001):
        image = audio_grid.spectrogram_image(_tone(_mel_centre_hz(45), amplitude=amplitude), RATE)
        levels.append(image[63 - 45, 5:-5].astype(np.float64).sum(axis=-1).mean() / 765)
    assert 0.1 < levels[1] < levels[0] < 0.9  # Neither end of the scale clips.
    np.testing.assert_allclose(levels[0] - levels[1], 20 / 80, atol=0.01)


def test_grid_shape_and_cells_for_two_examples():
    originals = np.stack([_tone(300), _tone(2000)])
    reconstructions = np.stack([_tone(300, amplitude=0.5), np.zeros(8000, np.float32)])
    grid = audio_grid.spectrogram_grid(originals, reconstructions, RATE, max_examples=8, pad=2)
    # GH = 2 * 64 + 3 * 2 = 134, GW = 2 * 63 + 3 * 2 = 132.
    assert grid.shape == (134, 132, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(
        grid[2:66, 2:65], audio_grid.spectrogram_image(originals[0], RATE)
    )
    np.testing.assert_array_equal(
        grid[68:132, 67:130], audio_grid.spectrogram_image(reconstructions[1], RATE)
    )
    assert np.all(grid[:2] == 255) and np.all(grid[66:68] == 255) and np.all(grid[:, 65:67] == 255)
    with pytest.raises(ValueError, match=r"\(2, 8000\) and \(2, 7000\); crop"):
        audio_grid.spectrogram_grid(originals, reconstructions[:, :7000], RATE)


def test_save_audio_grid_writes_wavs_and_png(tmp_path):
    originals = np.stack([_tone(300), _tone(600), _tone(900)])
    reconstructions = 0.5 * originals
    paths = audio_grid.save_audio_grid(
        str(tmp_path), "recon_step0000100", originals, reconstructions, RATE, max_examples=2
    )
    samples = tmp_path / "samples"
    assert paths == [
        str(samples / "recon_step0000100_0_input.wav"),
        str(samples / "recon_step0000100_0_reconstruction.wav"),
        str(samples / "recon_step0000100_1_input.wav"),
        str(samples / "recon_step0000100_1_reconstruction.wav"),
        str(samples / "recon_step0000100.png"),
    ]
    decoded, _ = _read_wav(paths[3])
    np.testing.assert_allclose(decoded, reconstructions[1], atol=0.5 / 32767 + 1e-7)
    png = np.asarray(Image.open(paths[4]))
    np.testing.assert_array_equal(
        png, audio_grid.spectrogram_grid(originals, reconstructions, RATE, max_examples=2)
    )


def test_audio_summaries_fit_clu_write_audios():
    originals = np.stack([_tone(300, amplitude=1.5)] * 3)
    summaries = audio_grid.audio_summaries(
        originals, 0.5 * originals, name="eval/audio", max_examples=2
    )
    assert sorted(summaries) == ["eval/audio/input", "eval/audio/reconstruction"]
    assert summaries["eval/audio/input"].shape == (2, 8000, 1)
    assert summaries["eval/audio/input"].max() == 1.0  # Clipped to clu's [-1, 1].
    np.testing.assert_allclose(summaries["eval/audio/reconstruction"][..., 0], 0.5 * originals[:2])
