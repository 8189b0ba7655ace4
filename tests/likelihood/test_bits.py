"""Uniform dequantisation of 8-bit images and bits per dimension, against hand-computed values."""

import math

import pytest
import torch
from scipy import stats

from diffusekit.likelihood import bits_per_dim, bits_summary, dequantization_nats, dequantize


def test_dequantize_fills_each_pixel_cell():
    """z = (x + u - 1/2) / 127.5 - 1: the cell of x is centred on the training value x / 127.5 - 1, width 1/127.5."""
    pixels = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).repeat(5000, 1)
    z = dequantize(pixels, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    centre = torch.tensor([-1.0, 1 / 127.5 - 1, 128 / 127.5 - 1, 1.0], dtype=torch.float64)
    assert bool(((z - centre).abs() <= 0.5 / 127.5).all())
    torch.testing.assert_close(z.mean(0), centre, atol=2e-4, rtol=0)  # U[-1/255, 1/255) has std 0.0023 / sqrt(5000)
    assert float(z.min()) >= -1 - 1 / 255 and float(z.max()) < 1 + 1 / 255


def test_change_of_variables_constant_by_hand():
    assert dequantization_nats(1) == pytest.approx(4.848116365, abs=1e-9)  # log 127.5 = log 128 - log(128 / 127.5)
    assert dequantization_nats(784) == pytest.approx(784 * 4.848116365, abs=1e-6)
    assert bits_per_dim(dequantization_nats(3072), 3072) == pytest.approx(6.99435343, abs=1e-8)  # log2 127.5


def test_uniform_density_on_the_cube_is_eight_bits():
    """p_z uniform on [-1 - 1/255, 1 + 1/255]^D (side 512/255): -log p_z = D log(512/255), 8 bits/dim exactly."""
    dims = 3 * 8 * 8
    nll = torch.full((10,), dims * math.log(512 / 255), dtype=torch.float64)
    summary = bits_summary(nll, dims, {"prior": nll})
    assert summary["bpd"] == pytest.approx(8.0, abs=1e-12)
    assert summary["bpd_stderr"] == 0.0
    assert summary["prior_bpd"] == pytest.approx(math.log2(512 / 255), abs=1e-12)
    assert summary["dequantization"] == "uniform" and summary["n"] == 10


def test_factorised_gaussian_bound_is_nearly_tight():
    """A density N(mu, s^2) per dimension, wide next to a cell: the bound E_u[-log p_z(z)] + log 127.5 exceeds the
    exact -log P(x) = -log(Phi(b) - Phi(a)) over the cell by only the Jensen gap (~Var_u[log p] / 2, <= 1.2e-4 here),
    so a wrong constant (log 128 instead of log 127.5 would be 0.0039 nats off) shows."""
    mu, s = 0.1, 0.4
    pixels = torch.tensor([[0, 30, 128, 200, 255]], dtype=torch.float64)
    z_x = pixels / 127.5 - 1
    lo, hi = (pixels - 0.5) / 127.5 - 1, (pixels + 0.5) / 127.5 - 1
    exact = -torch.log(torch.from_numpy(stats.norm.cdf(hi.numpy(), mu, s) - stats.norm.cdf(lo.numpy(), mu, s)))
    # E_u[(z - mu)^2] = (z_x - mu)^2 + Var(u) / 127.5^2, Var(u) = 1/12
    expected_log_density = 0.5 * math.log(2 * math.pi * s * s) + ((z_x - mu) ** 2 + 1 / (12 * 127.5**2)) / (2 * s * s)
    bound = expected_log_density + dequantization_nats(1)
    assert bool((bound >= exact).all())
    torch.testing.assert_close(bound, exact, atol=2e-4, rtol=0)
    # the Monte-Carlo version of the same bound through dequantize
    z = dequantize(pixels.repeat(20000, 1), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mc = (0.5 * math.log(2 * math.pi * s * s) + (z - mu) ** 2 / (2 * s * s)).mean(0) + dequantization_nats(1)
    torch.testing.assert_close(mc, bound[0], atol=5e-4, rtol=0)  # MC std ~1.1e-4


def test_bad_pixels():
    with pytest.raises(ValueError, match="range \\[-1, 1\\]"):
        dequantize(torch.tensor([[-1.0, 0.5, 1.0]]).round())
    with pytest.raises(ValueError, match="non-integer"):
        dequantize(torch.tensor([[0.5, 3.0]]))
    with pytest.raises(ValueError, match="range \\[0, 256\\]"):
        dequantize(torch.tensor([[0, 256]]))
    with pytest.raises(ValueError, match="dims must be >= 1"):
        bits_per_dim(1.0, 0)
