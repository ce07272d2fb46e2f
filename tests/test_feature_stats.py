"""Real-statistics cache (reuse, recompute on a new key or a bad file), feature extraction
(sharded == unsharded, padding, max_examples), protocol compatibility, and one real FVD
sanity check with I3D on moving_digits."""

import functools
import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from videogen.data import pipeline
from videogen.evaluation import i3d
from videogen.evaluation.feature_stats import (
    RealStatsCache,
    check_compatible,
    extract_features,
)
from videogen.evaluation.frechet import (
    RankDeficientCovarianceWarning,
    frechet_distance,
    gaussian_stats,
)
from videogen.sharding import BATCH_AXES, make_mesh


def _key(**overrides) -> dict:
    key = dict(
        dataset="moving_digits",
        split="eval",
        num_examples=30,
        num_frames=9,
        resolution=64,
        frame_stride=1,
        network="i3d",
        weights_sha256="ab" * 32,
        preprocessing="tf1_bilinear_224_minus1_1",
    )
    key.update(overrides)
    return key


class _CountingFeatures:
    """compute_fn that records its calls; features differ per key so reuse is visible."""

    def __init__(self):
        self.calls = 0

    def __call__(self, num_examples: int = 30, seed: int = 0) -> np.ndarray:
        self.calls += 1
        return np.random.default_rng(seed).normal(size=(num_examples, 5)) + seed


def test_cached_statistics_are_reused(tmp_path, caplog):
    compute = _CountingFeatures()
    caplog.set_level(logging.INFO)
    first = RealStatsCache(tmp_path).get_or_compute(_key(), compute)
    # A fresh cache object on the same directory: what the next evaluation run does.
    second = RealStatsCache(tmp_path).get_or_compute(_key(), compute)
    assert compute.calls == 1
    expected_mu, expected_sigma = gaussian_stats(compute())
    for mu, sigma, count in (first, second):
        np.testing.assert_array_equal(mu, expected_mu)
        np.testing.assert_array_equal(sigma, expected_sigma)
        assert count == 30
    assert "computing" in caplog.text and "reusing" in caplog.text


def test_file_name_is_readable_and_key_order_free(tmp_path):
    cache = RealStatsCache(tmp_path)
    path = cache.path(_key(dataset="tfds:ucf101"))
    assert path.parent == tmp_path
    assert path.name.startswith("tfds-ucf101_eval_i3d_") and path.suffix == ".npz"
    assert len(path.stem.rsplit("_", 1)[1]) == 12
    assert cache.path(dict(reversed(list(_key().items())))) == cache.path(_key())


@pytest.mark.parametrize(
    "change",
    [dict(resolution=128), dict(num_frames=17), dict(weights_sha256="cd" * 32), dict(seed=1)],
)
def test_changed_key_recomputes(tmp_path, change):
    compute = _CountingFeatures()
    cache = RealStatsCache(tmp_path)
    mu, _, _ = cache.get_or_compute(_key(), compute)
    other_mu, _, _ = cache.get_or_compute(_key(**change), lambda: compute(seed=1))
    assert compute.calls == 2
    assert not np.allclose(mu, other_mu)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    # Both protocols stay cached.
    cache.get_or_compute(_key(), compute)
    cache.get_or_compute(_key(**change), compute)
    assert compute.calls == 2


def _corrupt_garbage(path, cache):
    path.write_bytes(b"not an npz file")


def _corrupt_truncated(path, cache):
    path.write_bytes(path.read_bytes()[:200])


def _corrupt_other_key(path, cache):
    # Statistics of another protocol under this file name (a copied or renamed file).
    np.savez(
        path,
        key=np.array('{"dataset":"something_else"}'),
        mu=np.zeros(5),
        sigma=np.eye(5),
        count=np.int64(30),
    )


def _corrupt_shapes(path, cache):
    with np.load(path) as data:
        stored = dict(data)
    np.savez(path, **{**stored, "sigma": np.eye(4)})


@pytest.mark.parametrize(
    "corrupt", [_corrupt_garbage, _corrupt_truncated, _corrupt_other_key, _corrupt_shapes]
)
def test_bad_cache_file_is_recomputed_with_a_warning(tmp_path, caplog, corrupt):
    compute = _CountingFeatures()
    cache = RealStatsCache(tmp_path)
    expected = cache.get_or_compute(_key(), compute)
    corrupt(cache.path(_key()), cache)
    with caplog.at_level(logging.WARNING):
        recomputed = cache.get_or_compute(_key(), compute)
    assert compute.calls == 2
    assert "recomputing" in caplog.text and cache.path(_key()).name in caplog.text
    np.testing.assert_array_equal(recomputed[1], expected[1])
    # The file was repaired: the next call reuses it.
    cache.get_or_compute(_key(), compute)
    assert compute.calls == 2


def test_bad_keys_and_feature_counts_are_errors(tmp_path):
    cache = RealStatsCache(tmp_path)
    key = _key()
    del key["weights_sha256"]
    with pytest.raises(ValueError, match=r"missing \['weights_sha256'\]"):
        cache.get_or_compute(key, _CountingFeatures())
    with pytest.raises(ValueError, match="not plain JSON"):
        cache.get_or_compute(_key(preprocessing=object()), _CountingFeatures())
    with pytest.raises(ValueError, match="num_examples=30"):
        cache.get_or_compute(_key(), lambda: np.zeros((29, 5)))
    assert not list(tmp_path.glob("*.npz"))


def _pooled_features(video: jax.Array) -> jax.Array:
    """[B, T, 16, 16, 3] uint8 -> [B, 48]: mean over time and 4x4 spatial cells."""
    x = video.astype(jnp.float32).mean(axis=1)
    b, h, w, c = x.shape
    return x.reshape(b, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(b, -1)


_jitted_pooled_features = jax.jit(_pooled_features)


def _digit_batches(num_examples: int, batch_size: int):
    source = pipeline.make_source(
        "moving_digits", "eval", num_frames=4, resolution=16, num_examples=num_examples
    )
    iterator = pipeline.make_iterator(
        source, global_batch_size=batch_size, shuffle=False, seed=0, num_epochs=1
    )
    reference = np.asarray(
        _pooled_features(np.stack([source[i]["video"] for i in range(num_examples)]))
    )
    return iterator, reference


@pytest.mark.parametrize("mesh_shape", [None, (1, 1, 1), (2, 2, 2), (4, 2, 1)])
def test_extract_features_sharded_equals_unsharded(mesh_shape, caplog):
    iterator, reference = _digit_batches(num_examples=32, batch_size=8)
    mesh = None if mesh_shape is None else make_mesh(mesh_shape)
    seen_specs = []

    def feature_fn(video):
        seen_specs.append(video.sharding.spec if mesh is not None else None)
        return _jitted_pooled_features(video)

    with caplog.at_level(logging.INFO):
        features = extract_features(feature_fn, iterator, max_examples=20, mesh=mesh)
    assert features.shape == (20, 48)
    np.testing.assert_allclose(features, reference[:20], rtol=1e-6)
    assert "20/20 examples" in caplog.text
    # Stopped after the batch that reached max_examples: 3 of the 4 batches.
    assert len(seen_specs) == 3
    if mesh is not None:
        assert all(spec == PartitionSpec(BATCH_AXES) for spec in seen_specs)


def test_extract_features_pads_short_batches_and_reports_running_out(caplog):
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, size=(21, 2, 16, 16, 3), dtype=np.uint8)
    # 8, 8, then 5 rows: 5 is not a multiple of the 4-way batch split.
    batches = [videos[:8], videos[8:16], videos[16:]]
    shapes = []

    def feature_fn(video):
        shapes.append(video.shape)
        return _jitted_pooled_features(video)

    with caplog.at_level(logging.WARNING):
        features = extract_features(
            feature_fn, batches, max_examples=100, mesh=make_mesh((2, 2, 2))
        )
    np.testing.assert_allclose(features, np.asarray(_pooled_features(videos)), rtol=1e-6)
    assert shapes == [(8, 2, 16, 16, 3)] * 3  # padded to the seen size: one compilation
    assert "ran out after 21 of max_examples=100" in caplog.text


def test_extract_features_errors():
    videos = np.zeros((4, 2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="one feature vector per example"):
        extract_features(jax.jit(lambda v: v.mean(axis=(1, 2, 3, 4))), [videos], max_examples=4)
    with pytest.raises(ValueError, match="yielded nothing"):
        extract_features(_jitted_pooled_features, [], max_examples=4)
    with pytest.raises(ValueError, match="max_examples must be >= 1"):
        extract_features(_jitted_pooled_features, [videos], max_examples=0)


def test_check_compatible():
    real = _key()
    check_compatible(real, dict(num_frames=9, resolution=(64, 64)))
    check_compatible(real, dict(num_frames=9, resolution=64, network="i3d"))
    with pytest.raises(ValueError, match="num_frames: real 9 vs generated 17"):
        check_compatible(real, dict(num_frames=17, resolution=64))
    with pytest.raises(ValueError, match=r"resolution: real \(64, 64\) vs generated \(128, 128\)"):
        check_compatible(real, dict(num_frames=9, resolution=128))
    with pytest.raises(ValueError, match=r"resolution: real \(64, 64\) vs generated \(64, 48\)"):
        check_compatible(real, dict(num_frames=9, resolution=(64, 48)))
    with pytest.raises(ValueError, match="network: real 'i3d' vs generated 'inception_v3'"):
        check_compatible(real, dict(num_frames=9, resolution=64, network="inception_v3"))
    with pytest.raises(ValueError, match=r"generated metadata lacks \['resolution'\]"):
        check_compatible(real, dict(num_frames=9))


def _noisy(batches, sigma: float, seed: int):
    rng = np.random.default_rng(seed)
    for batch in batches:
        video = batch["video"].astype(np.float32) + sigma * rng.normal(size=batch["video"].shape)
        yield np.clip(np.rint(video), 0, 255).astype(np.uint8)


def test_fvd_of_real_halves_is_below_fvd_with_noise(tmp_path):
    """I3D FVD on 24 real moving_digits clips (two disjoint halves of 12).

    With 12 clips per side the 400-dimensional covariances have rank 11: the
    Frechet distance is defined but biased upwards, so only the ordering is
    checked. Noise is added to the second half so every comparison carries the
    same sampling noise.
    """
    half = 12
    source = pipeline.make_source(
        "moving_digits", "eval", num_frames=i3d.MIN_FRAMES, resolution=64, num_examples=2 * half
    )
    batches = list(
        pipeline.make_iterator(source, global_batch_size=half, shuffle=False, seed=0, num_epochs=1)
    )
    first, second = batches
    feature_fn = functools.partial(i3d.features, model=i3d.load_i3d())
    key = _key(num_examples=half, network="i3d", weights_sha256=i3d.WEIGHTS_SHA256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientCovarianceWarning)
        real = RealStatsCache(tmp_path).get_or_compute(
            key, lambda: extract_features(feature_fn, [first], max_examples=half)
        )[:2]
        fvd = {
            0: frechet_distance(
                *real, *gaussian_stats(extract_features(feature_fn, [second], max_examples=half))
            )
        }
        for sigma in (16, 64, 128):
            features = extract_features(
                feature_fn, _noisy([second], sigma, seed=sigma), max_examples=half
            )
            fvd[sigma] = frechet_distance(*real, *gaussian_stats(features))
    print("FVD by noise sigma (uint8 scale):", {k: round(v, 1) for k, v in fvd.items()})
    assert 0 < fvd[0] < fvd[16] < fvd[64] < fvd[128]
    assert fvd[128] > 5 * fvd[0]
