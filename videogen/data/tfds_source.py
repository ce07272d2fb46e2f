"""TFDS video datasets by name, read with random access (`tfds.data_source`).

Random access needs the dataset prepared in the array_record format
(`tfds build <name> --file_format=array_record --data_dir=<dir>`); nothing is
downloaded at run time. TensorFlow is imported only here, lazily, and is
hidden from every GPU before first use: it only decodes on the host, and a
TensorFlow that grabs accelerator memory starves JAX.

Keys of each example:
  video    uint8 [num_frames, resolution, resolution, 3]  (1-channel videos
           are repeated to 3 channels)
  label    int32 []  the `label_key` feature, 0 when the dataset has none
  caption  str       the class name when the label is a ClassLabel, else ""
"""

from __future__ import annotations

import logging
from types import ModuleType

import numpy as np

from videogen.data import transforms

SPLITS = ("train", "eval")
# The first of these that the dataset has serves as "eval".
EVAL_SPLIT_NAMES = ("validation", "test", "val")


def import_tfds() -> ModuleType:
    """tensorflow_datasets, with TensorFlow's GPU visibility switched off first."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # TensorFlow was initialised earlier by someone else; visibility is fixed.
        if tf.config.get_visible_devices("GPU"):
            logging.warning(
                "TensorFlow was initialised with GPUs visible before the TFDS source "
                "could hide them; call tf.config.set_visible_devices([], 'GPU') first."
            )
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    return tfds


def tfds_split_name(split: str, available: list[str]) -> str:
    """TFDS split for "train" / "eval", given the dataset's known split names.

    `available` is empty when the split names are unknown (dataset not prepared
    or mocked); "eval" then means "test".
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "train":
        return "train"
    if not available:
        return "test"
    for name in EVAL_SPLIT_NAMES:
        if name in available:
            return name
    raise ValueError(
        f"the dataset has none of the eval splits {EVAL_SPLIT_NAMES}; it has {sorted(available)}."
    )


class TfdsSource:
    """Random-access clips of a TFDS video dataset; keys in the module docstring.

    Args:
      name: TFDS name, optionally with config and version ("ucf101/ucf101_1_256:2.0.0").
      split: "train" (random clip start and crop) or "eval" (centred clip).
      num_examples: virtual length (example i reads record i % len); defaults
        to the number of records.
      data_dir: TFDS data directory (TFDS's default when None).
      video_key, label_key: feature names of the video and the class.
    """

    keys = ("video", "label", "caption")
    skipped_files = 0
    short_files = 0

    def __init__(
        self,
        name: str,
        split: str = "train",
        *,
        num_frames: int = 17,
        resolution: int = 64,
        frame_stride: int = 1,
        num_examples: int | None = None,
        seed: int = 0,
        data_dir: str | None = None,
        video_key: str = "video",
        label_key: str = "label",
    ):
        tfds = import_tfds()
        builder = tfds.builder(name, data_dir=data_dir)
        features = builder.info.features
        if video_key not in features:
            raise ValueError(
                f"TFDS dataset {name!r} has no feature {video_key!r}; its features are "
                f"{sorted(features)}. Pass the video feature's name as video_key."
            )
        self.tfds_split = tfds_split_name(split, list(builder.info.splits or {}))
        try:
            self._records = builder.as_data_source(split=self.tfds_split)
        except (NotImplementedError, AssertionError, FileNotFoundError, ValueError) as e:
            raise ValueError(
                f"TFDS dataset {name!r} split {self.tfds_split!r} is not readable with random access "
                f"from data_dir={data_dir!r}: {e}\nPrepare it first with `tfds build {name} "
                "--file_format=array_record` (add --data_dir to match)."
            ) from e
        if len(self._records) == 0:
            raise ValueError(f"TFDS dataset {name!r} split {self.tfds_split!r} is empty.")
        label_feature = features[label_key] if label_key in features else None
        self._label_key = label_key if label_feature is not None else None
        self._class_names = (
            list(label_feature.names)
            if isinstance(label_feature, tfds.features.ClassLabel)
            else None
        )
        self.name = name
        self.split = split
        self.video_key = video_key
        self.num_frames = num_frames
        self.resolution = resolution
        self.frame_stride = frame_stride
        self.seed = seed
        self.num_examples = len(self._records) if num_examples is None else int(num_examples)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        record = self._records[index % len(self._records)]
        frames = np.asarray(record[self.video_key], np.uint8)
        if frames.shape[-1] == 1:
            frames = np.repeat(frames, 3, axis=-1)
        rng = np.random.default_rng((self.seed, int(index))) if self.split == "train" else None
        video = transforms.sample_clip(
            frames,
            num_frames=self.num_frames,
            frame_stride=self.frame_stride,
            resolution=self.resolution,
            rng=rng,
        )
        label = int(record[self._label_key]) if self._label_key is not None else 0
        caption = self._class_names[label] if self._class_names is not None else ""
        return {"video": video, "label": np.int32(label), "caption": caption}
