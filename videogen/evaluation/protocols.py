"""Frechet-distance protocols as plain config data (no JAX): presets and `protocol_config`.

A protocol fixes everything that changes an FVD / FID number (see
`videogen.evaluation.evaluator`); experiment configs build `config.eval.frechet`
from here, so loading a config imports neither JAX nor the feature networks.
"""

from __future__ import annotations

from typing import Any

import ml_collections

NETWORKS = ("i3d", "inception")

# The thesis' sampling protocols (6.5.6; "we continuously run through all the
# samples required with a single data loader and compute the mean and standard
# deviation for 4 folds"). real_* describe the real distribution; a real split
# the source cannot view that way (several views need a video folder) is refused
# when the evaluator reads it (`FrechetEvaluator.real_source`).
PRESETS: dict[str, dict[str, Any]] = {
    "k600_fp": dict(
        network="i3d",
        num_samples=50_000,
        num_repeats=4,
        num_frames=16,
        resolution=64,  # generated at 128x128, evaluated at 64x64
        real_split="eval",
        real_temporal_windows=2,
        real_spatial_crops=3,
        resize="tf1_bilinear",  # as the MAGVIT evaluation code resized
    ),
    "ucf101_cg": dict(
        network="i3d",
        num_samples=10_000,
        num_repeats=4,
        num_frames=16,
        resolution=128,
        real_split="train",  # random clips of the training videos
        real_temporal_windows=1,
        real_spatial_crops=1,
        resize="tf1_bilinear",  # as the MAGVIT evaluation code resized
    ),
    "bair_fp": dict(
        network="i3d",
        num_samples=25_600,
        num_repeats=4,
        num_frames=16,
        resolution=64,
        real_split="eval",  # the first 16-frame clip of each evaluation video
        real_temporal_windows=1,
        real_spatial_crops=1,
        resize="tf1_bilinear",  # as the MAGVIT evaluation code resized
    ),
    "ssv2": dict(
        network="i3d",
        num_samples=50_000,
        num_repeats=4,
        num_frames=16,
        resolution=128,
        real_split="eval",
        real_temporal_windows=2,
        real_spatial_crops=1,
        resize="tf1_bilinear",  # as the MAGVIT evaluation code resized
    ),
    # The embedded data: small N (the I3D logits are 400-d, so the covariance is
    # rank-deficient and the distance noisy), one repeat; for relative
    # comparisons within this project, not for comparison with papers.
    "quickstart": dict(
        network="i3d",
        num_samples=64,
        num_repeats=1,
        num_frames=9,
        resolution=32,
        real_split="eval",
        real_temporal_windows=1,
        real_spatial_crops=1,
    ),
    # FID of images (T = 1), ADM's protocol size.
    "imagenet_fid": dict(
        network="inception",
        num_samples=50_000,
        num_repeats=1,
        num_frames=1,
        resolution=256,
        real_split="train",
        real_temporal_windows=1,
        real_spatial_crops=1,
    ),
}


def protocol_config(preset: str = "", **overrides: Any) -> ml_collections.ConfigDict:
    """`config.eval.frechet`: a preset's fields with overrides; preset "" is disabled.

    num_samples = 0 disables the Frechet evaluation. Unset (None) fields:
    `num_frames` and `resolution` (every preset sets them; required once
    num_samples > 0) and `real_num_examples`, the number of real clips (None:
    num_samples x num_repeats clips of the real split; with several views per
    video, every view of every real video once).
    """
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown evaluation preset {preset!r}; choose one of {sorted(PRESETS)}.")
    fields = dict(
        preset=preset,
        network="i3d",
        num_samples=0,
        num_repeats=1,
        num_frames=ml_collections.FieldReference(None, field_type=int),
        resolution=ml_collections.FieldReference(None, field_type=int),
        real_split="eval",
        real_num_examples=ml_collections.FieldReference(None, field_type=int),
        real_temporal_windows=1,
        real_spatial_crops=1,
        # The resize to `resolution` (evaluation/resize.py): "tf1_bilinear" (no
        # antialiasing, as TF1's resize_bilinear in the MAGVIT and FVD code) or
        # "antialiased_linear". The thesis presets use the former, to be comparable.
        resize="antialiased_linear",
        batch_size=8,
    )
    fields.update(PRESETS.get(preset, {}))
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(f"unknown protocol fields {sorted(unknown)}; known: {sorted(fields)}.")
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)
