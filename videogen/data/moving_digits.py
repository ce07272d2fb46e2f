"""Moving digits: the embedded default dataset (offline, CPU-sized, real digits).

Each clip shows one of the 1797 handwritten digits that scikit-learn ships
(`load_digits`: 8x8 scans with 16 grey levels), smoothly upscaled and bouncing
inside a black canvas. Example `i` of a split is a pure function of
(seed, split, i), so the split is random-access without being materialised.
Train and eval draw from disjoint digit images (a fixed 80/20 partition that
does not depend on `seed`, so no seed can leak eval digits into training).

Keys of each example:
  video     uint8 [T, H, W, 3]   white digit on black
  label     int32 []             the digit, 0..9
  caption   str                  e.g. "a 7 moves down and to the right,
                                 bouncing off the bottom wall"
  audio     float32 [S]          16 kHz mono, S = T / fps * sample_rate: a
                                 tone at DIGIT_PITCHES_HZ[label] plus a click
                                 at the time of every frame with a bounce
  image_id  int32 []             index of the digit image in `load_digits`
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from PIL import Image

from videogen.data import transforms

SPLITS = ("train", "eval")
# Bump when what example (seed, split, i) shows changes, so statistics cached from
# older clips (e.g. FVD's real features) are recomputed. 2: digits 3/4 of the
# canvas (were 3/8), speeds relative to the canvas.
VERSION = 2
# Whole-tone steps up from A3: ten pitches at least 12% apart, all below the
# click band, so the digit can be read off the spectrum.
DIGIT_PITCHES_HZ = tuple(220.0 * 2.0 ** (d / 6) for d in range(10))
CLICK_HZ = 3000.0
CLICK_SECONDS = 0.008
TONE_AMPLITUDE = 0.3
CLICK_AMPLITUDE = 0.6
TRAIN_FRACTION = 0.8
# The digit images are split once for all seeds; see the module docstring.
_PARTITION_SEED = 1797
_DEFAULT_LENGTH = {"train": 100_000, "eval": 512}
# A component of the initial velocity is named in the caption only if the
# motion is within ~67 degrees of that axis; "moves right" for a nearly
# vertical motion would be a wrong caption.
_DIRECTION_MIN_FRACTION = 0.38
# Side of the digit as a fraction of the canvas. At 3/4 a digit spans 6x6 cells of
# a tokenizer that down-samples 4x, so its shape is an arrangement of simple
# stroke tokens; at 3/8 (3x3 cells) each token holds a third of a digit, and a
# small generator learnt blobs, not digits (BUILD_NOTES.md, class-conditional
# generation).
DIGIT_FRACTION = 3 / 4
# Range of the speed in canvas sides per frame: 0.8-1.6 pixels per frame at 32x32
# (at least 1.6 at the default 64x64, so every frame moves).
SPEED_FRACTIONS = (0.025, 0.05)


@functools.cache
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """float32 [1797, 8, 8] intensities in [0, 1] and int32 [1797] labels."""
    from sklearn.datasets import load_digits  # Deferred: sklearn import is slow.

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int32)


def split_image_ids(split: str) -> np.ndarray:
    """int [N] sorted ids of the `load_digits` images a split may use."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    num_images = len(digit_images()[1])
    order = np.random.default_rng(_PARTITION_SEED).permutation(num_images)
    num_train = int(TRAIN_FRACTION * num_images)
    return np.sort(order[:num_train] if split == "train" else order[num_train:])


@functools.lru_cache(maxsize=8)
def upscaled_digits(size: int) -> np.ndarray:
    """float32 [1797, size, size] in [0, 1]: bicubic upscale of every digit."""
    images = digit_images()[0]
    out = np.empty((len(images), size, size), np.float32)
    for i, image in enumerate(images):
        out[i] = np.asarray(
            Image.fromarray(image, mode="F").resize((size, size), Image.Resampling.BICUBIC)
        )
    return np.clip(out, 0.0, 1.0)


def _trajectory(
    rng: np.random.Generator, num_frames: int, max_pos: float, resolution: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Top-left (y, x) positions [T, 2], initial velocity [2], bounces [(frame, wall)].

    The digit moves at constant speed and reflects off the canvas walls; a
    bounce is attributed to the first frame drawn after the reflection. The
    speed is a fraction of the canvas, not of the room left beside the digit,
    so large digits still move visibly (and bounce more often).
    """
    pos = rng.uniform(0.0, max_pos, size=2)
    speed = rng.uniform(*SPEED_FRACTIONS) * resolution
    angle = rng.uniform(0.0, 2 * np.pi)
    velocity = speed * np.array([np.sin(angle), np.cos(angle)])
    initial_velocity = velocity.copy()
    positions = [pos.copy()]
    bounces = []
    low_walls, high_walls = ("top", "left"), ("bottom", "right")
    for frame in range(1, num_frames):
        pos = pos + velocity
        for axis in range(2):
            # A step longer than the room reflects more than once.
            while not 0 <= pos[axis] <= max_pos:
                if pos[axis] < 0:
                    pos[axis] = -pos[axis]
                    bounces.append((frame, low_walls[axis]))
                else:
                    pos[axis] = 2 * max_pos - pos[axis]
                    bounces.append((frame, high_walls[axis]))
                velocity[axis] = -velocity[axis]
        positions.append(pos.copy())
    return np.stack(positions), initial_velocity, bounces


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def motion_caption(label: int, velocity: np.ndarray, bounces: list[tuple[int, str]]) -> str:
    """'a 7 moves down and to the right, bouncing off the bottom wall'.

    `velocity` is (dy, dx) in image coordinates (y grows downwards); walls are
    listed in the order they are first hit.
    """
    dy, dx = velocity
    speed = float(np.hypot(dy, dx))
    parts = []
    if abs(dy) >= _DIRECTION_MIN_FRACTION * speed:
        parts.append("down" if dy > 0 else "up")
    if abs(dx) >= _DIRECTION_MIN_FRACTION * speed:
        parts.append("to the right" if dx > 0 else "to the left")
    walls = list(dict.fromkeys(wall for _, wall in bounces))
    if walls:
        contact = f"bouncing off the {_join(walls)} wall{'s' if len(walls) > 1 else ''}"
    else:
        contact = "without touching a wall"
    return f"a {label} moves {' and '.join(parts)}, {contact}"


def _click(sample_rate: int) -> np.ndarray:
    t = np.arange(int(CLICK_SECONDS * sample_rate)) / sample_rate
    return CLICK_AMPLITUDE * np.exp(-t / (CLICK_SECONDS / 4)) * np.sin(2 * np.pi * CLICK_HZ * t)


def soundtrack(
    label: int, bounce_frames: list[int], *, num_frames: int, fps: float, sample_rate: int
) -> np.ndarray:
    """float32 [round(num_frames / fps * sample_rate)]: digit tone + bounce clicks.

    Frame k is shown during [k / fps, (k + 1) / fps); its click starts at k / fps.
    """
    num_samples = round(num_frames / fps * sample_rate)
    t = np.arange(num_samples) / sample_rate
    audio = TONE_AMPLITUDE * np.sin(2 * np.pi * DIGIT_PITCHES_HZ[label] * t)
    # 5 ms ramps: a tone that starts or stops abruptly is itself a click.
    ramp = min(int(0.005 * sample_rate), num_samples // 2)
    envelope = np.ones(num_samples)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp, endpoint=False)
    envelope[num_samples - ramp :] = np.linspace(1.0, 0.0, ramp)
    audio *= envelope
    click = _click(sample_rate)
    for frame in bounce_frames:
        start = round(frame / fps * sample_rate)
        stop = min(start + len(click), num_samples)
        audio[start:stop] += click[: stop - start]
    return audio.astype(np.float32)


class Motion(NamedTuple):
    """What example i shows: digit image, label, top-left (y, x) positions [T, 2],
    initial velocity (dy, dx) in pixels/frame, and bounces [(frame, wall)]."""

    image_id: int
    label: int
    positions: np.ndarray
    velocity: np.ndarray
    bounces: list[tuple[int, str]]


class MovingDigits:
    """Random-access source of bouncing handwritten digits; keys in the module docstring.

    Args:
      split: "train" or "eval".
      num_examples: virtual length of the split (default 100_000 train, 512 eval).
      num_frames, resolution: clip shape [num_frames, resolution, resolution, 3].
      digit_size: side of the upscaled digit (default DIGIT_FRACTION of the canvas).
      frame_stride: show every frame_stride-th step of the motion, as striding a
        decoded video would (faster apparent motion, same trajectory).
      fps, sample_rate: frame rate of the shown frames and audio rate.
      seed: changes every trajectory and digit choice, never the image partition.
    """

    keys = ("video", "label", "caption", "audio", "image_id")
    skipped_files = 0
    short_files = 0

    def __init__(
        self,
        split: str = "train",
        *,
        num_examples: int | None = None,
        num_frames: int = 17,
        resolution: int = 64,
        digit_size: int | None = None,
        frame_stride: int = 1,
        fps: float = 8.0,
        sample_rate: int = 16_000,
        seed: int = 0,
    ):
        self.image_ids = split_image_ids(split)
        self.split = split
        self.num_examples = _DEFAULT_LENGTH[split] if num_examples is None else int(num_examples)
        self.num_frames = num_frames
        self.resolution = resolution
        self.digit_size = digit_size or max(4, round(resolution * DIGIT_FRACTION))
        if not 0 < self.digit_size < resolution:
            raise ValueError(
                f"digit_size must be in (0, resolution={resolution}), got {self.digit_size}"
            )
        transforms.check_frame_stride(frame_stride)
        self.frame_stride = frame_stride
        self.fps = fps
        self.sample_rate = sample_rate
        self.seed = seed

    def __len__(self) -> int:
        return self.num_examples

    def motion(self, index: int) -> Motion:
        """The digit image and trajectory drawn in example `index`."""
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        rng = np.random.default_rng((self.seed, SPLITS.index(self.split), int(index)))
        image_id = int(self.image_ids[rng.integers(len(self.image_ids))])
        stride = self.frame_stride
        positions, velocity, bounces = _trajectory(
            rng,
            (self.num_frames - 1) * stride + 1,
            float(self.resolution - self.digit_size),
            self.resolution,
        )
        # A bounce at step s is first visible in shown frame ceil(s / stride).
        shown_bounces = [(-(-step // stride), wall) for step, wall in bounces]
        return Motion(
            image_id,
            int(digit_images()[1][image_id]),
            positions[::stride],
            velocity * stride,
            shown_bounces,
        )

    def __getitem__(self, index: int) -> dict:
        motion = self.motion(index)
        digit = upscaled_digits(self.digit_size)[motion.image_id]
        size = self.digit_size
        frames = np.zeros((self.num_frames, self.resolution, self.resolution), np.float32)
        for frame, (y, x) in zip(frames, np.rint(motion.positions).astype(int)):
            frame[y : y + size, x : x + size] = digit
        video = np.repeat(np.rint(frames * 255).astype(np.uint8)[..., None], 3, axis=-1)
        audio = soundtrack(
            motion.label,
            [frame for frame, _ in motion.bounces],
            num_frames=self.num_frames,
            fps=self.fps,
            sample_rate=self.sample_rate,
        )
        return {
            "video": video,
            "label": np.int32(motion.label),
            "caption": motion_caption(motion.label, motion.velocity, motion.bounces),
            "audio": audio,
            "image_id": np.int32(motion.image_id),
        }
