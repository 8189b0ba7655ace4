"""Improved precision/recall (Kynkaanniemi et al. 2019) on sets whose answers are known."""

import numpy as np
import pytest
import torch

from diffusekit.metrics.precision_recall import inside_manifold, manifold_radii, precision_recall


def _clusters(rng, centres, n):
    labels = rng.integers(0, len(centres), n)
    return centres[labels] + 0.1 * rng.normal(size=(n, centres.shape[1]))


def test_radii_are_the_kth_neighbour_distance():
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # neighbours of 0: 1, 3, 7 -> k=2 gives 3; of 7: 3, 1, 0 -> 6
    assert manifold_radii(points, k=2).tolist() == [3.0, 2.0, 3.0, 6.0]
    assert inside_manifold(torch.tensor([[2.0], [14.0]]), points, manifold_radii(points, k=1)).tolist() == [True, False]
    with pytest.raises(ValueError, match="more than 3 points"):
        manifold_radii(points[:3], k=3)


def test_same_distribution_high_disjoint_zero_and_mode_dropping_lowers_recall_only():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 8)) * 5
    real = _clusters(rng, centres, 1000)
    same = precision_recall(real, _clusters(rng, centres, 1000))
    assert same["precision"] > 0.8 and same["recall"] > 0.8  # k = 3 in 8-d: ~0.87, not 1
    far = precision_recall(real, _clusters(rng, centres + 100, 1000))
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    half = precision_recall(real, _clusters(rng, centres[:5], 1000))  # five of the ten modes, faithfully
    assert half["precision"] > 0.8 and 0.4 < half["recall"] < 0.6


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(300, 5)), rng.normal(size=(250, 5)) + 0.5
    assert precision_recall(real, fake, batch_size=1000) == precision_recall(real, fake, batch_size=37)
