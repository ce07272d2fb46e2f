"""Frechet distance: equals the sqrtm closed form, is a (squared) distance, stays finite
on singular covariances, grows with a mean shift; gaussian_stats warns when rank-deficient."""

import warnings

import numpy as np
import pytest
import scipy.linalg

from videogen.evaluation.frechet import (
    RankDeficientCovarianceWarning,
    frechet_distance,
    gaussian_stats,
)


def _sqrtm_reference(mu1, sigma1, mu2, sigma2) -> float:
    """The FID/FVD reference formula, with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(
        np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    )


def _correlated_gaussian(rng: np.random.Generator, n: int, d: int, shift: float) -> np.ndarray:
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift + rng.normal(size=d)


@pytest.mark.parametrize("d", [1, 3, 16, 64, 400])
def test_equals_sqrtm_closed_form(d):
    rng = np.random.default_rng(d)
    stats1 = gaussian_stats(_correlated_gaussian(rng, 3 * d + 10, d, 0.0))
    stats2 = gaussian_stats(_correlated_gaussian(rng, 3 * d + 10, d, 0.5))
    ours = frechet_distance(*stats1, *stats2)
    reference = _sqrtm_reference(*stats1, *stats2)
    assert ours > 0.01 * d  # a real distance, not a cancellation to ~0
    assert ours == pytest.approx(reference, rel=1e-6)


def test_gaussian_stats_is_float64_mean_and_unbiased_covariance():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 7)).astype(np.float32)
    mu, sigma = gaussian_stats(features)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, features.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        sigma, np.cov(features.astype(np.float64), rowvar=False, ddof=1), rtol=1e-10, atol=1e-14
    )


@pytest.mark.parametrize(("n", "d"), [(300, 64), (30, 64), (900, 400)])
def test_distance_to_itself_is_zero(n, d):
    rng = np.random.default_rng(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientCovarianceWarning)
        mu, sigma = gaussian_stats(_correlated_gaussian(rng, n, d, 3.0))
    assert np.trace(sigma) > 1.0
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_symmetric():
    rng = np.random.default_rng(2)
    stats1 = gaussian_stats(_correlated_gaussian(rng, 200, 32, 0.0))
    stats2 = gaussian_stats(_correlated_gaussian(rng, 200, 32, 1.0))
    forward = frechet_distance(*stats1, *stats2)
    assert forward > 1.0
    assert frechet_distance(*stats2, *stats1) == pytest.approx(forward, rel=1e-12)


def test_singular_covariances_match_exact_values():
    rng = np.random.default_rng(3)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    # A point mass against a Gaussian: d^2 = |mu1 - mu2|^2 + tr(S2).
    sigma2 = np.cov(rng.normal(size=(40, d)), rowvar=False)
    assert frechet_distance(mu1, np.zeros((d, d)), mu2, sigma2) == pytest.approx(
        mean_term + np.trace(sigma2), rel=1e-12
    )
    # Commuting diagonal covariances with zeros on the diagonal: tr sqrt(S1 S2) = sum sqrt(a b).
    a = np.array([0.0, 2.0, 0.0, 1.0, 4.0, 0.0])
    b = np.array([3.0, 0.5, 0.0, 0.0, 9.0, 1.0])
    expected = mean_term + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # Rotated into a dense basis, which sqrtm handles only approximately.
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    dense = frechet_distance(
        mu1, rotation @ np.diag(a) @ rotation.T, mu2, rotation @ np.diag(b) @ rotation.T
    )
    assert dense == pytest.approx(expected, rel=1e-9)


def test_rank_deficient_sample_covariances_are_exact_and_finite():
    """N < D on both sides: compare with tr sqrt computed on the N x N Gram side."""
    rng = np.random.default_rng(4)
    n, d = 20, 400
    x, y = 3.0 * rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientCovarianceWarning)
        (mu1, sigma1), (mu2, sigma2) = gaussian_stats(x), gaussian_stats(y)
    # S1 = Xc^T Xc, so S1 S2 has the nonzero eigenvalues of the small matrix Xc S2 Xc^T.
    xc = (x - mu1) / np.sqrt(n - 1)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(xc @ sigma2 @ xc.T), 0, None)).sum()
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert np.isfinite(ours)
    assert ours == pytest.approx(exact, rel=1e-9)


def test_grows_monotonically_with_mean_shift():
    rng = np.random.default_rng(5)
    features = _correlated_gaussian(rng, 500, 16, 0.0)
    mu, sigma = gaussian_stats(features)
    direction = rng.normal(size=16)
    direction /= np.linalg.norm(direction)
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    distances = [
        frechet_distance(mu, sigma, *gaussian_stats(features + s * direction)) for s in shifts
    ]
    assert distances[0] < 1e-6
    assert all(a < b for a, b in zip(distances, distances[1:]))
    # A pure shift changes only the mean term: d^2 = shift^2.
    np.testing.assert_allclose(distances, np.square(shifts), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("n", "d"), [(10, 10), (5, 32)])
def test_warns_when_fewer_samples_than_dimensions(n, d):
    features = np.random.default_rng(6).normal(size=(n, d))
    with pytest.warns(RankDeficientCovarianceWarning, match=f"at least {d + 1} samples"):
        gaussian_stats(features)


def test_no_warning_with_enough_samples():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gaussian_stats(np.random.default_rng(7).normal(size=(11, 10)))


def test_feature_dimension_mismatch_is_an_error():
    stats1 = gaussian_stats(np.random.default_rng(8).normal(size=(50, 4)))
    stats2 = gaussian_stats(np.random.default_rng(9).normal(size=(50, 5)))
    with pytest.raises(ValueError, match="feature dimensions differ: 4 vs 5"):
        frechet_distance(*stats1, *stats2)


def test_bad_inputs_are_errors():
    rng = np.random.default_rng(10)
    mu, sigma = gaussian_stats(rng.normal(size=(50, 4)))
    with pytest.raises(ValueError, match=r"covariance \(3, 3\)"):
        frechet_distance(mu, sigma[:3, :3], mu, sigma)
    with pytest.raises(ValueError, match="not positive semidefinite"):
        frechet_distance(mu, -sigma, mu, sigma)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu * np.nan, sigma, mu, sigma)
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        gaussian_stats(rng.normal(size=(1, 4)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        gaussian_stats(rng.normal(size=(3, 4, 5)))
