"""Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 between feature sets with the cubic
polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets.

Defaults follow torch-fidelity / clean-fid: 100 subsets of 1000 (or of the smaller set's size when it has
fewer; when both sets have exactly that size every subset is the whole set, so one value is computed and its
std is 0). The estimator per subset pair (m samples each) is

    sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2,

unbiased, so it can be slightly negative for identical distributions. Reported raw (papers often print
KID x 1000).
"""

from __future__ import annotations

import numpy as np

__all__ = ["kid", "polynomial_mmd2"]


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equally sized feature sets."""
    m = x.shape[0]
    if m < 2 or y.shape[0] != m:
        raise ValueError(f"need two sets of the same size >= 2, got {x.shape[0]} and {y.shape[0]}")
    kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    off = m * (m - 1)
    return float((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())


def kid(features_a, features_b, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """KID mean and standard deviation over ``num_subsets`` random subset pairs (drawn without replacement
    within a subset)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {a.shape} and {b.shape}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    if m == a.shape[0] == b.shape[0]:  # every "subset" is the whole set in another order: one value, exactly
        value = polynomial_mmd2(a, b)
        return {"kid": value, "kid_std": 0.0, "kid_subsets": 1, "kid_subset_size": m}
    rng = np.random.default_rng(seed)
    values = np.array([polynomial_mmd2(a[rng.choice(a.shape[0], m, replace=False)],
                                       b[rng.choice(b.shape[0], m, replace=False)]) for _ in range(num_subsets)])
    return {"kid": float(values.mean()), "kid_std": float(values.std()), "kid_subsets": num_subsets,
            "kid_subset_size": m}
