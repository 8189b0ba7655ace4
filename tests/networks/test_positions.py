"""Relative position biases and rotary embeddings, against hand-written index arithmetic and rotation matrices."""

import math

import pytest
import torch

from diffusekit.networks.positions import RelativeBias2d, relative_bias_1d, rotate


def test_relative_bias_1d_is_the_table_at_the_clipped_distance():
    table = torch.randn(3, 2 * 2 + 1)  # max_distance 2: entries for distances -2..2
    positions = torch.tensor([0, 1, 2, 3, 7])
    bias = relative_bias_1d(table, positions)
    assert bias.shape == (3, 5, 5)
    for h in range(3):
        for i in range(5):
            for j in range(5):
                distance = min(max(int(positions[j] - positions[i]), -2), 2)
                assert bias[h, i, j] == table[h, 2 + distance]
    torch.testing.assert_close(relative_bias_1d(table, positions + 11), bias, rtol=0, atol=0)  # shift-invariant
    with pytest.raises(ValueError, match=r"\[heads, 2D \+ 1\]"):
        relative_bias_1d(torch.randn(3, 4), positions)


def test_relative_bias_2d_is_the_table_at_each_displacement():
    module = RelativeBias2d(2, 3, 4)
    assert module.table.shape == (2, 5, 7) and not module.table.any()  # (2H-1)(2W-1) per head, zero at init
    assert list(dict(module.named_parameters())) == ["table"] and not module.state_dict().keys() - {"table"}
    with torch.no_grad():
        module.table.normal_()
    bias = module(3, 4)
    coords = [(y, x) for y in range(3) for x in range(4)]  # row-major tokens
    for h in range(2):
        for i, (yi, xi) in enumerate(coords):
            for j, (yj, xj) in enumerate(coords):
                assert bias[h, i, j] == module.table[h, yj - yi + 2, xj - xi + 3]
    # Translation: the pair (i, j) and the pair moved by (1, 1) get the same bias.
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            if max(yi, yj) < 2 and max(xi, xj) < 3:
                assert bias[0, i, j] == bias[0, i + 5, j + 5]  # +1 row (4 tokens) +1 column
    with pytest.raises(ValueError, match="built for a 3x4 map, got 4x4"):
        module(4, 4)


def rotation(position: float, dim: int, base: float = 10_000.0) -> torch.Tensor:
    """The block-diagonal rotation of RoFormer eq. (15): 2x2 blocks of angle position * base^(-2m/dim)."""
    matrix = torch.zeros(dim, dim, dtype=torch.float64)
    for m in range(dim // 2):
        angle = position * base ** (-2 * m / dim)
        c, s = math.cos(angle), math.sin(angle)
        matrix[2 * m: 2 * m + 2, 2 * m: 2 * m + 2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return matrix


def test_rotate_is_the_block_rotation_and_dot_products_depend_on_the_offset_only():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=gen)
    positions = torch.tensor([0.0, 1.0, 3.0, 4.0, 9.0])
    rotated = rotate(x, positions)
    for f, p in enumerate(positions.tolist()):
        torch.testing.assert_close(rotated[:, f], x[:, f] @ rotation(p, 8).T)
    q, k = torch.randn(8, dtype=torch.float64, generator=gen), torch.randn(8, dtype=torch.float64, generator=gen)

    def score(i: int, j: int) -> torch.Tensor:
        pair = rotate(torch.stack([q, k]), torch.tensor([i, j]))
        return pair[0] @ pair[1]

    torch.testing.assert_close(score(2, 5), score(12, 15))
    torch.testing.assert_close(score(2, 5), q @ (rotation(3, 8) @ k))  # R_i^T R_j = R_(j-i)
    assert abs(float(score(2, 5) - score(2, 6))) > 1e-3
    with pytest.raises(ValueError, match="even number"):
        rotate(torch.randn(5, 7), torch.arange(5))
