"""Stochastic samplers: EDM's churn (Algorithm 2) and Euler-Maruyama on the reverse SDE.

``edm_churn`` (Karras et al. 2022, Algorithm 2): before each Heun step, raise the noise level from
ve_sigma_i to (1 + gamma_i) ve_sigma_i by adding fresh noise, gamma_i = min(S_churn / N, sqrt(2) - 1)
where S_tmin <= ve_sigma_i <= S_tmax (EDM's t is our ve_sigma), noise std inflated by S_noise. In x_t
with alpha != 1 the noise is added to x_t / alpha. A raised level beyond the schedule's t = 1 is capped
at t = 1, and a step that starts at alpha = 0 (already pure noise) is not churned.

``euler_maruyama``: the family of reverse SDEs sharing the marginals of the path (Karras et al.
2022, eq. 6; in the VP-SDE's notation beta(t) = g^2 / (2 sigma^2)),
    dx = [velocity(x, t) - g(t)^2 / 2 * score(x, t)] dt + g(t) dW,  integrated from t = 1 to 0,
with the diffusion coefficient selectable through ``g``:
- ``"forward"`` (default): the forward process's own g^2 = 2 sigma^2 (d_sigma / sigma - d_alpha / alpha),
  i.e. Song et al. 2021's reverse-time SDE (beta = d ve_sigma/dt / ve_sigma);
- a number ``c >= 0``: g^2 = c * forward (0 is the ODE);
- a callable ``g(t: float) -> float``.
The last step to t = 0 returns x0_hat (Tweedie's denoising step; an Euler-Maruyama step there would
divide by sigma = 0). Where g^2 is infinite (the forward g at alpha = 0, e.g. t = 1 on rectified flow)
that step is taken with g = 0.
"""

from __future__ import annotations

import math

from ._step import after_step, call_denoise, heun_step, randn_like
from .grid import Grid

__all__ = ["edm_churn", "euler_maruyama"]


def edm_churn(denoise, x, grid: Grid, *, cond, callback, generator, schedule, measure=None,
        S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0):
    if S_churn < 0 or S_noise < 0:
        raise ValueError(f"S_churn and S_noise must be >= 0, got {S_churn}, {S_noise}")
    n = grid.steps
    for i in range(n):
        ve_sigma = grid.ve_sigma(i)
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= ve_sigma <= S_tmax else 0.0
        t_hat, coef_hat, alpha_i = grid.t[i], grid.velocity_coefficients(i), grid.alpha[i]
        if gamma > 0 and math.isfinite(ve_sigma):
            t_hat = float(schedule.t_from_ve_sigma((1 + gamma) * ve_sigma))
            hat = schedule(t_hat)
            ve_hat = float(hat.ve_sigma)
            if ve_hat > ve_sigma:  # Increase noise temporarily.
                scale = float(hat.alpha) / alpha_i
                extra = float(hat.alpha) * math.sqrt(ve_hat**2 - ve_sigma**2) * S_noise
                x = scale * x + extra * randn_like(x, generator)
                b = float(hat.d_sigma / hat.sigma)
                coef_hat = (float(hat.d_alpha) - b * float(hat.alpha), b)
            else:
                t_hat = grid.t[i]
        x0_hat = call_denoise(denoise, x, t_hat, cond)
        if callback is not None:
            callback({"i": i, "t": t_hat, "x": x, "x0_hat": x0_hat})
        coef_to = None if grid.t[i + 1] == 0.0 else grid.velocity_coefficients(i + 1)
        x = heun_step(denoise, x, x0_hat, t_hat, grid.t[i + 1], coef_hat, coef_to, cond)
        x = after_step(measure, x, i)
    return x


def _forward_g2(grid: Grid, i: int) -> float:
    a, s, da, ds = grid.alpha[i], grid.sigma[i], grid.d_alpha[i], grid.d_sigma[i]
    if a == 0.0:
        return math.inf if da != 0.0 else 2 * s * ds
    return 2 * s * ds - 2 * s * s * da / a


def euler_maruyama(denoise, x, grid: Grid, *, cond, callback, generator, measure=None, g="forward"):
    if callable(g):
        g2_at = lambda i: float(g(grid.t[i])) ** 2  # noqa: E731
    elif g == "forward" or isinstance(g, (int, float)):
        scale = 1.0 if g == "forward" else float(g)
        if scale < 0:
            raise ValueError(f"g as a number scales the forward diffusion and must be >= 0, got {g}")
        g2_at = lambda i: scale * _forward_g2(grid, i) if scale else 0.0  # noqa: E731
    else:
        raise ValueError(f"g must be 'forward', a number >= 0 or a callable g(t), got {g!r}")
    for i in range(grid.steps):
        x0_hat = call_denoise(denoise, x, grid.t[i], cond)
        if callback is not None:
            callback({"i": i, "t": grid.t[i], "x": x, "x0_hat": x0_hat})
        if grid.t[i + 1] == 0.0:
            x = after_step(measure, x0_hat, i)
            continue
        h = grid.t[i + 1] - grid.t[i]  # negative
        g2 = g2_at(i)
        if not math.isfinite(g2):
            g2 = 0.0
        a, b = grid.velocity_coefficients(i)
        inv_s2 = 1.0 / grid.sigma[i] ** 2
        # drift = velocity - g^2/2 * score, score = (alpha x0_hat - x) / sigma^2
        c_x0 = a - 0.5 * g2 * grid.alpha[i] * inv_s2
        c_x = b + 0.5 * g2 * inv_s2
        x = x + h * (c_x0 * x0_hat + c_x * x)
        if g2 > 0:
            x = x + math.sqrt(g2 * -h) * randn_like(x, generator)
        x = after_step(measure, x, i)
    return x
