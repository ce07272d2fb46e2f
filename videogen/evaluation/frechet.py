"""Frechet distance between Gaussians fitted to features: the core of FID and FVD.

  d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

Everything runs in float64 on the host (numpy), as the reference FID/FVD code
does: the trace terms of 400- or 2048-dimensional covariances cancel to a few
digits, which float32 cannot hold.

tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2.
Factor each covariance as S = A A^T with A = V diag(sqrt(l)) from a symmetric
eigendecomposition; S1 S2 = A1 (A1^T A2) A2^T is similar to
(A1^T A2)(A1^T A2)^T, so the trace is the sum of the singular values of
A1^T A2 (its nuclear norm). Why this rather than `scipy.linalg.sqrtm(S1 @ S2)`:
eigh and the SVD are backward stable and real, so singular covariances (fewer
samples than dimensions, constant features) need neither sqrtm's complex-part
check nor the "add eps to the diagonal and retry" fallback; and the singular
values are square roots already, so small ones keep their precision instead
of being squared below the rounding level as in an eigendecomposition of the
product. It agrees with the sqrtm route to ~1e-13 relative and is no slower
at D = 2048.
"""

from __future__ import annotations

import warnings

from jaxtyping import Float
import numpy as np


class RankDeficientCovarianceWarning(UserWarning):
    """Fewer samples than feature dimensions: the covariance estimate is singular."""


def gaussian_stats(
    features: Float[np.ndarray, "n d"],
) -> tuple[Float[np.ndarray, "d"], Float[np.ndarray, "d d"]]:
    """Mean [D] and unbiased (N - 1) covariance [D, D] of features [N, D], in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(
            f"features must be [N, D], got shape {features.shape}; "
            "flatten everything but the feature axis into N first."
        )
    n, d = features.shape
    if n < 2:
        raise ValueError(
            f"an unbiased covariance needs at least 2 feature vectors, got N={n}; "
            "evaluate more examples."
        )
    if not np.isfinite(features).all():
        raise ValueError(
            f"features contain {np.count_nonzero(~np.isfinite(features))} non-finite "
            "values; check the feature network's input (NaN samples from the model?)."
        )
    if n <= d:
        warnings.warn(
            f"{n} samples of {d}-dimensional features: the covariance has rank <= {n - 1} < {d}, "
            f"so the Frechet distance is defined but biased and noisy. A full-rank estimate needs "
            f"at least {d + 1} samples (the reference FID/FVD protocols use thousands).",
            RankDeficientCovarianceWarning,
            stacklevel=2,
        )
    mu = features.mean(axis=0)
    centered = features - mu
    sigma = centered.T @ centered / (n - 1)
    return mu, sigma


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: mean must be [D] and covariance [D, D]; got mean {mu.shape} and "
            f"covariance {sigma.shape}. Use gaussian_stats(features [N, D])."
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mean or covariance contains NaN/inf; recompute the statistics.")


def _resolved(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues with those below eigh's rounding level set to zero.

    eigh's absolute error is ~ D * eps * max|eigenvalue| (numpy's matrix_rank
    tolerance). Below that an eigenvalue is noise, and its square root
    (~1e-8 of the scale) would otherwise add up over the hundreds of null
    directions of a covariance from fewer samples than dimensions.
    """
    tolerance = (
        eigenvalues.shape[0] * np.finfo(np.float64).eps * np.abs(eigenvalues).max(initial=0.0)
    )
    return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


def _psd_factor(sigma: Float[np.ndarray, "d d"], name: str) -> Float[np.ndarray, "d d"]:
    """A with A @ A.T == sigma, for a symmetric positive-semidefinite sigma.

    eigh reads one triangle, so rounding asymmetry of a sample covariance is harmless.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    # Rounding leaves negative eigenvalues of ~1e-16 of the largest; far below
    # that, the matrix is no covariance and clipping would hide the bug.
    if eigenvalues[0] < -1e-6 * max(eigenvalues[-1], 0.0) or eigenvalues[-1] < 0:
        raise ValueError(
            f"{name}: covariance is not positive semidefinite (eigenvalues from "
            f"{eigenvalues[0]:.3g} to {eigenvalues[-1]:.3g}); pass a covariance "
            "matrix, e.g. from gaussian_stats."
        )
    return eigenvectors * np.sqrt(_resolved(eigenvalues))


def frechet_distance(
    mu1: Float[np.ndarray, "d"],
    sigma1: Float[np.ndarray, "d d"],
    mu2: Float[np.ndarray, "d"],
    sigma2: Float[np.ndarray, "d d"],
) -> float:
    """Frechet distance as FID/FVD report it: the squared 2-Wasserstein distance
    between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, sigma1, mu2, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, sigma1, mu2, sigma2))
    _check_gaussian(mu1, sigma1, "first distribution")
    _check_gaussian(mu2, sigma2, "second distribution")
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}. Both "
            "statistics must come from the same feature network and layer "
            "(e.g. I3D logits: 400, Inception pool3: 2048)."
        )
    factor1 = _psd_factor(sigma1, "first distribution")
    factor2 = _psd_factor(sigma2, "second distribution")
    trace_sqrt = np.linalg.svd(factor1.T @ factor2, compute_uv=False).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    # A squared distance; it dips below zero only by rounding when the Gaussians are equal.
    return float(max(distance, 0.0))
