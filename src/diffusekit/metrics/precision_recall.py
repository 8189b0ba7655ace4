"""Improved precision and recall (Kynkaanniemi et al. 2019): k-NN manifolds in feature space.

Each set's manifold is the union of balls around its points, with radius the distance to the point's k-th
nearest neighbour within the set (k = 3 in the paper). Precision is the fraction of generated samples inside
the real manifold (fidelity); recall the fraction of real samples inside the generated one (coverage).
Distances are exact and computed in chunks, so memory stays bounded for tens of thousands of points.
"""

from __future__ import annotations

import numpy as np
import torch

from .memorization import nearest_neighbours

__all__ = ["precision_recall", "manifold_radii", "inside_manifold"]


def manifold_radii(points, k: int = 3, batch_size: int = 1024) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    points = torch.as_tensor(np.asarray(points), dtype=torch.float64)
    if points.shape[0] <= k:
        raise ValueError(f"a k-NN manifold with k={k} needs more than {k} points, got {points.shape[0]}")
    distances, _ = nearest_neighbours(points, points, k=k + 1, batch_size=batch_size)
    return distances[:, k]  # column 0 is the point itself (distance 0)


def inside_manifold(queries, points, radii: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """bool [Q]: whether each query lies within radius_j of some point j."""
    queries = torch.as_tensor(np.asarray(queries), dtype=torch.float64)
    points = torch.as_tensor(np.asarray(points), dtype=torch.float64)
    radii_sq = radii.to(torch.float64) ** 2
    point_sq = (points ** 2).sum(1)
    inside = torch.zeros(queries.shape[0], dtype=torch.bool)
    for q0 in range(0, queries.shape[0], batch_size):
        q = queries[q0:q0 + batch_size]
        q_sq = (q ** 2).sum(1, keepdim=True)
        hit = torch.zeros(q.shape[0], dtype=torch.bool)
        for p0 in range(0, points.shape[0], batch_size):
            p = points[p0:p0 + batch_size]
            d_sq = (q_sq - 2 * q @ p.T + point_sq[p0:p0 + batch_size]).clamp_min(0)
            hit |= (d_sq <= radii_sq[p0:p0 + batch_size]).any(1)
        inside[q0:q0 + batch_size] = hit
    return inside


def precision_recall(real_features, fake_features, k: int = 3, batch_size: int = 1024) -> dict:
    real = torch.as_tensor(np.asarray(real_features), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake_features), dtype=torch.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    precision = inside_manifold(fake, real, manifold_radii(real, k, batch_size), batch_size).double().mean()
    recall = inside_manifold(real, fake, manifold_radii(fake, k, batch_size), batch_size).double().mean()
    return {"precision": float(precision), "recall": float(recall), "pr_k": k}
