"""Numpy clip operations on uint8 videos [T, H, W, C].

Frames stay uint8 on the host (4x less host memory and host-to-device traffic
than float32); the trainer converts to float on device.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_BILINEAR = Image.Resampling.BILINEAR


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def resize_video(video: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of every frame: uint8 [T, H, W, C] -> uint8 [T, h, w, C].

    PIL's bilinear filter widens its support when shrinking, so downscaling is
    antialiased (plain 4-tap bilinear would alias fine textures). Shrinking by
    more than 2x first box-reduces by an integer factor (`reducing_gap`): ~3x
    faster on HD frames, within 0.5/255 mean of the exact filter.
    """
    h, w = _pair(size)
    if video.shape[1:3] == (h, w):
        return video
    channels = video.shape[-1]
    out = np.empty((video.shape[0], h, w, channels), np.uint8)
    for t, frame in enumerate(video):
        if channels in (1, 3):
            image = Image.fromarray(np.ascontiguousarray(frame if channels == 3 else frame[..., 0]))
            out[t] = np.asarray(image.resize((w, h), _BILINEAR, reducing_gap=2.0)).reshape(h, w, -1)
        else:
            # PIL has no mode for other channel counts: resize each plane alone.
            for c in range(channels):
                plane = Image.fromarray(np.ascontiguousarray(frame[..., c]))
                out[t, ..., c] = np.asarray(plane.resize((w, h), _BILINEAR, reducing_gap=2.0))
    return out


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with min(h, w) == short_side and the aspect of (height, width)."""
    scale = short_side / min(height, width)
    if height <= width:
        return short_side, max(short_side, round(width * scale))
    return max(short_side, round(height * scale)), short_side


def resize_short_side(video: np.ndarray, short_side: int) -> np.ndarray:
    """Resizes [T, H, W, C] so that min(H, W) == short_side, keeping the aspect."""
    return resize_video(video, short_side_size(*video.shape[1:3], short_side))


def center_crop(video: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Central [T, h, w, C] window of [T, H, W, C]; needs h <= H and w <= W."""
    h, w = _pair(size)
    height, width = video.shape[1:3]
    if h > height or w > width:
        raise ValueError(f"crop {(h, w)} larger than frames {(height, width)}")
    top, left = (height - h) // 2, (width - w) // 2
    return video[:, top : top + h, left : left + w]


def random_crop(
    video: np.ndarray, size: int | tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Uniformly placed [T, h, w, C] window of [T, H, W, C], the same for all frames."""
    h, w = _pair(size)
    height, width = video.shape[1:3]
    if h > height or w > width:
        raise ValueError(f"crop {(h, w)} larger than frames {(height, width)}")
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return video[:, top : top + h, left : left + w]


def check_frame_stride(frame_stride: int) -> None:
    """Raises unless `frame_stride` (every k-th frame of a source) is at least 1."""
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")


def clip_span(num_frames: int, frame_stride: int) -> int:
    """Number of source frames a clip of `num_frames` at `frame_stride` covers."""
    return (num_frames - 1) * frame_stride + 1


def sample_clip_start(num_available: int, span: int, rng: np.random.Generator | None = None) -> int:
    """First frame of a clip covering `span` frames of a `num_available`-frame video.

    Uniform over all valid starts with `rng`, the centred start without (eval).
    Returns 0 when the video is shorter than the span.
    """
    room = max(num_available - span, 0)
    return int(rng.integers(0, room + 1)) if rng is not None else room // 2


def window_start(num_available: int, span: int, window: int, num_windows: int) -> int:
    """Start of window `window` of `num_windows` evenly spaced clips (eval's multi-view sampling).

    One window is the centred clip; more spread from the first to the last
    possible start (e.g. MAGVIT's K600 protocol: 2 temporal windows per video).
    """
    room = max(num_available - span, 0)
    if num_windows == 1:
        return room // 2
    return round(window * room / (num_windows - 1))


def square_crop_at(video: np.ndarray, crop: int, num_crops: int) -> np.ndarray:
    """Square crop `crop` of `num_crops` evenly spaced along the long side (1 = centred)."""
    height, width = video.shape[1:3]
    side = min(height, width)
    if num_crops == 1:
        return center_crop(video, side)
    offset = round(crop * (max(height, width) - side) / (num_crops - 1))
    if height > width:
        return video[:, offset : offset + side]
    return video[:, :, offset : offset + side]


def clip_frame_indices(
    start: int, num_frames: int, frame_stride: int, num_available: int
) -> np.ndarray:
    """int [num_frames] frame indices; past the end the last frame is repeated.

    Repeating the last frame (rather than skipping short videos) keeps every
    file usable and the clip length fixed; the tail of a short clip is static.
    """
    indices = start + frame_stride * np.arange(num_frames)
    return np.minimum(indices, num_available - 1)


def crop_and_resize(
    video: np.ndarray, resolution: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """uint8 [T, H, W, C] -> [T, resolution, resolution, C].

    Same result as resizing the short side to `resolution` and then cropping,
    but crops the min(H, W) square first so that only the kept pixels are
    resized. Random placement with `rng` (train), centred without (eval).
    """
    side = min(video.shape[1:3])
    square = random_crop(video, side, rng) if rng is not None else center_crop(video, side)
    return resize_video(square, resolution)


def augment(
    video: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool = False,
    max_zoom: float = 1.0,
    permute_channels: bool = False,
    colour_jitter: float = 0.0,
) -> tuple[np.ndarray, bool]:
    """Train-time augmentation of uint8 [T, H, W, C], the same for every frame.

    A zoom-in by up to `max_zoom` (a window whose sides are a fraction drawn
    uniformly from [1 / max_zoom, 1] of the clip's, at a random place, resized
    back to H x W: finer detail is no sharper than at the clip size), a mirror
    image with probability 1/2 (`flip`), and the colour channels in one of their
    C! orders (`permute_channels`: every hue the training data has, in every
    other colour). `colour_jitter` s > 0 then changes the white balance and
    the saturation: each channel is scaled by its own gain and the distance of
    every pixel from its grey level by one factor, all drawn log-uniformly from
    [1 / (1 + s), 1 + s] (a few photographs teach few colours otherwise: a
    tokenizer trained on them shifts an unseen sky's blue towards grey).
    Returns the clip and whether it was mirrored, so a caption that says left
    or right can follow.
    """
    if max_zoom < 1.0:
        raise ValueError(
            f"max_zoom={max_zoom} (config.data.augment.max_zoom); it is the largest zoom-in "
            "factor, so >= 1 (1 turns the zoom off)."
        )
    if colour_jitter < 0.0:
        raise ValueError(
            f"colour_jitter={colour_jitter} (config.data.augment.colour_jitter); gains and the "
            "saturation factor are drawn from [1 / (1 + s), 1 + s], so s >= 0 (0 turns it off)."
        )
    height, width = video.shape[1:3]
    if max_zoom > 1.0:
        scale = rng.uniform(1.0 / max_zoom, 1.0)
        window = (max(1, round(height * scale)), max(1, round(width * scale)))
        video = resize_video(random_crop(video, window, rng), (height, width))
    mirrored = bool(flip and rng.random() < 0.5)
    if mirrored:
        video = video[:, :, ::-1]
    if permute_channels:
        video = video[..., rng.permutation(video.shape[-1])]
    if colour_jitter > 0.0:
        video = _jitter_colours(video, rng, colour_jitter)
    return np.ascontiguousarray(video), mirrored


def _jitter_colours(video: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    """uint8 [T, H, W, C] with per-channel gains and a saturation factor drawn
    log-uniformly from [1 / (1 + s), 1 + s]; grey is the mean over channels."""
    bound = np.log1p(s)
    gains = np.exp(rng.uniform(-bound, bound, size=video.shape[-1])).astype(np.float32)
    saturation = np.float32(np.exp(rng.uniform(-bound, bound)))
    x = video.astype(np.float32) * gains
    grey = x.mean(axis=-1, keepdims=True)
    x = grey + saturation * (x - grey)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def sample_clip(
    frames: np.ndarray,
    *,
    num_frames: int,
    frame_stride: int,
    resolution: int,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Temporal window + square crop + resize of a decoded video.

    Args:
      frames: uint8 [N, H, W, C].
      rng: random start and crop (train); None for the centred clip (eval).

    Returns:
      uint8 [num_frames, resolution, resolution, C].
    """
    start = sample_clip_start(len(frames), clip_span(num_frames, frame_stride), rng)
    clip = frames[clip_frame_indices(start, num_frames, frame_stride, len(frames))]
    return crop_and_resize(clip, resolution, rng)
