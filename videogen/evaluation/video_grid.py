"""Sample grids: lay out videos side by side and write them as GIF or MP4 (with sound).

A grid shows one example per column and one row per kind of video (for
instance input / reconstruction / sample), so a reader compares down a column.
A grid with sound (`make_sound_grid`) plays once per column with that column's
soundtrack, since one audio track cannot carry several examples at once.
"""

from __future__ import annotations

import fractions
import functools
import os
import tempfile
from collections.abc import Sequence

import av
from etils import epath
import numpy as np
from jaxtyping import Array, Float, UInt8
from PIL import Image

# Preferred MP4 encoders, best first: H.264 where the PyAV wheel ships it
# (smaller files at equal quality, plays everywhere), MPEG-4 part 2 otherwise.
_MP4_ENCODERS = ("libx264", "mpeg4")
# Audio encoders for MP4, best first: AAC (FFmpeg's native encoder, in every build; what
# MP4 players expect), MP3 otherwise.
_MP4_AUDIO_ENCODERS = ("aac", "libmp3lame")


def to_uint8(
    video: Float[Array, "*shape"] | Float[np.ndarray, "*shape"],
) -> UInt8[np.ndarray, "*shape"]:
    """Maps floats in [-1, 1] to uint8 in [0, 255] (values outside are clipped)."""
    x = np.asarray(video, dtype=np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(
    rows: Sequence[UInt8[np.ndarray, "b T H W 3"]],
    *,
    max_examples: int = 8,
    pad: int = 2,
    pad_value: int = 255,
) -> UInt8[np.ndarray, "t gh gw 3"]:
    """Tiles `rows` (each [B, T, H, W, 3]) into one video [T, GH, GW, 3].

    Example i of every row goes to column i; the first min(max_examples, B)
    examples are shown, B being the smallest batch among the rows. T is the
    longest row's length; shorter rows hold their last frame. A `pad`-pixel
    border of `pad_value` surrounds every cell, so
    GH = R * H + (R + 1) * pad and GW = N * W + (N + 1) * pad.
    """
    if not rows:
        raise ValueError("make_grid: got no rows; pass a list of [B, T, H, W, 3] uint8 arrays.")
    rows = [np.asarray(r) for r in rows]
    for i, r in enumerate(rows):
        if r.dtype != np.uint8 or r.ndim != 5 or r.shape[-1] != 3:
            raise ValueError(
                f"make_grid: row {i} must be uint8 [B, T, H, W, 3], got {r.dtype} "
                f"{r.shape}; convert [-1, 1] floats with to_uint8."
            )
    h, w = rows[0].shape[2:4]
    for i, r in enumerate(rows):
        if r.shape[2:4] != (h, w):
            raise ValueError(
                f"make_grid: row {i} has frames {r.shape[2]}x{r.shape[3]}, row 0 has "
                f"{h}x{w}; resize rows to one frame size first."
            )
    if max_examples < 1 or pad < 0:
        raise ValueError(
            f"make_grid: need max_examples >= 1 and pad >= 0, got {max_examples} and {pad}."
        )

    n = min(max_examples, min(r.shape[0] for r in rows))
    t = max(r.shape[1] for r in rows)
    grid = np.full(
        (t, len(rows) * h + (len(rows) + 1) * pad, n * w + (n + 1) * pad, 3),
        pad_value,
        dtype=np.uint8,
    )
    for ri, r in enumerate(rows):
        # Index clamping repeats the last frame of a short row.
        frames = r[:n, np.minimum(np.arange(t), r.shape[1] - 1)]
        y0 = pad + ri * (h + pad)
        for ci in range(n):
            x0 = pad + ci * (w + pad)
            grid[:, y0 : y0 + h, x0 : x0 + w] = frames[ci]
    return grid


def make_sound_grid(
    rows: Sequence[UInt8[np.ndarray, "b T H W 3"]],
    audio: Float[np.ndarray, "b s"],
    *,
    fps: float,
    sample_rate: int,
    max_examples: int = 8,
    pad: int = 2,
    pad_value: int = 255,
    dim: float = 0.35,
) -> tuple[UInt8[np.ndarray, "t gh gw 3"], Float[np.ndarray, " n"]]:
    """`make_grid` of `rows` played once per column, with that column's sound `audio[i]`.

    In pass i, column i shows as it is and the rest of the grid is dimmed (x `dim`), so
    each sound is heard with its clip. A pass lasts the longer of the clip (T / fps) and
    the sound (S / sample_rate) in whole frames: the clip holds its last frame, the sound
    is padded with silence. Returns the frames [passes * frames, GH, GW, 3] and the mono
    soundtrack (float32 in [-1, 1]), ``round(frames * sample_rate / fps)`` samples a pass.
    """
    grid = make_grid(rows, max_examples=max_examples, pad=pad, pad_value=pad_value)
    audio = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
    n = min(max_examples, min(np.shape(r)[0] for r in rows))
    if audio.ndim != 2 or audio.shape[0] < n or audio.shape[1] == 0:
        raise ValueError(
            f"make_sound_grid: audio must be float [B, S] with a sound for each of the {n} "
            f"columns, got shape {audio.shape}; pass one mono track per example."
        )
    if fps <= 0 or sample_rate <= 0 or not 0.0 <= dim <= 1.0:
        raise ValueError(
            f"make_sound_grid: need fps > 0, sample_rate > 0 and dim in [0, 1], got {fps}, "
            f"{sample_rate} and {dim}."
        )
    frames = max(grid.shape[0], int(np.ceil(audio.shape[1] * fps / sample_rate)))
    samples = int(round(frames * sample_rate / fps))
    held = grid[np.minimum(np.arange(frames), grid.shape[0] - 1)]
    dimmed = np.round(held * dim).astype(np.uint8)
    w = np.shape(rows[0])[3]
    videos, tracks = [], []
    for i in range(n):
        x0 = pad + i * (w + pad)
        lit = dimmed.copy()
        lit[:, :, x0 : x0 + w] = held[:, :, x0 : x0 + w]
        videos.append(lit)
        track = np.zeros(samples, np.float32)  # samples >= S: frames cover the sound
        track[: audio.shape[1]] = audio[i]
        tracks.append(track)
    return np.concatenate(videos), np.concatenate(tracks)


def _check_frames(frames: UInt8[np.ndarray, "T H W 3"], name: str) -> UInt8[np.ndarray, "T H W 3"]:
    frames = np.asarray(frames)
    if (
        frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[-1] != 3
        or frames.shape[0] == 0
    ):
        raise ValueError(
            f"{name}: frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} "
            f"{frames.shape}; convert [-1, 1] floats with to_uint8."
        )
    return frames


def _make_parent(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return path


def write_gif(path: str | os.PathLike, frames: UInt8[np.ndarray, "T H W 3"], fps: float) -> str:
    """Writes a looping GIF; returns the path.

    GIF stores delays in 1/100 s, so the frame time is rounded to 10 ms. Each
    frame gets its own palette of at most 256 colours (exact for inputs with
    few colours). Pillow merges identical consecutive frames into one longer
    frame, which plays identically but reads back as fewer frames.
    """
    frames = _check_frames(frames, "write_gif")
    if fps <= 0:
        raise ValueError(f"write_gif: fps must be positive, got {fps}.")
    path = _make_parent(path)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(10, int(round(100.0 / fps)) * 10),
        loop=0,
    )
    return path


def _first_encoder(names: tuple[str, ...], kind: str) -> str:
    for name in names:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # PyAV raises its own UnknownCodecError subclasses.
            continue
        return name
    raise RuntimeError(
        f"No MP4 {kind} encoder among {names} in this PyAV build; install the PyAV wheel "
        "from PyPI, which bundles FFmpeg with libx264 and AAC."
    )


@functools.cache
def mp4_encoder() -> str:
    """Name of the best MP4 video encoder this PyAV build ships."""
    return _first_encoder(_MP4_ENCODERS, "video")


@functools.cache
def mp4_audio_encoder() -> str:
    """Name of the best MP4 audio encoder this PyAV build ships (AAC if available)."""
    return _first_encoder(_MP4_AUDIO_ENCODERS, "audio")


def write_mp4(
    path: str | os.PathLike,
    frames: UInt8[np.ndarray, "T H W 3"],
    fps: float,
    *,
    codec: str | None = None,
    audio: Float[np.ndarray, " s"] | None = None,
    sample_rate: int | None = None,
) -> str:
    """Writes an MP4 at high quality; returns the path.

    `codec` defaults to mp4_encoder() (H.264 if available); "libx264" and
    "mpeg4" are supported. yuv420p, which every player accepts, needs even H
    and W: an odd size is padded by repeating the last row / column. `audio`
    (float [S] mono in [-1, 1], clipped outside) at `sample_rate` Hz becomes the
    soundtrack, encoded by mp4_audio_encoder() at 128 kbit/s; it starts with the
    first frame.
    """
    frames = _check_frames(frames, "write_mp4")
    if fps <= 0:
        raise ValueError(f"write_mp4: fps must be positive, got {fps}.")
    if audio is not None:
        audio = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
        if audio.ndim != 1 or audio.shape[0] == 0:
            raise ValueError(
                f"write_mp4: audio must be float [S] mono with S >= 1, got shape "
                f"{audio.shape}; mix or pick one channel first."
            )
        if sample_rate is None or int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(
                f"write_mp4: audio needs a positive integer sample_rate, got {sample_rate}."
            )
    codec = codec or mp4_encoder()
    if codec not in _MP4_ENCODERS:
        raise ValueError(f"write_mp4: codec must be one of {_MP4_ENCODERS}, got {codec!r}.")
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path = _make_parent(path)
    with av.open(path, mode="w") as container:
        # A rational rate keeps 29.97 exact and satisfies the encoder's time base.
        stream = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # Visually lossless; sample grids are small, so file size hardly matters.
            stream.options = {"crf": "17", "preset": "medium"}
        else:
            # Bounding the quantiser gives constant high quality whatever the
            # frame size, which a fixed bit rate would not.
            stream.options = {"qmin": "2", "qmax": "4"}
        # Every stream must exist before the first packet writes the header.
        sound = None
        if audio is not None:
            sound = container.add_stream(
                mp4_audio_encoder(), rate=int(sample_rate), layout="mono", bit_rate=128_000
            )
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            # One frame of the whole track: PyAV cuts it into the encoder's frame size.
            track = av.AudioFrame.from_ndarray(audio[None], format="fltp", layout="mono")
            track.sample_rate, track.pts = int(sample_rate), 0
            for packet in sound.encode(track):
                container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def save_grid(
    workdir: str,
    stem: str,
    grid: np.ndarray,
    fps: float,
    *,
    audio: Float[np.ndarray, " s"] | None = None,
    sample_rate: int | None = None,
) -> list[str]:
    """GIF + MP4 of `grid` under <workdir>/samples; encoded locally, then copied (gs:// works).

    With `audio` (write_mp4's soundtrack) only the MP4 is written: a GIF has no sound.
    """
    samples = epath.Path(workdir) / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    writers = [(".mp4", functools.partial(write_mp4, audio=audio, sample_rate=sample_rate))]
    if audio is None:
        writers.insert(0, (".gif", write_gif))
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, write in writers:
            local = write(os.path.join(tmp, stem + suffix), grid, fps=fps)
            target = samples / (stem + suffix)
            target.write_bytes(epath.Path(local).read_bytes())
            paths.append(os.fspath(target))
    return paths


def reconstruction_grid(
    inputs: UInt8[np.ndarray, "b T H W 3"],
    reconstructions: UInt8[np.ndarray, "b T H W 3"],
    *,
    error_gain: float = 4.0,
    max_examples: int = 8,
    pad: int = 2,
) -> UInt8[np.ndarray, "t gh gw 3"]:
    """One row per example, ``input | reconstruction | error`` side by side: [T, GH, GW, 3].

    The error is ``|input - reconstruction| * error_gain`` per channel, clipped to 255
    (black where they agree), so the gain sets how small a difference shows.
    """
    inputs, reconstructions = np.asarray(inputs), np.asarray(reconstructions)
    if inputs.shape != reconstructions.shape:
        raise ValueError(
            f"reconstruction_grid: inputs {inputs.shape} and reconstructions "
            f"{reconstructions.shape} differ; crop both to one [B, T, H, W, 3] first."
        )
    if error_gain <= 0:
        raise ValueError(f"reconstruction_grid: error_gain must be positive, got {error_gain}.")
    difference = np.abs(inputs.astype(np.float32) - reconstructions.astype(np.float32))
    error = np.clip(np.round(difference * error_gain), 0, 255).astype(np.uint8)
    # make_grid puts its rows' examples in columns: each row is one example's three videos.
    rows = [np.stack(kinds) for kinds in zip(inputs, reconstructions, error)][:max_examples]
    return make_grid(rows, max_examples=3, pad=pad)
