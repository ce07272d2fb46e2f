"""A folder of the user's video files as a random-access source.

The folder is searched recursively for VIDEO_EXTENSIONS. An optional
`labels.csv` at its root, rows `relative_path,label[,caption]` (a header row
is allowed), then defines the dataset: only the files it lists are used.
Without it, the label is the index of the file's directory among the sorted
directories that hold videos (class-per-folder layout; 0 for a flat folder)
and the caption is empty.

Every file is probed at construction; unreadable ones are skipped with a
warning and counted in `skipped_files`. A file that fails later, at read
time, is counted too and replaced by the next readable file in sorted order,
so the replacement is deterministic. The folder has no split structure of its
own: "train" draws clip starts and crops at random, "eval" takes the centred
clip, or `temporal_windows x spatial_crops` evenly spaced views of each video
(the real-clip sampling of evaluation protocols, e.g. MAGVIT's K600: 2 x 3);
point train and eval at different folders.

A file shorter than the clip span ((num_frames - 1) * frame_stride + 1
frames: a short video, or a still image renamed .mp4, which decodes as one
frame) is counted in `short_files` and warned about once. With
short_files="pad" (the default) its clips repeat its last frame, as do clips
of a file that decodes fewer frames than its header declares; with "skip" it
is left out, like an unreadable file.

With `with_audio`, each clip also carries the file's first audio track over
the time its frames cover: from the first frame's timestamp for
num_frames * frame_stride / frame_rate seconds (the clip shows every
frame_stride-th frame of a frame_rate video), mixed to mono and resampled to
`sample_rate`. Files without an audio track give silent clips with has_audio
False and are counted in `files_without_audio`; a file whose audio fails to
decode at read time is replaced like one whose frames fail. Audio is decoded
only with `with_audio`, so clips of video alone cost what they did.

Keys of each example:
  video      uint8 [num_frames, resolution, resolution, 3]
  label      int32 []
  caption    str
  audio      float32 [S], S = round(num_frames * frame_stride / frame_rate * sample_rate)
             (with_audio only; S differs between files of different frame rates)
  has_audio  bool [] (with_audio only)
"""

from __future__ import annotations

import csv
import logging
import os
import threading

import numpy as np

from videogen.data import transforms
from videogen.data.video_decode import (
    VideoDecodeError,
    probe_media,
    read_audio,
    read_frames_and_times,
)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v")
LABELS_FILE = "labels.csv"
SPLITS = ("train", "eval")
SHORT_FILES = ("pad", "skip")


def find_videos(root: str) -> list[str]:
    """Sorted paths, relative to `root`, of all files with a video extension below it."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in files:
            if name.lower().endswith(VIDEO_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def read_labels_file(path: str) -> dict[str, tuple[int, str]]:
    """{relative_path: (label, caption)} from a `relative_path,label[,caption]` csv."""
    annotations = {}
    with open(path, newline="", encoding="utf-8") as f:
        for line_number, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise ValueError(
                    f"{path}:{line_number}: expected `relative_path,label[,caption]`, got {row!r}"
                )
            try:
                label = int(row[1])
            except ValueError:
                if line_number == 1:  # A header row.
                    continue
                raise ValueError(
                    f"{path}:{line_number}: label must be an integer, got {row[1]!r}"
                ) from None
            # Unquoted commas in a caption split it into more columns; rejoin them.
            caption = ",".join(row[2:]).strip()
            annotations[os.path.normpath(row[0].strip())] = (label, caption)
    return annotations


class VideoFolder:
    """Random-access clips of the videos under `path`; behaviour in the module docstring.

    Args:
      path: folder searched recursively.
      split: "train" (random start and crop) or "eval" (centred).
      num_examples: virtual length; example i reads file (i // views) % num_files.
        Defaults to the number of readable files times the views per file.
      temporal_windows, spatial_crops: eval only; views per file, example i
        being view i % views (window-major).
      with_audio: add `audio` and `has_audio` to each example (decodes the
        audio track; off, the audio is never read).
      sample_rate: audio samples per second of `audio`.
      short_files: "pad" or "skip" files shorter than the clip span (module docstring).
    """

    keys = ("video", "label", "caption")
    audio_keys = ("audio", "has_audio")

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        *,
        num_frames: int = 17,
        resolution: int = 64,
        frame_stride: int = 1,
        num_examples: int | None = None,
        seed: int = 0,
        temporal_windows: int = 1,
        spatial_crops: int = 1,
        with_audio: bool = False,
        sample_rate: int = 16_000,
        short_files: str = "pad",
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if short_files not in SHORT_FILES:
            raise ValueError(
                f"short_files must be one of {SHORT_FILES}, got {short_files!r}: 'pad' repeats "
                "the last frame of a file shorter than the clip span, 'skip' leaves it out."
            )
        if temporal_windows < 1 or spatial_crops < 1:
            raise ValueError(
                f"temporal_windows={temporal_windows} and spatial_crops={spatial_crops} must be >= 1."
            )
        if split == "train" and temporal_windows * spatial_crops > 1:
            raise ValueError(
                "temporal_windows/spatial_crops select fixed eval views; the train split samples "
                "windows and crops at random. Use split='eval' or 1 x 1."
            )
        self.temporal_windows, self.spatial_crops = temporal_windows, spatial_crops
        self.views = temporal_windows * spatial_crops
        root = os.fspath(path)
        expected = (
            f"expected a folder holding video files ({', '.join(VIDEO_EXTENSIONS)}), "
            f"searched recursively, optionally with a {LABELS_FILE} of "
            "`relative_path,label[,caption]` rows"
        )
        if not os.path.isdir(root):
            raise ValueError(
                f"video folder {root!r} does not exist or is not a directory; {expected}."
            )
        self.root = root
        self.split = split
        self.num_frames = num_frames
        self.resolution = resolution
        self.frame_stride = frame_stride
        self.seed = seed
        self.with_audio = with_audio
        self.sample_rate = sample_rate
        # An instance attribute: the audio fields exist only when produced.
        self.keys = VideoFolder.keys + (VideoFolder.audio_keys if with_audio else ())
        self.skipped_files = 0
        self.short_files = 0
        self._bad: set[int] = set()
        self._lock = threading.Lock()

        candidates = find_videos(root)
        labels_path = os.path.join(root, LABELS_FILE)
        annotations = read_labels_file(labels_path) if os.path.exists(labels_path) else None
        if annotations is not None:
            unlisted = len(set(candidates) - set(annotations))
            if unlisted:
                logging.warning(
                    "%d video files under %s are not listed in %s and are not used.",
                    unlisted,
                    root,
                    labels_path,
                )
            candidates = sorted(annotations)
        if not candidates:
            raise ValueError(f"video folder {root!r} holds no video files; {expected}.")

        self.files: list[str] = []
        self.frame_counts: list[int] = []
        self.frame_rates: list[float] = []
        self.has_audio: list[bool] = []
        span = transforms.clip_span(num_frames, frame_stride)
        for relative in candidates:
            try:
                info = probe_media(os.path.join(root, relative))
            except (VideoDecodeError, OSError) as e:
                logging.warning("skipping unreadable video %s: %s", os.path.join(root, relative), e)
                self.skipped_files += 1
                continue
            if with_audio and info.frame_rate <= 0:
                logging.warning(
                    "skipping %s: it declares no frame rate, so the time its clips cover "
                    "(and their audio) is unknown; re-encode it with a constant rate "
                    "(ffmpeg -r) or use with_audio=False.",
                    os.path.join(root, relative),
                )
                self.skipped_files += 1
                continue
            if info.num_frames < span:
                self.short_files += 1
                logging.warning(
                    "%s has %d frame(s), fewer than the %d that a clip of %d frames at stride "
                    "%d spans (a still image decodes as 1 frame); %s.",
                    os.path.join(root, relative),
                    info.num_frames,
                    span,
                    num_frames,
                    frame_stride,
                    "left out (short_files='skip')"
                    if short_files == "skip"
                    else "its clips repeat its last frame (short_files='skip' leaves it out)",
                )
                if short_files == "skip":
                    continue
            self.files.append(relative)
            self.frame_counts.append(info.num_frames)
            self.frame_rates.append(info.frame_rate)
            self.has_audio.append(info.has_audio)
        if not self.files and self.short_files and short_files == "skip":
            raise ValueError(
                f"video folder {root!r} has no video of at least {span} frames: "
                f"{self.short_files} of {len(candidates)} files are shorter than a clip; "
                "use short_files='pad', or fewer frames or a smaller frame stride."
            )
        if not self.files:
            raise ValueError(
                f"video folder {root!r} has no readable video: all {len(candidates)} "
                f"files failed to decode; {expected}."
            )

        if annotations is not None:
            self.labels = [annotations[f][0] for f in self.files]
            self.captions = [annotations[f][1] for f in self.files]
        else:
            directories = sorted({os.path.dirname(f) for f in self.files})
            self.labels = [directories.index(os.path.dirname(f)) for f in self.files]
            self.captions = [""] * len(self.files)
        self.num_examples = (
            len(self.files) * self.views if num_examples is None else int(num_examples)
        )
        self.files_without_audio = self.has_audio.count(False)
        # Samples of each file's clip audio; frame rates are known only with_audio.
        self.audio_lengths = (
            [round(num_frames * frame_stride / rate * sample_rate) for rate in self.frame_rates]
            if with_audio
            else []
        )
        if with_audio:
            self._check_audio(root)

    def __len__(self) -> int:
        return self.num_examples

    @property
    def num_videos(self) -> int:
        """Distinct files the examples read: a file's views are consecutive examples, and
        past len(files) x views examples the files repeat."""
        return min(len(self.files), -(-self.num_examples // self.views))

    def _check_audio(self, root: str) -> None:
        if self.files_without_audio:
            logging.warning(
                "%d of %d videos under %s have no audio track; their clips get silent "
                "audio and has_audio=False.",
                self.files_without_audio,
                len(self.files),
                root,
            )
        lengths = sorted(set(self.audio_lengths))
        if len(lengths) > 1:
            rates = sorted(set(self.frame_rates))
            logging.warning(
                "videos under %s have frame rates %s, so a clip's audio has %s samples "
                "depending on the file; batches need one length: re-encode to one frame "
                "rate (ffmpeg -r) or batch one example at a time.",
                root,
                rates,
                lengths,
            )

    def _read_audio(self, file_index: int, start_seconds: float) -> dict:
        num_samples = self.audio_lengths[file_index]
        if not self.has_audio[file_index]:
            return {"audio": np.zeros(num_samples, np.float32), "has_audio": np.bool_(False)}
        audio = read_audio(
            os.path.join(self.root, self.files[file_index]),
            start_seconds,
            num_samples,
            sample_rate=self.sample_rate,
        )
        return {"audio": audio, "has_audio": np.bool_(True)}

    def _read(self, file_index: int, rng: np.random.Generator | None, view: int) -> dict:
        count = self.frame_counts[file_index]
        span = transforms.clip_span(self.num_frames, self.frame_stride)
        if rng is not None:
            start = transforms.sample_clip_start(count, span, rng)
        else:
            window = view // self.spatial_crops
            start = transforms.window_start(count, span, window, self.temporal_windows)
        indices = transforms.clip_frame_indices(start, self.num_frames, self.frame_stride, count)
        # Short side resized during decoding, so only the square crop is left.
        clip, times = read_frames_and_times(
            os.path.join(self.root, self.files[file_index]), indices, short_side=self.resolution
        )
        if rng is not None:
            example = {"video": transforms.crop_and_resize(clip, self.resolution, rng)}
        else:
            square = transforms.square_crop_at(clip, view % self.spatial_crops, self.spatial_crops)
            example = {"video": transforms.resize_video(square, self.resolution)}
        if self.with_audio:
            # A frame without a timestamp is placed where a constant rate puts it.
            start_seconds = (
                times[0] if np.isfinite(times[0]) else start / self.frame_rates[file_index]
            )
            example.update(self._read_audio(file_index, float(start_seconds)))
        return example

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        file_index = (index // self.views) % len(self.files)
        for _ in range(len(self.files)):
            if file_index not in self._bad:
                rng = (
                    np.random.default_rng((self.seed, int(index)))
                    if self.split == "train"
                    else None
                )
                try:
                    example = self._read(file_index, rng, index % self.views)
                except (VideoDecodeError, OSError) as e:
                    with self._lock:
                        if file_index not in self._bad:
                            self._bad.add(file_index)
                            self.skipped_files += 1
                    logging.warning(
                        "video %s failed to decode (%s); using the next readable file.",
                        os.path.join(self.root, self.files[file_index]),
                        e,
                    )
                else:
                    example["label"] = np.int32(self.labels[file_index])
                    example["caption"] = self.captions[file_index]
                    return example
            file_index = (file_index + 1) % len(self.files)
        raise ValueError(
            f"no video under {self.root!r} can be decoded any more; "
            f"{self.skipped_files} files failed."
        )
