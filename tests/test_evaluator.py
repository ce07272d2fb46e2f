"""The Frechet evaluator: protocol presets, folds of one stream, errors, and FID end to end.

FVD through the tokenizer's evaluation (I3D, folds, cache reuse) is checked in
test_tokenizer_trainer's eval-mode test; FVD's noise ordering in test_feature_stats.
"""

import numpy as np
import pytest

from videogen.data import pipeline
from videogen.evaluation import evaluator, protocols
from videogen.evaluation.frechet import RankDeficientCovarianceWarning


def test_presets_hold_the_thesis_protocols():
    k600 = protocols.protocol_config("k600_fp")
    assert (k600.num_samples, k600.num_repeats, k600.num_frames, k600.resolution) == (
        50_000,
        4,
        16,
        64,
    )
    assert (k600.real_temporal_windows, k600.real_spatial_crops) == (2, 3)
    assert protocols.protocol_config("ucf101_cg").num_samples == 10_000
    assert protocols.protocol_config("bair_fp").num_samples == 25_600
    overridden = protocols.protocol_config("k600_fp", num_samples=128)
    assert overridden.num_samples == 128 and overridden.num_repeats == 4
    assert protocols.protocol_config("").num_samples == 0  # disabled
    with pytest.raises(ValueError, match="unknown evaluation preset 'k700'"):
        protocols.protocol_config("k700")
    with pytest.raises(ValueError, match=r"unknown protocol fields \['samples'\]"):
        protocols.protocol_config("k600_fp", samples=3)


def test_thesis_presets_resize_as_the_magvit_evaluation_did():
    """TF1 bilinear (no antialiasing: a 2x reduction keeps every other pixel) for the thesis
    presets; the antialiased filter (neighbours averaged) is the other named choice."""
    for preset in ("k600_fp", "ucf101_cg", "bair_fp", "ssv2"):
        assert protocols.protocol_config(preset).resize == "tf1_bilinear", preset
    assert protocols.protocol_config("quickstart").resize == "antialiased_linear"
    # One 4x6 frame (values 0..23), centre-cropped to 4x4 and resized to 2x2 and 3x3.
    frame = np.arange(24, dtype=np.uint8).reshape(1, 1, 4, 6, 1).repeat(3, axis=-1)
    tf1 = np.asarray(evaluator.to_eval_resolution(frame, 2, "tf1_bilinear"))[0, 0, ..., 0]
    np.testing.assert_array_equal(
        tf1, [[1.0, 3.0], [13.0, 15.0]]
    )  # crop's pixels (0, 0), (0, 2), ...
    # Antialiased: a triangle filter twice as wide, renormalised at the border, so each
    # output mixes 3 input rows and columns with weights (3, 3, 1) / 7.
    smooth = np.asarray(evaluator.to_eval_resolution(frame, 2, "antialiased_linear"))
    np.testing.assert_allclose(smooth[0, 0, ..., 0], [[6.0, 53 / 7], [108 / 7, 17.0]], atol=1e-4)
    # 4 -> 3: output i samples input 4i/3 between its two neighbours.
    tf1 = np.asarray(evaluator.to_eval_resolution(frame, 3, "tf1_bilinear"))[0, 0, 0, :, 0]
    np.testing.assert_allclose(tf1, [1.0, 1.0 + 4 / 3, 1.0 + 8 / 3], atol=1e-5)
    with pytest.raises(ValueError, match="unknown resize method 'cubic'"):
        evaluator.to_eval_resolution(frame, 2, "cubic")


def test_folds_split_batches_without_losing_or_repeating_rows():
    batches = [np.arange(i * 3, i * 3 + 3)[:, None] for i in range(4)]  # rows 0..11 in 3s
    folds = evaluator.FoldedStream(batches, rows=5)
    first = np.concatenate(list(folds.fold(0)))[:, 0]
    second = np.concatenate(list(folds.fold(1)))[:, 0]
    assert first.tolist() == [0, 1, 2, 3, 4] and second.tolist() == [5, 6, 7, 8, 9]
    assert np.concatenate(list(folds.fold(2)))[:, 0].tolist() == [10, 11]  # what is left
    assert list(folds.fold(3)) == []


def _evaluator(tmp_path, **overrides):
    protocol = protocols.protocol_config("quickstart", **overrides)
    return evaluator.FrechetEvaluator(protocol, str(tmp_path), mesh=None)


def test_protocol_errors(tmp_path):
    with pytest.raises(ValueError, match="I3D needs at least 9 frames"):
        _evaluator(tmp_path, num_frames=5)
    with pytest.raises(ValueError, match="FID is defined on images; set num_frames=1"):
        _evaluator(tmp_path, network="inception")
    with pytest.raises(ValueError, match="network='c3d'"):
        _evaluator(tmp_path, network="c3d")
    with pytest.raises(ValueError, match="num_samples >= 2"):
        _evaluator(tmp_path, num_samples=1)


def test_mismatched_clips_are_errors(tmp_path):
    fe = _evaluator(tmp_path, num_samples=2)
    real = evaluator.RealStats(np.zeros(400), np.eye(400), 10, None)
    clips = np.zeros((2, 8, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"generated clips have shape \(8, 32, 32, 3\).*9-frame"):
        fe(real, lambda r: [clips])
    small = np.zeros((2, 9, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="16x16, smaller than the evaluation resolution 32"):
        fe(real, lambda r: [small])


def _images(split: str, num: int) -> np.ndarray:
    source = pipeline.make_source(
        "moving_digits", split, num_frames=1, resolution=16, num_examples=num, seed=0
    )
    return np.stack([source[i]["video"] for i in range(num)])


def test_fid_of_real_images_is_below_fid_of_noisy_ones_and_real_stats_are_cached(tmp_path):
    """FID end to end with the Inception network: two folds, cache reuse, too-few-samples errors."""
    fe = _evaluator(
        tmp_path, network="inception", num_frames=1, resolution=16, num_samples=6, num_repeats=2
    )
    real = _images("eval", 12)
    with pytest.warns(RankDeficientCovarianceWarning, match="at least 2049 samples"):
        stats = fe.real_statistics(
            "moving_digits", lambda: [real[:6], real[6:]], frame_stride=1, source_resolution=16
        )
    assert fe.real_recomputed and stats[2] == 12
    again = fe.real_statistics(
        "moving_digits",
        lambda: pytest.fail("cached stats recomputed"),
        frame_stride=1,
        source_resolution=16,
    )
    assert not fe.real_recomputed and np.array_equal(again[0], stats[0])

    # Disjoint images of the same distribution vs those images with heavy noise.
    clean = _images("train", 12)
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 80, clean.shape), 0, 255).astype(np.uint8)
    with pytest.warns(RankDeficientCovarianceWarning):
        fid_clean = fe(stats, evaluator.FoldedStream([clean], 6).fold)
        fid_noisy = fe(stats, evaluator.FoldedStream([noisy], 6).fold)
    assert 0 < fid_clean["fid"] < fid_noisy["fid"]
    assert fid_clean["fid_num_samples"] == 6 and fid_clean["fid_num_real"] == 12
    assert fid_clean["fid"] == pytest.approx(
        (fid_clean["fid_repeat0"] + fid_clean["fid_repeat1"]) / 2
    )
    # A short first fold fails before any distance is computed.
    with pytest.raises(ValueError, match="repeat 0 produced 4 generated clips, fewer than"):
        fe(stats, evaluator.FoldedStream([clean[:4]], 6).fold)
