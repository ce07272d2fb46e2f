"""The one entry point of the input pipeline: a source by name, then a grain iterator.

Every source yields dicts with at least
  video    uint8 [T, H, W, 3]
  label    int32 []
  caption  str
moving_digits adds `audio` float32 [S] and `image_id` int32 [], and real_clips
adds `source` str (the video or photograph a clip shows, for per-source reports).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from absl import flags
import grain

from videogen.data import moving_digits
from videogen.data.colour_shapes import ColourShapes
from videogen.data.real_clips import RealClips
from videogen.data.tfds_source import TfdsSource
from videogen.data.video_folder import SHORT_FILES, VideoFolder

KNOWN_NAMES = (
    "moving_digits",
    "colour_shapes",
    "real_clips",
    "real_clips_same_sources",
    "video_folder",
    "tfds:<name>",
)
SPLITS = ("train", "eval")


class VideoSource(Protocol):
    """Random-access examples; `keys` names what each example dict holds."""

    keys: tuple[str, ...]
    skipped_files: int
    # Files shorter than a clip (padded or skipped); 0 for generated and bundled data.
    short_files: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def make_source(
    name: str,
    split: str,
    *,
    num_frames: int,
    resolution: int,
    frame_stride: int = 1,
    seed: int = 0,
    path: str | None = None,
    num_examples: int | None = None,
    video_key: str = "video",
    temporal_windows: int = 1,
    spatial_crops: int = 1,
    with_audio: bool = False,
    short_files: str = "pad",
) -> VideoSource:
    """Builds the source `name` for `split` ("train" or "eval").

    Args:
      name: one of KNOWN_NAMES; "tfds:ucf101" reads TFDS dataset ucf101.
      num_frames, resolution, frame_stride: clips are uint8
        [num_frames, resolution, resolution, 3], every frame_stride-th frame.
      path: the folder for "video_folder"; the TFDS data_dir for "tfds:...".
      num_examples: length of the split; each source has a default.
      video_key: the video feature of a TFDS dataset.
      temporal_windows, spatial_crops: evenly spaced eval views per video
        (evaluation protocols' real-clip sampling); "video_folder" only.
      with_audio: "video_folder" also decodes each clip's audio track (`audio`,
        `has_audio`); moving_digits always yields its soundtrack.
      short_files: "pad" or "skip" the files of a "video_folder" shorter than a clip
        (videogen/data/video_folder.py); checked for every name, so a typo never waits
        for the day the data is a folder.

    "real_clips_same_sources" is the eval split of real_clips' cross-check: the training
    sources' held-out frames and new camera paths (real_clips.py), for eval only.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if short_files not in SHORT_FILES:
        raise ValueError(
            f"short_files={short_files!r} (config.data.short_files); use one of "
            f"{SHORT_FILES}: 'pad' repeats the last frame of a video file shorter than a "
            "clip, 'skip' leaves the file out."
        )
    if temporal_windows * spatial_crops > 1 and name != "video_folder":
        raise ValueError(
            f"dataset {name!r} has no multi-view eval sampling (temporal_windows="
            f"{temporal_windows}, spatial_crops={spatial_crops}); only 'video_folder' has it. "
            "Use 1 x 1 views (for an evaluation protocol: eval.frechet.real_temporal_windows=1 "
            "and eval.frechet.real_spatial_crops=1) or read the real clips from a video folder."
        )
    common = dict(
        num_frames=num_frames, resolution=resolution, num_examples=num_examples, seed=seed
    )
    if name == "moving_digits":
        return moving_digits.MovingDigits(split, frame_stride=frame_stride, **common)
    if name == "colour_shapes":
        return ColourShapes(split, frame_stride=frame_stride, **common)
    if name == "real_clips":
        return RealClips(split, frame_stride=frame_stride, **common)
    if name == "real_clips_same_sources":
        if split != "eval":
            raise ValueError(
                f"dataset 'real_clips_same_sources' has no {split!r} split: it is the held-out "
                "cross-check of real_clips' training sources, for evaluation only; train on "
                "'real_clips'."
            )
        return RealClips("eval_same_sources", frame_stride=frame_stride, **common)
    if name == "video_folder":
        if path is None:
            raise ValueError("dataset 'video_folder' needs path=<folder of video files>.")
        return VideoFolder(
            path,
            split,
            frame_stride=frame_stride,
            temporal_windows=temporal_windows,
            spatial_crops=spatial_crops,
            with_audio=with_audio,
            short_files=short_files,
            **common,
        )
    if name.startswith("tfds:") and len(name) > len("tfds:"):
        return TfdsSource(
            name[len("tfds:") :],
            split,
            frame_stride=frame_stride,
            data_dir=path,
            video_key=video_key,
            **common,
        )
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_NAMES)}.")


class SelectFields:
    """Keeps `fields` of an example dict (a class, not a lambda, so workers can pickle it)."""

    def __init__(self, fields: Sequence[str]):
        self.fields = tuple(fields)

    def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in self.fields if k not in example]
        if missing:
            raise KeyError(f"fields {missing} are not in the example; it has {sorted(example)}.")
        return {k: example[k] for k in self.fields}


class ProcessRows(grain.MapDataset):
    """This process's rows of every global batch: block `process_index` of each run of
    `global_batch_size` examples, so that the processes' batches stacked in process order
    are the global batch one process would read, row for row (per-row random draws, such
    as COMMIT's task per example, then match a single-process run)."""

    def __init__(
        self,
        parent: grain.MapDataset,
        global_batch_size: int,
        process_index: int,
        process_count: int,
    ):
        super().__init__(parent)
        self._rows = global_batch_size // process_count
        self._global, self._first = global_batch_size, process_index * self._rows
        self._length = len(parent) // global_batch_size * self._rows

    def __len__(self) -> int:
        return self._length

    def _parent_index(self, index: int) -> int:
        batch, row = divmod(index, self._rows)
        return batch * self._global + self._first + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._parent_index(index)]

    def __str__(self) -> str:
        return f"ProcessRows(rows {self._first}..{self._first + self._rows} of {self._global})"


def make_iterator(
    source: VideoSource,
    *,
    global_batch_size: int,
    shuffle: bool,
    seed: int,
    num_epochs: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    fields: Sequence[str] = ("video", "label"),
    worker_count: int = 0,
    read_threads: int = 4,
) -> grain.DatasetIterator:
    """Batches of this process's share of `source`, with checkpointable state.

    Order: shuffle (reshuffled every epoch) -> repeat(num_epochs; None = forever)
    -> this process's block of rows of every global batch (`ProcessRows`), so
    processes read disjoint examples -> batch of global_batch_size //
    process_count, the last partial batch dropped. Batches are dicts of numpy arrays: 'video' uint8
    [B, T, H, W, 3], 'label' int32 [B], 'caption' str [B], and where the source
    has it 'audio' float32 [B, S].

    `get_state()` / `set_state()` of the returned iterator resume exactly;
    grain.checkpoint.CheckpointSave/CheckpointRestore store them with orbax.
    worker_count > 0 decodes in that many processes; read_threads threads per
    process read examples.
    """
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by "
            f"process_count={process_count}; pick a multiple of {process_count}."
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
    missing = [f for f in fields if f not in source.keys]
    if missing:
        raise ValueError(
            f"fields {missing} are not produced by {type(source).__name__}; "
            f"it yields {list(source.keys)}."
        )
    batch_size = global_batch_size // process_count
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if process_count > 1:
        ds = ProcessRows(ds, global_batch_size, process_index, process_count)
    ds = ds.map(SelectFields(fields))
    # A buffer of two batches keeps the reader busy without holding hundreds of
    # clips (grain's default of 500 elements is ~400 MB at 17x128x128).
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch_size)
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():
            raise ValueError(
                f"worker_count={worker_count} starts grain worker processes, which read "
                "absl flags; run under absl.app.run (or call "
                "absl.flags.FLAGS.mark_as_parsed()) first, or use worker_count=0."
            )
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(ds)
