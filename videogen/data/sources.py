"""Sources from a config's dataset specs: the one grammar for naming data in configs.

A dataset spec is a source name (`moving_digits`, `colour_shapes`, `real_clips`,
`real_clips_same_sources` (eval only), `video_folder`, `tfds:<name>`) or several
joined by "+", mixed in equal shares (`moving_digits+real_clips`) or in the integer
shares written after "*" (`moving_digits+real_clips*3`: three real clips to every
digit clip). `data.name` is one spec; a list of datasets evaluated one by one
(`eval.datasets`) is a tuple of specs. Clips take their frames, resolution and
stride from the config's `data` block, so training and evaluation clips agree
unless a caller asks for other frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import re
from typing import Any

import ml_collections
import numpy as np

from videogen.data import colour_shapes, moving_digits, pipeline, real_clips, transforms
from videogen.data.mixture import MixtureSource
from videogen.data.video_folder import VideoFolder


def parse_spec(spec: str) -> list[tuple[str, int]]:
    """(source name, share) of each part of one dataset spec: "a+b*3" -> [("a", 1), ("b", 3)]."""
    if not isinstance(spec, str):
        raise ValueError(
            f"dataset spec {spec!r} is not a string; a spec is a name or names joined by '+', "
            "e.g. 'moving_digits+real_clips'."
        )
    if "," in spec:
        raise ValueError(
            f"dataset spec {spec!r} contains ','; a list of datasets is a tuple of specs, "
            "e.g. --config.eval.datasets=\"('moving_digits', 'real_clips')\", and '+' mixes "
            "sources into one."
        )
    parsed = []
    for part in spec.split("+"):
        name, star, share = (p.strip() for p in part.partition("*"))
        if not name:
            raise ValueError(
                f"dataset spec {spec!r} has an empty name; join names by '+', e.g. "
                "'moving_digits+real_clips'."
            )
        if star and not (share.isdigit() and int(share) > 0):
            raise ValueError(
                f"dataset spec {spec!r} gives {name!r} the share {share!r}; a share is a "
                "positive integer after '*', e.g. 'moving_digits+real_clips*3'."
            )
        parsed.append((name, int(share) if star else 1))
    return parsed


def spec_parts(spec: str) -> list[str]:
    """The source names of one dataset spec ("a+b*3" -> ["a", "b"])."""
    return [name for name, _ in parse_spec(spec)]


def spec_list(specs: Sequence[str]) -> list[str]:
    """The dataset specs of a config list such as `eval.datasets` (a tuple of specs)."""
    if isinstance(specs, str):
        raise ValueError(
            f"a list of datasets is a tuple of specs, got the string {specs!r}; write e.g. "
            "('moving_digits', 'real_clips')."
        )
    specs = list(specs)
    for spec in specs:
        spec_parts(spec)
    return specs


def content_version(spec: str) -> int:
    """Version of what an embedded dataset shows (0 for data read from disk).

    Part of the cache key of anything computed from a dataset's clips, so a
    change to the embedded data is never answered from an old cache.
    """
    versions = {
        "moving_digits": moving_digits.VERSION,
        "colour_shapes": colour_shapes.VERSION,
        "real_clips": real_clips.VERSION,
        "real_clips_same_sources": real_clips.VERSION,
    }
    return max(versions.get(part, 0) for part in spec_parts(spec))


def make_source(
    config: ml_collections.ConfigDict,
    spec: str,
    split: str,
    *,
    num_examples: int | None = None,
    num_frames: int | None = None,
    with_audio: bool = False,
    temporal_windows: int = 1,
    spatial_crops: int = 1,
    wrap_part: Callable[[int, str, pipeline.VideoSource], pipeline.VideoSource] | None = None,
) -> pipeline.VideoSource:
    """The source of `spec` for `split`, with the clip shape of `config.data`.

    Files come from `data.path` for "train" and from `eval.path` (else
    `data.path`) for "eval". In a mixture each part gets its share of
    `num_examples`. `num_frames` overrides `data.num_frames` (e.g. an FVD
    protocol's clip length). `with_audio` asks file sources for their audio tracks.
    `temporal_windows x spatial_crops` views of each eval video (video folders only):
    an evaluation protocol's real-clip sampling. `data.short_files` says what a video
    folder does with files shorter than a clip ("pad" or "skip"). `wrap_part(position,
    name, source)` replaces each part's source before mixing (train-time augmentation).
    """
    data = config.data
    path = data.path if split == "train" else config.eval.path or data.path
    parts = parse_spec(spec)
    total = sum(share for _, share in parts)
    sources = [
        pipeline.make_source(
            name,
            split,
            num_frames=data.num_frames if num_frames is None else num_frames,
            resolution=data.resolution,
            frame_stride=data.frame_stride,
            seed=config.seed,
            path=path or None,
            num_examples=(
                num_examples
                if num_examples is None or len(parts) == 1
                else -(-num_examples * share // total)
            ),
            with_audio=with_audio,
            temporal_windows=temporal_windows,
            spatial_crops=spatial_crops,
            short_files=data.short_files,
        )
        for name, share in parts
    ]
    if wrap_part is not None:
        sources = [wrap_part(i, name, s) for i, ((name, _), s) in enumerate(zip(parts, sources))]
    if len(sources) == 1:
        return sources[0]
    return MixtureSource(sources, [share for _, share in parts])


def distinct_videos(source: pipeline.VideoSource) -> int | None:
    """How many distinct videos the examples of `source` show, where the source can tell:
    a video folder's files, each counted once however many views it gives. None for the
    others (generated clips, windows of the bundled videos, TFDS records, mixtures)."""
    return source.num_videos if isinstance(source, VideoFolder) else None


# Seeds augmentation draws apart from the sources' own draws for the same (seed, index).
_AUGMENT_STREAM = 0xA06


def mirror_caption(caption: str) -> str:
    """`caption` of a mirrored clip: "left" and "right" swapped ("pans to the left")."""
    return re.sub(
        r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", caption
    )


class AugmentedSource:
    """The examples of `source` with `transforms.augment` applied to their `video`, drawn
    from (seed, part, index) so that the same example always gets the same augmentation
    (`part`: the source's position in its mixture); the caption of a mirrored clip swaps
    left and right."""

    def __init__(
        self,
        source: pipeline.VideoSource,
        *,
        seed: int,
        part: int = 0,
        flip: bool,
        max_zoom: float,
        permute_channels: bool,
        colour_jitter: float,
    ):
        self.source, self.seed, self.part = source, seed, part
        self.options = dict(
            flip=flip,
            max_zoom=max_zoom,
            permute_channels=permute_channels,
            colour_jitter=colour_jitter,
        )
        self.keys = source.keys

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = dict(self.source[index])
        rng = np.random.default_rng((self.seed, _AUGMENT_STREAM, self.part, int(index)))
        example["video"], mirrored = transforms.augment(example["video"], rng, **self.options)
        if mirrored and "caption" in example:
            example["caption"] = mirror_caption(str(example["caption"]))
        return example

    @property
    def skipped_files(self) -> int:
        return self.source.skipped_files

    @property
    def short_files(self) -> int:
        return self.source.short_files


def train_source(
    config: ml_collections.ConfigDict, *, with_audio: bool = False
) -> pipeline.VideoSource:
    """The training source of `config.data.name`, its parts augmented as `data.augment`
    says (train clips only: held-out clips are never augmented; `augment.datasets` names
    the parts augmented, all when empty); a missing dataset's error carries
    `data.missing_hint` (where the data must be, and what to run instead)."""
    augment = config.data.augment
    options = dict(
        flip=augment.flip,
        max_zoom=augment.max_zoom,
        permute_channels=augment.permute_channels,
        colour_jitter=augment.colour_jitter,
    )
    names = spec_parts(config.data.name)
    chosen = tuple(augment.datasets) or tuple(names)
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise ValueError(
            f"data.augment.datasets names {unknown}, which data.name={config.data.name!r} "
            f"does not mix; name parts of it ({names}), or leave it empty to augment all."
        )
    active = options["flip"] or options["permute_channels"]
    active = active or options["max_zoom"] != 1.0 or options["colour_jitter"] != 0.0

    def wrap_part(position: int, name: str, source: pipeline.VideoSource):
        if not active or name not in chosen:
            return source
        return AugmentedSource(source, seed=config.seed, part=position, **options)

    try:
        return make_source(
            config, config.data.name, "train", with_audio=with_audio, wrap_part=wrap_part
        )
    except (ValueError, FileNotFoundError) as e:
        if not config.data.missing_hint:
            raise
        raise type(e)(f"{e}\n{config.data.missing_hint}") from e


def eval_batches(
    source: pipeline.VideoSource,
    batch_size: int,
    fields: Sequence[str] = ("video", "label"),
):
    """One pass over `source` in order, in batches of `batch_size` split over the processes
    (the last partial batch dropped): how every evaluator reads held-out clips."""
    import jax  # here, not at the top: configs import this package without JAX

    return pipeline.make_iterator(
        source,
        global_batch_size=batch_size,
        shuffle=False,
        seed=0,
        num_epochs=1,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        fields=fields,
    )
