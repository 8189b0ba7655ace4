"""The Frechet distance between two Gaussians, the number behind FID (Heusel et al. 2017):

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

pytorch-fid takes ``scipy.linalg.sqrtm(S1 @ S2)``, a non-symmetric square root that can come back complex
or non-finite and is then retried with ``eps * I`` added. We use the identity
``tr((S1 S2)^(1/2)) = tr((R S2 R)^(1/2))`` with ``R = S1^(1/2)`` (the eigenvalues of S1 S2 and of R S2 R are
the same), where every matrix is symmetric positive semi-definite, so two ``eigh`` calls in float64 give
the trace exactly up to rounding, also for the rank-deficient covariances of fewer samples than
dimensions. Tests check it against closed forms and against ``sqrtm``.
"""

from __future__ import annotations

import numpy as np

from .stats import FeatureStats, check_compatible

__all__ = ["frechet_distance", "fid_from_stats", "trace_sqrt_product"]


def _clean(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise set to 0: sqrt would turn each +-1e-16 of a rank-deficient
    covariance (fewer samples than dimensions) into 1e-8 and add hundreds of them to the trace."""
    floor = max(float(values.max(initial=0.0)), 0.0) * values.size * np.finfo(np.float64).eps
    return np.where(values > floor, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_clean(values))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric positive semi-definite S1, S2."""
    root = _psd_sqrt(np.asarray(sigma1, np.float64))
    inner = root @ np.asarray(sigma2, np.float64) @ root
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(_clean(values)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))  # rounding can leave -1e-12 for identical inputs


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    check_compatible(a, b)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
