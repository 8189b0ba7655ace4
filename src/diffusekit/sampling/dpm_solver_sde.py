"""DPM-Solver++(3M) SDE: the third-order multistep solver of the reverse SDE in log-SNR with data prediction.

Lu et al. 2022b ("DPM-Solver++") give the SDE-DPM-Solver++ solvers: the exact solution
of the reverse SDE's linear part in lambda = log(alpha / sigma), with x0_hat approximated by a polynomial
through past evaluations. With eta scaling the injected noise (eta = 1: the reverse SDE, eta = 0: the
probability-flow ODE) and h_eta = (1 + eta) h over a step h = lambda_s - lambda_t, one step from t to s is,
in x_hat = x / alpha (the VE variable, ve_sigma = e^{-lambda}):

    x_hat_s = e^{-h_eta} x_hat_t + (1 - e^{-h_eta}) D + phi_2 d1 - phi_3 d2 + ve_s sqrt(1 - e^{-2 eta h}) s_noise z,
    phi_2 = 1 - (1 - e^{-h_eta}) / h_eta,   phi_3 = phi_2 / h_eta - 1/2,

with D the newest x0_hat and, from the last three x0_hat at step ratios r0 = h_1 / h and r1 = h_2 / h
(h_1, h_2: the two previous steps' lengths), the scaled divided differences
    d1_0 = (D - D_1) / r0,  d1_1 = (D_1 - D_2) / r1,
    d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1),  d2 = (d1_0 - d1_1) / (r0 + r1):
the third-order extension (DPM-Solver++(3M) differences under the SDE's h_eta) that k-diffusion ships as
``sample_dpmpp_3m_sde``; with two x0_hat it is second order (d2 = 0, d1 = d1_0), with one first order.

In x_t = alpha x_hat (multiply through by alpha_s): the coefficient of x_t is (sigma_s / sigma_t) e^{-eta h},
the x0_hat terms carry alpha_s and the noise sigma_s sqrt(1 - e^{-2 eta h}) s_noise. Every coefficient is
finite at alpha_t = 0 (h = inf, the start t = 1 of rectified flow): that step is first order and, for eta > 0,
forgets x_t entirely (it draws x_s ~ N(alpha_s x0_hat, sigma_s^2)); an x0_hat taken at alpha = 0 is not
used as a history point (its step is infinitely long, so its weight vanishes in the limit). The last step to
t = 0 returns x0_hat.

Noise: one N(0, I) draw per step (but the last) from ``generator``, independent between steps. k-diffusion
draws by default from a Brownian tree (``BrownianTreeNoiseSampler``: increments of one Brownian path over
ve_sigma), which makes samples at different step counts follow the same path; with a ``noise_sampler`` that
returns the same normal draws as ours the two give the same samples.
"""

from __future__ import annotations

import math

from ._step import after_step, call_denoise, randn_like
from .grid import Grid

__all__ = ["dpmpp_3m_sde"]


def _phis(h_eta: float) -> tuple[float, float, float]:
    """(1 - e^{-h_eta}, phi_2, phi_3), finite at h_eta = inf."""
    if math.isinf(h_eta):
        return 1.0, 1.0, -0.5
    one_minus = -math.expm1(-h_eta)
    phi_2 = 1.0 - one_minus / h_eta
    return one_minus, phi_2, phi_2 / h_eta - 0.5


def dpmpp_3m_sde(denoise, x, grid: Grid, *, cond, callback, generator, measure=None, eta: float = 1.0,
                 s_noise: float = 1.0):
    if not (eta >= 0 and s_noise >= 0):
        raise ValueError(f"eta and s_noise must be >= 0, got {eta}, {s_noise}")
    history: list[tuple[object, float]] = []  # (x0_hat, length of the step that followed it), newest first
    for i in range(grid.steps):
        x0_hat = call_denoise(denoise, x, grid.t[i], cond)
        if callback is not None:
            callback({"i": i, "t": grid.t[i], "x": x, "x0_hat": x0_hat})
        if grid.sigma[i + 1] == 0.0:  # the denoising step
            x = after_step(measure, x0_hat, i)
            continue
        h = grid.lam(i + 1) - grid.lam(i)  # inf from alpha = 0
        h_eta = h * (1 + eta)
        one_minus, phi_2, phi_3 = _phis(h_eta)
        decay = math.exp(-eta * h) if eta > 0 else 1.0  # e^{-eta h}; eta = 0 keeps it 1 even at h = inf
        a_s = grid.alpha[i + 1]
        out = x * (grid.sigma[i + 1] / grid.sigma[i] * decay)
        out.add_(x0_hat, alpha=a_s * one_minus)
        if len(history) >= 2:
            (d_1, h_1), (d_2, h_2) = history[0], history[1]
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (x0_hat - d_1) / r0
            d1_1 = (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            out.add_(d1, alpha=a_s * phi_2).add_(d2, alpha=-a_s * phi_3)
        elif len(history) == 1:
            d_1, h_1 = history[0]
            out.add_((x0_hat - d_1) / (h_1 / h), alpha=a_s * phi_2)
        if eta > 0:
            noise_std = grid.sigma[i + 1] * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise
            out.add_(randn_like(x, generator), alpha=noise_std)
        history = [(x0_hat, h)] + history[:1] if math.isfinite(h) else []
        x = after_step(measure, out, i)
    return x
