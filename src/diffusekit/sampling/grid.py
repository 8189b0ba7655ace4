"""The schedule evaluated once on a sampling grid, in float64, as plain Python numbers.

Samplers precompute every per-step coefficient here, so the hot loop is a few fused tensor ops with no
device syncs and no schedule calls; the coefficients are exact to float64 whatever the sampler dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..schedules import Schedule

__all__ = ["Grid", "evaluate_grid", "check_grid"]


@dataclass(frozen=True)
class Grid:
    t: list[float]
    alpha: list[float]
    sigma: list[float]
    d_alpha: list[float]
    d_sigma: list[float]

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def lam(self, i: int) -> float:
        """half log-SNR, log(alpha / sigma): -inf at alpha = 0, +inf at sigma = 0."""
        a, s = self.alpha[i], self.sigma[i]
        if a == 0.0:
            return -math.inf
        if s == 0.0:
            return math.inf
        return math.log(a) - math.log(s)

    def ve_sigma(self, i: int) -> float:
        return math.inf if self.alpha[i] == 0.0 else self.sigma[i] / self.alpha[i]

    def velocity_coefficients(self, i: int) -> tuple[float, float]:
        """(a, b) with ``d x_t / dt = a * x0_hat + b * x_t`` at grid point i (derived.velocity_from_x0)."""
        b = self.d_sigma[i] / self.sigma[i]
        return self.d_alpha[i] - b * self.alpha[i], b


def check_grid(ts: Tensor) -> Tensor:
    ts = torch.as_tensor(ts, dtype=torch.float64).detach().cpu()
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError(f"ts must be a 1-D grid of at least 2 times, got shape {tuple(ts.shape)}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("ts must be strictly decreasing")
    if float(ts[-1]) != 0.0 or float(ts[0]) > 1.0 or not bool(torch.isfinite(ts).all()):
        raise ValueError(f"ts must lie in [0, 1] and end in exactly 0, got {ts[0].item()} .. {ts[-1].item()}")
    return ts


def evaluate_grid(schedule: Schedule, ts: Tensor) -> Grid:
    ts = check_grid(ts)
    at = schedule(ts)
    values = [v.tolist() for v in (at.t, at.alpha, at.sigma, at.d_alpha, at.d_sigma)]
    return Grid(*values)
