"""Frechet distances (FVD, FID) under pinned protocols: N samples x R repeats vs cached real stats.

A protocol fixes everything that changes the number: the feature network and
its weights, the number of generated samples per repeat (N) and of repeats
(R), the clip length, the evaluation resolution (centre crop + the named
resize of both sets: `resize.RESIZE_METHODS`), and how the real distribution is sampled
(`FrechetEvaluator.real_source`: the real split, and W temporal windows x C spatial crops of
each video). The thesis' protocols (MAGVIT 6.5.6) are presets; every field stays a config entry.

The evaluator streams: generated clips go through the feature network batch by
batch, so N = 50,000 never has to fit in memory. Real statistics are computed
once per protocol and cached as `.npz` in the workdir (see feature_stats).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Float, UInt8

from videogen.data import pipeline, sources
from videogen.evaluation import feature_stats, frechet, i3d, inception, resize
from videogen.evaluation.protocols import NETWORKS


def to_eval_resolution(
    video: UInt8[Array, "b T H W 3"], resolution: int, method: str
) -> Float[Array, "b T r r 3"]:
    """Centre square crop, then the protocol's resize (`resize.RESIZE_METHODS`) to
    `resolution`; values in [0, 255]."""
    video = jnp.asarray(video)
    _, _, h, w, _ = video.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = video[:, :, top : top + side, left : left + side].astype(jnp.float32)
    return resize.resize_frames(x, resolution, resolution, method)


@functools.cache
def _network(name: str) -> tuple[Any, str, str]:
    """(model, weights sha256, preprocessing tag) of a feature network, loaded once per process."""
    if name == "i3d":
        return i3d.load_i3d(), i3d.WEIGHTS_SHA256, "tf1_bilinear_224;[-1,1]"
    if name == "inception":
        return (
            inception.load_inception(),
            inception.WEIGHTS_SHA256,
            "tf1_bilinear_299",
        )
    raise ValueError(f"unknown feature network {name!r}; choose one of {NETWORKS}.")


def _features_fn(network: str, resolution: int, method: str) -> Callable[[jax.Array], jax.Array]:
    """Jitted uint8 clips [B, T, H, W, 3] -> features [B, D]; weights are an argument, not constants."""
    model, _, _ = _network(network)
    graphdef, state = nnx.split(model)

    @jax.jit
    def fn(state: nnx.State, video: UInt8[Array, "b T H W 3"]) -> Float[Array, "b d"]:
        net = nnx.merge(graphdef, state)
        clips = to_eval_resolution(video, resolution, method)
        if network == "i3d":
            return net(i3d.preprocess(clips, max_value=255.0))
        return net(clips[:, 0], max_value=255.0)

    return functools.partial(fn, state)


class RealStats(NamedTuple):
    """The real distribution's feature statistics and what they were computed from."""

    mu: Float[np.ndarray, " d"]
    sigma: Float[np.ndarray, "d d"]
    count: int  # real clips (views) in the statistics
    num_videos: int | None  # distinct videos they show; None where the source cannot tell

    def report(self, metric: str) -> dict[str, float]:
        """The real side of a distance's report: `<metric>_num_real` (clips) and, when known,
        `<metric>_num_real_videos`."""
        result = {f"{metric}_num_real": float(self.count)}
        if self.num_videos is not None:
            result[f"{metric}_num_real_videos"] = float(self.num_videos)
        return result


class FoldedStream:
    """Consecutive folds of `rows` examples each, cut from one stream of batches.

    The thesis' protocol runs "through all the samples required with a single
    data loader" and reports mean and std over folds; batches that straddle a
    fold boundary are split, so no example is lost or used twice.
    `fold(r)` is what `FrechetEvaluator.__call__` takes as `generated_batches`.
    """

    def __init__(self, batches: Iterable[np.ndarray], rows: int):
        self._batches = iter(batches)
        self._rows = rows
        self._left = np.zeros((0,))

    def fold(self, _repeat: int) -> Iterator[np.ndarray]:
        need = self._rows
        while need > 0:
            if len(self._left) == 0:
                try:
                    self._left = np.asarray(next(self._batches))
                except StopIteration:
                    return
            take, self._left = self._left[:need], self._left[need:]
            need -= len(take)
            yield take

    def drain(self) -> None:
        """Consumes the rest of the stream (e.g. so per-batch side effects see every batch)."""
        for _ in self._batches:
            pass


class FrechetEvaluator:
    """FVD or FID of generated clips against a real split's cached statistics.

    Args:
      protocol: a `protocol_config(...)` ConfigDict.
      cache_dir: where real statistics are stored (e.g. <workdir>/real_stats).
      mesh: feature extraction is sharded over its batch axes (None: one device).
    """

    def __init__(self, protocol: ml_collections.ConfigDict, cache_dir: str, mesh: Mesh | None):
        if protocol.network not in NETWORKS:
            raise ValueError(
                f"eval.frechet.network={protocol.network!r}; choose one of {NETWORKS}."
            )
        if protocol.resize not in resize.RESIZE_METHODS:
            raise ValueError(
                f"eval.frechet.resize={protocol.resize!r}; choose one of {resize.RESIZE_METHODS}."
            )
        if protocol.num_samples < 2 or protocol.num_repeats < 1:
            raise ValueError(
                f"eval.frechet needs num_samples >= 2 and num_repeats >= 1, got "
                f"{protocol.num_samples} and {protocol.num_repeats}."
            )
        unset = [k for k in ("num_frames", "resolution") if protocol[k] is None]
        if unset:
            raise ValueError(
                f"eval.frechet.{unset[0]} is unset; set it (or use a preset) to evaluate "
                f"{protocol.num_samples} samples, or set eval.frechet.num_samples=0."
            )
        if protocol.network == "i3d" and protocol.num_frames < i3d.MIN_FRAMES:
            raise ValueError(
                f"eval.frechet.num_frames={protocol.num_frames}: I3D needs at least "
                f"{i3d.MIN_FRAMES} frames; evaluate longer clips or use network='inception'."
            )
        if protocol.network == "inception" and protocol.num_frames != 1:
            raise ValueError(
                f"eval.frechet.num_frames={protocol.num_frames} with the Inception network: FID is "
                "defined on images; set num_frames=1 (or network='i3d' for videos)."
            )
        self.protocol = protocol
        self.metric = "fvd" if protocol.network == "i3d" else "fid"
        self.mesh = mesh
        self.cache = feature_stats.RealStatsCache(cache_dir)
        self._feature_fn = None
        self.real_recomputed = False  # whether the last `real_statistics` call extracted features

    @property
    def feature_fn(self) -> Callable[[jax.Array], jax.Array]:
        if self._feature_fn is None:  # loading the weights costs seconds: only when used
            p = self.protocol
            self._feature_fn = _features_fn(p.network, p.resolution, p.resize)
        return self._feature_fn

    def real_key(
        self, dataset: str, frame_stride: int, source_resolution: int, num_examples: int
    ) -> dict[str, Any]:
        p = self.protocol
        _, sha256, preprocessing = _network(p.network)
        return dict(
            dataset=dataset,
            dataset_version=sources.content_version(dataset),
            split=p.real_split,
            num_examples=num_examples,
            num_frames=p.num_frames,
            resolution=p.resolution,
            frame_stride=frame_stride,
            source_resolution=source_resolution,  # before the centre crop + resize
            network=p.network,
            weights_sha256=sha256,
            preprocessing=f"center_crop+{p.resize};{preprocessing}",
            temporal_windows=p.real_temporal_windows,
            spatial_crops=p.real_spatial_crops,
        )

    @property
    def real_views(self) -> int:
        """Real clips taken from each real video: temporal windows x spatial crops."""
        return self.protocol.real_temporal_windows * self.protocol.real_spatial_crops

    @property
    def real_num_examples(self) -> int | None:
        """Real clips in the statistics; None (views > 1, unset): every view of every video once."""
        p = self.protocol
        if p.real_num_examples is not None:
            return p.real_num_examples
        return p.num_samples * p.num_repeats if self.real_views == 1 else None

    def real_source(self, config: ml_collections.ConfigDict, spec: str) -> pipeline.VideoSource:
        """The protocol's real clips of dataset `spec`: its `real_split`, `num_frames`-frame
        clips, the `real_temporal_windows x real_spatial_crops` views of each video one after
        another, `real_num_examples` of them.

        Sources without views are refused (only video folders have them). A warning names the
        counts when the clips repeat videos; a clip count that `config.eval.batch_size` does
        not divide is an error, because the last partial batch would be dropped.
        """
        p = self.protocol
        source = sources.make_source(
            config,
            spec,
            p.real_split,
            num_frames=p.num_frames,
            num_examples=self.real_num_examples,
            temporal_windows=p.real_temporal_windows,
            spatial_crops=p.real_spatial_crops,
        )
        views, videos = self.real_views, sources.distinct_videos(source)
        if videos is not None and len(source) > videos * views:
            logging.warning(
                "real statistics of %r: the protocol asks for %d real clips (%d view(s) of each "
                "video), but its %s split holds %d distinct videos, %d clips; files repeat, so "
                "the same clips enter the statistics more than once. Set "
                "eval.frechet.real_num_examples=%d (each video's views once) or add videos.",
                spec,
                len(source),
                views,
                p.real_split,
                videos,
                videos * views,
                videos * views,
            )
        batch_size = config.eval.batch_size
        if len(source) % batch_size:
            whole = len(source) - len(source) % batch_size
            raise ValueError(
                f"the real {spec!r} {p.real_split} split gives {len(source)} clips "
                f"({views} view(s) per video), which eval.batch_size={batch_size} does not "
                "divide; the last partial batch would be dropped. "
                + (f"Set eval.frechet.real_num_examples={whole} or " if whole else "")
                + "change eval.batch_size."
            )
        return source

    def real_statistics(
        self,
        dataset: str,
        real_batches: Callable[[], Iterable[Mapping[str, np.ndarray] | np.ndarray]],
        *,
        frame_stride: int,
        source_resolution: int,
        num_examples: int | None = None,
        num_videos: int | None = None,
    ) -> RealStats:
        """The real split's statistics: from the cache, else extracted once and cached.

        `frame_stride` and `source_resolution` (the clips' size before the
        protocol's crop + resize) describe how `real_batches` were read; both
        enter the cache key. `num_examples` is how many clips they yield (None:
        `real_num_examples`), `num_videos` how many distinct videos those show
        (`sources.distinct_videos` of a `real_source`; None: not reported).
        """
        num_examples = self.real_num_examples if num_examples is None else num_examples
        if num_examples is None:
            raise ValueError(
                f"eval.frechet.real_num_examples is unset with {self.real_views} views per real "
                "video: the clip count is the real source's length; pass "
                "num_examples=len(evaluator.real_source(...))."
            )
        key = self.real_key(dataset, frame_stride, source_resolution, num_examples)
        self.real_recomputed = False

        def compute() -> np.ndarray:
            self.real_recomputed = True
            features = feature_stats.extract_features(
                self.feature_fn,
                self._checked(real_batches(), "real"),
                max_examples=num_examples,
                mesh=self.mesh,
            )
            if features.shape[0] < num_examples:
                raise ValueError(
                    f"the real {dataset!r} {self.protocol.real_split} split yielded "
                    f"{features.shape[0]} clips, fewer than the protocol's "
                    f"{num_examples}; set eval.frechet.real_num_examples="
                    f"{features.shape[0]} (the cache key records it)."
                )
            return features

        mu, sigma, count = self.cache.get_or_compute(key, compute)
        return RealStats(mu, sigma, count, num_videos)

    def _checked(self, batches: Iterable, side: str) -> Iterator[np.ndarray]:
        """Clips of the protocol's frame count; any other count is an error, never resized."""
        p = self.protocol
        for batch in batches:
            video = np.asarray(batch["video"] if isinstance(batch, Mapping) else batch)
            if video.ndim != 5 or video.shape[1] != p.num_frames or video.shape[-1] != 3:
                raise ValueError(
                    f"{side} clips have shape {video.shape[1:]}, but the {self.metric.upper()} "
                    f"protocol compares {p.num_frames}-frame RGB clips [T, H, W, 3]; generate "
                    "(or load) clips of that length, or change eval.frechet.num_frames."
                )
            if min(video.shape[2:4]) < p.resolution:
                raise ValueError(
                    f"{side} clips are {video.shape[2]}x{video.shape[3]}, smaller than the "
                    f"evaluation resolution {p.resolution}; up-sampling would invent detail. "
                    "Lower eval.frechet.resolution or generate larger clips."
                )
            yield video

    def __call__(
        self,
        real_stats: RealStats,
        generated_batches: Callable[[int], Iterable[Mapping[str, np.ndarray] | np.ndarray]],
    ) -> dict[str, float]:
        """Distances of R repeats of N generated clips each: mean, std and each repeat.

        `generated_batches(r)` yields uint8 clips [B, T, H, W, 3] of repeat r
        (fresh samples per repeat; a deterministic reconstruction may repeat).
        """
        p = self.protocol
        distances = []
        for repeat in range(p.num_repeats):
            features = feature_stats.extract_features(
                self.feature_fn,
                self._checked(generated_batches(repeat), "generated"),
                max_examples=p.num_samples,
                mesh=self.mesh,
            )
            if features.shape[0] < p.num_samples:
                raise ValueError(
                    f"repeat {repeat} produced {features.shape[0]} generated clips, fewer than "
                    f"eval.frechet.num_samples={p.num_samples}; give the generator more "
                    "conditions (e.g. eval.num_examples) or lower num_samples."
                )
            mu, sigma = frechet.gaussian_stats(features)
            distances.append(frechet.frechet_distance(mu, sigma, real_stats.mu, real_stats.sigma))
            logging.info(
                "%s repeat %d/%d: %.3f", self.metric, repeat + 1, p.num_repeats, distances[-1]
            )
        values = np.asarray(distances)
        result = {
            self.metric: float(values.mean()),
            f"{self.metric}_std": float(values.std()),
            f"{self.metric}_num_samples": float(p.num_samples),
            **real_stats.report(self.metric),
        }
        for repeat, value in enumerate(distances):
            result[f"{self.metric}_repeat{repeat}"] = float(value)
        return result


def make_frechet(
    protocol: ml_collections.ConfigDict,
    num_examples: int,
    workdir: str,
    mesh: Mesh | None,
    *,
    multi_view_real: bool = False,
) -> FrechetEvaluator | None:
    """A trainer evaluator's Frechet evaluator for `config.eval.frechet` (None when its
    num_samples is 0), checked against the `num_examples` held-out clips it generates from.
    Real statistics are cached in `<workdir>/real_stats`.

    `multi_view_real`: the trainer reads the real split with `FrechetEvaluator.real_source`,
    so a protocol's several views per real video are taken; a trainer that reads one clip per
    video leaves it False, and such protocols are refused.
    """
    if not protocol.num_samples:
        return None
    views = (protocol.real_temporal_windows, protocol.real_spatial_crops)
    if views != (1, 1) and not multi_view_real:
        raise ValueError(
            f"eval.frechet.real_temporal_windows x real_spatial_crops = {views[0]} x {views[1]} "
            "views of each real video, but this trainer reads one clip per real video; set "
            "both to 1 (only the MAGVIT generation evaluator reads several views)."
        )
    needed = protocol.num_samples * protocol.num_repeats
    if needed > num_examples:
        raise ValueError(
            f"eval.frechet needs num_samples x num_repeats = {needed} clips but "
            f"eval.num_examples={num_examples}; raise eval.num_examples or lower "
            "eval.frechet.num_samples."
        )
    return FrechetEvaluator(protocol, os.path.join(workdir, "real_stats"), mesh)
