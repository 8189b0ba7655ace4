"""Ancestral samplers: DDIM with eta (Song et al. 2021a, eq. 12 and 16) and DDPM (Ho et al. 2020).

One step from t to s < t on any Gaussian path, with eps_hat = (x_t - alpha_t x0_hat) / sigma_t:
    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,   z ~ N(0, I),
    c^2 = eta^2 * sigma_s^2 (1 - (alpha_t sigma_s / (alpha_s sigma_t))^2),
the second factor being the variance of q(x_s | x_t, x0) (the DDPM posterior). eta = 0 is deterministic
DDIM, which is Euler in (x / alpha, sigma / alpha); eta = 1 samples the DDPM posterior exactly, so
``ddpm`` is ``ddim`` with eta = 1. The step is finite at alpha_t = 0 (it then samples N(alpha_s x0_hat,
sigma_s^2)), and the last step to s = 0 returns x0_hat.
"""

from __future__ import annotations

import math

from ._step import after_step, call_denoise, randn_like
from .grid import Grid

__all__ = ["ddim", "ddpm", "ddim_coefficients"]


def ddim_coefficients(grid: Grid, i: int, eta: float) -> tuple[float, float, float]:
    """(coef_x, coef_x0, noise_std) with x_s = coef_x x_t + coef_x0 x0_hat + noise_std z."""
    a_t, s_t, a_s, s_s = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
    c2 = eta**2 * s_s**2 * (1 - (a_t * s_s / (a_s * s_t)) ** 2) if s_s > 0 else 0.0
    c2 = min(max(c2, 0.0), s_s**2)
    coef_x = math.sqrt(s_s**2 - c2) / s_t
    return coef_x, a_s - coef_x * a_t, math.sqrt(c2)


def ddim(denoise, x, grid: Grid, *, cond, callback, generator, measure=None, eta: float = 0.0):
    if not 0.0 <= eta:
        raise ValueError(f"eta must be >= 0, got {eta}")
    for i in range(grid.steps):
        x0_hat = call_denoise(denoise, x, grid.t[i], cond)
        if callback is not None:
            callback({"i": i, "t": grid.t[i], "x": x, "x0_hat": x0_hat})
        coef_x, coef_x0, noise_std = ddim_coefficients(grid, i, eta)
        x = coef_x * x + coef_x0 * x0_hat
        if noise_std > 0:
            x = x + noise_std * randn_like(x, generator)
        x = after_step(measure, x, i)
    return x


def ddpm(denoise, x, grid: Grid, *, cond, callback, generator, measure=None):
    return ddim(denoise, x, grid, cond=cond, callback=callback, generator=generator, measure=measure, eta=1.0)
