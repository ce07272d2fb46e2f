"""Colour shapes: flat-coloured shapes moving over smooth colour gradients (generated, offline).

A training aid for tokenizers, not content to report on: every colour is drawn
uniformly from the RGB cube, in flat regions and smooth gradients, which is what a
tokenizer must return level for level and what the embedded data covers thinly (the
digits are white on black; 4 of real_clips' 12 training sources are grey and 2 nearly
so). The quickstart's tokenizer trained without it returned unseen colours with casts
of 10-50 levels (BUILD_NOTES.md, issue 14). Example `i` of a split is a pure function of
(seed, split, i); the eval split draws other colours, shapes and motions.

Keys of each example:
  video     uint8 [T, H, W, 3]   1-3 ellipses and rectangles, each of one colour,
                                 moving in straight lines over a linear gradient
                                 between two colours (nearly flat in half the clips)
                                 that drifts like a slow pan
  label     int32 []             -1: no class
  caption   str                  e.g. "2 coloured shapes moving over a colour gradient"
"""

from __future__ import annotations

import numpy as np

from videogen.data import transforms

SPLITS = ("train", "eval")
# Bump when what example (seed, split, i) shows changes (cache keys of statistics).
VERSION = 1
_DEFAULT_LENGTH = {"train": 100_000, "eval": 512}
# Drawn apart from other generated sources' streams for the same (seed, split, index).
_STREAM = 0xC5
MAX_SHAPES = 3
# Shape half-sizes and speeds as fractions of the canvas side (speed per frame).
HALF_SIZE = (0.1, 0.3)
SPEED = (0.0, 0.05)
# Largest difference per channel between the two ends of a "nearly flat" background ([0, 1]).
FLAT_STEP = 0.1


def _canvas(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in canvas units [0, 1): (y [H, 1], x [1, W])."""
    c = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    return c[:, None], c[None, :]


def _coverage(
    y: np.ndarray, x: np.ndarray, centre: np.ndarray, half: np.ndarray, ellipse: bool, res: int
) -> np.ndarray:
    """float32 [H, W] in [0, 1]: how much of each pixel the shape covers (one-pixel ramp)."""
    dy, dx = (y - centre[0]) / half[0], (x - centre[1]) / half[1]
    if ellipse:
        inside = np.sqrt(dy**2 + dx**2) - 1.0
    else:
        inside = np.maximum(np.abs(dy), np.abs(dx)) - 1.0
    # Distance to the edge in pixels, roughly: the normalised excess times the half-size.
    pixels = inside * float(min(half)) * res
    return np.clip(0.5 - pixels, 0.0, 1.0).astype(np.float32)


class ColourShapes:
    """Random-access source of coloured shapes over gradients; keys in the module docstring."""

    keys = ("video", "label", "caption")
    skipped_files = 0
    short_files = 0

    def __init__(
        self,
        split: str = "train",
        *,
        num_frames: int = 17,
        resolution: int = 64,
        frame_stride: int = 1,
        num_examples: int | None = None,
        seed: int = 0,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        transforms.check_frame_stride(frame_stride)
        self.split = split
        self.num_frames = num_frames
        self.resolution = resolution
        # A stride moves everything `frame_stride` times as far between frames.
        self.frame_stride = frame_stride
        self.num_examples = _DEFAULT_LENGTH[split] if num_examples is None else int(num_examples)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        rng = np.random.default_rng((self.seed, _STREAM, SPLITS.index(self.split), int(index)))
        res, frames = self.resolution, self.num_frames
        y, x = _canvas(res)
        t = np.arange(frames, dtype=np.float32)[:, None, None] * self.frame_stride

        # Background: colour c0 at one end of a direction, c1 at the other, drifting.
        c0 = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        if rng.uniform() < 0.5:
            c1 = np.clip(c0 + rng.uniform(-FLAT_STEP, FLAT_STEP, 3), 0.0, 1.0).astype(np.float32)
        else:
            c1 = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        direction = np.array([np.sin(angle), np.cos(angle)], np.float32)
        drift = rng.uniform(*SPEED) * np.float32(rng.choice([-1.0, 1.0]))
        along = (y - 0.5) * direction[0] + (x - 0.5) * direction[1]  # [H, W] in [-0.71, 0.71]
        ramp = np.clip(along[None] / np.sqrt(2.0) + 0.5 + drift * t, 0.0, 1.0)  # [T, H, W]
        video = c0 + (c1 - c0) * ramp[..., None]  # [T, H, W, 3]

        count = int(rng.integers(1, MAX_SHAPES + 1))
        for _ in range(count):
            colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
            half = rng.uniform(*HALF_SIZE, 2).astype(np.float32)
            start = rng.uniform(0.0, 1.0, 2).astype(np.float32)
            heading = rng.uniform(0.0, 2.0 * np.pi)
            velocity = rng.uniform(*SPEED) * np.array([np.sin(heading), np.cos(heading)])
            ellipse = bool(rng.uniform() < 0.5)
            for f in range(frames):
                centre = start + velocity.astype(np.float32) * float(t[f, 0, 0])
                alpha = _coverage(y, x, centre, half, ellipse, res)[..., None]
                video[f] = video[f] * (1.0 - alpha) + colour * alpha
        plural = "s" if count > 1 else ""
        return {
            "video": np.round(video * 255.0).astype(np.uint8),
            "label": np.int32(-1),
            "caption": f"{count} coloured shape{plural} moving over a colour gradient",
        }
