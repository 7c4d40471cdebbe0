"""Fréchet distance between two sets of feature vectors (FVD when the features are I3D logits).

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))

The trace term is the delicate part. With fewer samples than feature dimensions (1,000 videos,
400 logits is fine, a 16-video smoke test is not) the covariances are singular, and the usual
`scipy.linalg.sqrtm(S1 @ S2)` returns complex values or NaN, which FID code patches with an
eps * I offset. Here the trace is computed from symmetric eigendecompositions instead:

    tr(sqrt(S1 S2)) = tr(sqrt(A S2 A)),  A = sqrt(S1)

S1 S2 is similar to A S2 A (A^-1 (A S2 A) A = S1 S2 when A is invertible, and by continuity
otherwise), which is symmetric positive semi-definite: its eigenvalues come from `eigh`, are real,
and those below rounding level are set to 0 before the square root. Nothing goes complex, and
singular inputs need no offset. The offset remains only as a fallback when LAPACK's eigh does
not converge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS_OFFSET = 1e-6


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a feature set (float64), and how many samples made them."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {x.shape}")
        if x.shape[0] < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf")
        return cls(mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False), n=x.shape[0])


def _clean(w: np.ndarray) -> np.ndarray:
    """Eigenvalues below the matrix's rounding level (numpy's matrix_rank tolerance) are zero.

    A singular covariance's zero eigenvalues come out of eigh as +-1e-16-ish noise; their square
    roots (1e-8) would add up to a visible bias over hundreds of dimensions.
    """
    tol = float(np.abs(w).max(initial=0.0)) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(mat: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh((mat + mat.T) / 2)
    return (v * np.sqrt(_clean(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(sigma1 @ sigma2)) for symmetric PSD matrices, via symmetric eigendecompositions."""
    if sigma1.shape != sigma2.shape or sigma1.ndim != 2 or sigma1.shape[0] != sigma1.shape[1]:
        raise ValueError(f"covariances must be square and equal in shape: {sigma1.shape} vs {sigma2.shape}")
    try:
        return _trace_sqrt(sigma1, sigma2)
    except np.linalg.LinAlgError:
        # The classic FID fallback: a tiny ridge makes both matrices well conditioned.
        offset = np.eye(sigma1.shape[0]) * EPS_OFFSET
        return _trace_sqrt(sigma1 + offset, sigma2 + offset)


def _trace_sqrt(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    a = _psd_sqrt(sigma1)
    m = a @ sigma2 @ a
    return float(np.sqrt(_clean(np.linalg.eigvalsh((m + m.T) / 2))).sum())


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between two Gaussians; never negative (rounding below 0 is clipped)."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    diff = a.mu - b.mu
    tr = float(np.trace(a.sigma) + np.trace(b.sigma)) - 2.0 * trace_sqrt_product(a.sigma, b.sigma)
    return max(0.0, float(diff @ diff) + tr)


def fvd(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD between two feature sets [N, D] and [M, D]."""
    return frechet_distance(FeatureStats.of(features_a), FeatureStats.of(features_b))


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index halves of range(n), drawn by seed (the real-vs-real floor)."""
    if n < 4:
        raise ValueError(f"need at least 4 samples to split into two halves of 2, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(perm[:half]), np.sort(perm[half : 2 * half])
