"""Audio samples: WAV files, log-mel spectrogram images, input | reconstruction grids and
video grids with sound.

Follows video_grid: files go to <workdir>/samples/ (gs:// paths work through
etils.epath). A spectrogram grid shows one example per row, the input on the
left and its reconstruction on the right, so a reader compares across a row.
Spectrograms share one fixed dB scale, so two images (two steps, two models)
compare by eye.
"""

from __future__ import annotations

import io
import os
import wave

from etils import epath
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, UInt8
from PIL import Image

from videogen.evaluation import audio_metrics, video_grid

SPECTROGRAM_FFT_SIZE = 512
# Decibels relative to fft_size / 4, the FFT peak of a full-scale sine (a mel
# filter spanning several FFT bins adds the sine's leakage into its neighbours,
# up to ~+6 dB), mapped to black .. white. 80 dB spans a codec's noise floor.
DB_RANGE = (-80.0, 0.0)


def _check_audio(audio: Float[np.ndarray, " s"], name: str) -> Float[np.ndarray, " s"]:
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1 or audio.shape[0] == 0:
        raise ValueError(
            f"{name}: audio must be float [S] mono with S >= 1, got shape {audio.shape}; "
            "pass one example, e.g. batch[i]."
        )
    return audio


def _check_pair(
    originals: Float[np.ndarray, "b s"], reconstructions: Float[np.ndarray, "b s"], name: str
) -> tuple[Float[np.ndarray, "b s"], Float[np.ndarray, "b s"]]:
    originals = np.asarray(originals, np.float32)
    reconstructions = np.asarray(reconstructions, np.float32)
    if originals.ndim != 2 or originals.shape[0] == 0 or originals.shape != reconstructions.shape:
        raise ValueError(
            f"{name}: originals and reconstructions must both be float [B, S] with B >= 1, "
            f"got {originals.shape} and {reconstructions.shape}; crop the reconstruction "
            "to the input's length first."
        )
    return originals, reconstructions


def write_wav(path: str | os.PathLike, audio: Float[np.ndarray, " s"], sample_rate: int) -> str:
    """Writes `audio` (float [S] in [-1, 1]; clipped outside) as 16-bit PCM mono WAV.

    Encoded in memory and written in one piece, so gs:// paths work; missing
    parent folders are created. Returns the path.
    """
    audio = _check_audio(audio, "write_wav")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"write_wav: sample_rate must be a positive integer, got {sample_rate}.")
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(int(sample_rate))
        wav.writeframes(pcm.tobytes())
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return os.fspath(target)


def spectrogram_image(
    audio: Float[np.ndarray, " s"],
    sample_rate: int,
    *,
    fft_size: int = SPECTROGRAM_FFT_SIZE,
    num_mels: int = audio_metrics.NUM_MELS,
) -> UInt8[np.ndarray, "mels frames 3"]:
    """Log-mel spectrogram as an RGB image [num_mels, frames, 3], low frequencies at the bottom.

    `audio_metrics.mel_spectrogram` (hop fft_size // 4, frames = 1 + S // hop)
    in dB, DB_RANGE mapped to a level in [0, 1] and shown on a black - red -
    yellow - white scale whose R + G + B is 765 * level.
    """
    audio = _check_audio(audio, "spectrogram_image")
    mel = audio_metrics.mel_spectrogram(
        jnp.asarray(audio)[None], fft_size, num_mels=num_mels, sample_rate=sample_rate
    )[0]
    # A Hann-windowed sine of amplitude 1 peaks at fft_size / 4 in its FFT bin.
    full_scale = fft_size / 4
    db = 20.0 * np.log10(np.asarray(mel, np.float64) / full_scale + 1e-12)
    low, high = DB_RANGE
    level = np.clip((db - low) / (high - low), 0.0, 1.0).T[::-1]  # [mels, frames], high at top.
    rgb = np.clip(3.0 * level[..., None] - np.arange(3.0), 0.0, 1.0)
    return np.round(255.0 * rgb).astype(np.uint8)


def spectrogram_grid(
    originals: Float[np.ndarray, "b s"],
    reconstructions: Float[np.ndarray, "b s"],
    sample_rate: int,
    *,
    max_examples: int = 4,
    pad: int = 2,
) -> UInt8[np.ndarray, "gh gw 3"]:
    """One row "input | reconstruction" of `spectrogram_image`s per example, for the first
    min(max_examples, B), with a `pad`-pixel white border around every cell:
    GH = N * num_mels + (N + 1) * pad, GW = 2 * frames + 3 * pad."""
    originals, reconstructions = _check_pair(originals, reconstructions, "spectrogram_grid")
    if max_examples < 1:
        raise ValueError(f"spectrogram_grid: max_examples must be >= 1, got {max_examples}.")
    rows = []
    for original, reconstruction in zip(originals[:max_examples], reconstructions[:max_examples]):
        pair = [spectrogram_image(a, sample_rate) for a in (original, reconstruction)]
        # make_grid takes [B, T, H, W, 3]: here 2 columns of one "frame" each.
        rows.append(np.stack(pair)[:, None])
    return video_grid.make_grid(rows, max_examples=2, pad=pad)[0]


def save_audio_grid(
    workdir: str,
    stem: str,
    originals: Float[np.ndarray, "b s"],
    reconstructions: Float[np.ndarray, "b s"],
    sample_rate: int,
    max_examples: int = 4,
) -> list[str]:
    """WAVs and a spectrogram grid of the first min(max_examples, B) examples under
    <workdir>/samples (gs:// works).

    Writes <stem>_<i>_input.wav and <stem>_<i>_reconstruction.wav for each
    example i and <stem>.png (`spectrogram_grid`); returns the paths in that order.
    """
    originals, reconstructions = _check_pair(originals, reconstructions, "save_audio_grid")
    samples = epath.Path(workdir) / "samples"
    paths = []
    for i in range(min(max_examples, originals.shape[0])):
        for kind, audio in (("input", originals[i]), ("reconstruction", reconstructions[i])):
            paths.append(write_wav(samples / f"{stem}_{i}_{kind}.wav", audio, sample_rate))
    grid = spectrogram_grid(originals, reconstructions, sample_rate, max_examples=max_examples)
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    png = samples / f"{stem}.png"
    png.write_bytes(buffer.getvalue())
    paths.append(os.fspath(png))
    return paths


def save_sound_grid(
    workdir: str,
    stem: str,
    rows: list[UInt8[np.ndarray, "b T H W 3"]],
    audio: Float[np.ndarray, "b s"],
    *,
    fps: float,
    sample_rate: int,
    max_examples: int = 8,
) -> list[str]:
    """<stem>.mp4, `video_grid.make_sound_grid` of `rows` and `audio` (each column's clip
    with its sound in turn), and <stem>.wav, that soundtrack uncompressed, under
    <workdir>/samples (gs:// works); returns the two paths."""
    frames, track = video_grid.make_sound_grid(
        rows, audio, fps=fps, sample_rate=sample_rate, max_examples=max_examples
    )
    paths = video_grid.save_grid(workdir, stem, frames, fps, audio=track, sample_rate=sample_rate)
    wav = epath.Path(workdir) / "samples" / f"{stem}.wav"
    return paths + [write_wav(wav, track, sample_rate)]


def audio_summaries(
    originals: Float[np.ndarray, "b s"],
    reconstructions: Float[np.ndarray, "b s"],
    *,
    name: str,
    max_examples: int = 4,
) -> dict[str, Float[np.ndarray, "n s 1"]]:
    """{f"{name}/input", f"{name}/reconstruction"}: float32 [N, S, 1] clipped to [-1, 1],
    N = min(max_examples, B); the mapping clu's
    `writer.write_audios(step, audio_summaries(...), sample_rate=...)` takes."""
    originals, reconstructions = _check_pair(originals, reconstructions, "audio_summaries")
    return {
        f"{name}/{kind}": np.clip(audio[:max_examples], -1.0, 1.0)[..., None]
        for kind, audio in (("input", originals), ("reconstruction", reconstructions))
    }
