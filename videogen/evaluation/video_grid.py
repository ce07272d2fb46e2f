"""Sample grids: lay out videos side by side and write them as GIF or MP4.

A grid shows one example per column and one row per kind of video (for
instance input / reconstruction / sample), so a reader compares down a column.
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


@functools.cache
def mp4_encoder() -> str:
    """Name of the best MP4 video encoder this PyAV build ships."""
    for name in _MP4_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # PyAV raises its own UnknownCodecError subclasses.
            continue
        return name
    raise RuntimeError(
        f"No MP4 encoder among {_MP4_ENCODERS} in this PyAV build; install the "
        "PyAV wheel from PyPI, which bundles FFmpeg with libx264."
    )


def write_mp4(
    path: str | os.PathLike,
    frames: UInt8[np.ndarray, "T H W 3"],
    fps: float,
    *,
    codec: str | None = None,
) -> str:
    """Writes an MP4 at high quality; returns the path.

    `codec` defaults to mp4_encoder() (H.264 if available); "libx264" and
    "mpeg4" are supported. yuv420p, which every player accepts, needs even H
    and W: an odd size is padded by repeating the last row / column.
    """
    frames = _check_frames(frames, "write_mp4")
    if fps <= 0:
        raise ValueError(f"write_mp4: fps must be positive, got {fps}.")
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
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_grid(workdir: str, stem: str, grid: np.ndarray, fps: float) -> list[str]:
    """GIF + MP4 of `grid` under <workdir>/samples; encoded locally, then copied (gs:// works)."""
    samples = epath.Path(workdir) / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, write in ((".gif", write_gif), (".mp4", write_mp4)):
            local = write(os.path.join(tmp, stem + suffix), grid, fps=fps)
            target = samples / (stem + suffix)
            target.write_bytes(epath.Path(local).read_bytes())
            paths.append(os.fspath(target))
    return paths
