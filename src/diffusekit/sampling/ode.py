"""Deterministic samplers of the probability-flow ODE ``d x_t / dt = d_alpha x0_hat + d_sigma eps_hat``.

- ``euler``: Euler in t on the schedule's own ODE (on ``rectified_flow``: flow matching's Euler).
- ``heun``: EDM Algorithm 1 (Karras et al. 2022) in its general (s(t), sigma(t)) form, s = alpha and
  sigma_EDM = sigma / alpha: Heun steps, the last one (to t = 0) Euler.
- ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): a data-prediction exponential integrator
  in lambda = log(alpha / sigma), second order through the previous x0_hat.
- ``multistep``: the same exponential integrator to any order k (default 3): x0_hat is interpolated
  through the last k points as a polynomial in lambda and the integral of e^{-(h - tau)} P(tau) over the
  step is taken exactly (Gauss-Legendre in float64). This is the exponential Adams-Bashforth method of
  DEIS (Zhang & Chen 2023) in lambda with data prediction. Unlike the published DPM-Solver++(3M), whose
  second-difference term carries half the Taylor weight, every order here is exact for polynomial
  x0_hat, which the convergence test checks. ``corrector=True`` adds UniPC's corrector (Zhao et al.
  2023, UniC): once x0_hat at the new point is known (it is needed for the next step anyway), the step
  just taken is redone with it as one more interpolation node, raising the order by one at no extra
  evaluation. The final step to t = 0 is a denoising step and is not corrected. With
  ``lower_order_final`` (default), grids of fewer than 15 steps take the step onto the last nonzero time
  at order <= 2, as DPM-Solver does: that step is long in lambda and high-order extrapolation over it
  hurts at low NFE.

All of them are written in x_t with coefficients that stay finite at alpha = 0, so they start at t = 1 on
rectified-flow and zero-terminal-SNR schedules.
"""

from __future__ import annotations

import math

import numpy as np

from ._step import after_step, call_denoise, heun_step, velocity
from .grid import Grid

__all__ = ["euler", "heun", "dpmpp_2m", "multistep"]


def euler(denoise, x, grid: Grid, *, cond, callback, measure=None):
    for i in range(grid.steps):
        x0_hat = call_denoise(denoise, x, grid.t[i], cond)
        if callback is not None:
            callback({"i": i, "t": grid.t[i], "x": x, "x0_hat": x0_hat})
        x = x + (grid.t[i + 1] - grid.t[i]) * velocity(x, x0_hat, grid.velocity_coefficients(i))
        x = after_step(measure, x, i)
    return x


def heun(denoise, x, grid: Grid, *, cond, callback, measure=None):
    for i in range(grid.steps):
        x0_hat = call_denoise(denoise, x, grid.t[i], cond)
        if callback is not None:
            callback({"i": i, "t": grid.t[i], "x": x, "x0_hat": x0_hat})
        last = grid.t[i + 1] == 0.0
        coef_to = None if last else grid.velocity_coefficients(i + 1)
        x = heun_step(denoise, x, x0_hat, grid.t[i], grid.t[i + 1], grid.velocity_coefficients(i), coef_to, cond)
        x = after_step(measure, x, i)
    return x


def _first_order(grid: Grid, i: int) -> tuple[float, float]:
    """x_{i+1} = ratio * x_i + weight * x0_hat: the exact step for constant x0_hat (= DDIM, eta = 0).

    weight = alpha_next (1 - e^{-h}) with e^{-h} = (alpha_i sigma_next) / (alpha_next sigma_i), written so
    that it is finite at alpha_i = 0.
    """
    ratio = grid.sigma[i + 1] / grid.sigma[i]
    return ratio, grid.alpha[i + 1] - ratio * grid.alpha[i]


def dpmpp_2m(denoise, x, grid: Grid, *, cond, callback, measure=None):
    previous = None  # (x0_hat, lambda step that led to it)
    for i in range(grid.steps):
        x0_hat = call_denoise(denoise, x, grid.t[i], cond)
        if callback is not None:
            callback({"i": i, "t": grid.t[i], "x": x, "x0_hat": x0_hat})
        ratio, weight = _first_order(grid, i)
        h = grid.lam(i + 1) - grid.lam(i)
        d = x0_hat
        if previous is not None and grid.t[i + 1] > 0.0 and math.isfinite(previous[1]):
            r = previous[1] / h
            d = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * previous[0]
        x = after_step(measure, ratio * x + weight * d, i)
        previous = (x0_hat, h)
    return x


_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(24)


def _multistep_weights(lams: list[float], h: float, origin: float | None = None) -> np.ndarray:
    """Weights w_j with sum_j w_j D_j = int_0^h e^{-(h - tau)} P(tau) dtau, P the interpolant of D_j at
    tau_j = lams[j] - origin (origin: the step's start, by default lams[0])."""
    taus = np.asarray(lams, dtype=np.float64) - (lams[0] if origin is None else origin)
    tau = 0.5 * h * (_NODES + 1)  # Gauss-Legendre nodes on [0, h]
    kernel = 0.5 * h * _WEIGHTS * np.exp(-(h - tau))
    weights = np.empty(len(taus))
    for j in range(len(taus)):  # Lagrange basis polynomial L_j at the nodes
        others = np.delete(taus, j)
        basis = np.prod((tau[:, None] - others) / (taus[j] - others), axis=1)
        weights[j] = kernel @ basis
    return weights


def multistep(denoise, x, grid: Grid, *, cond, callback, measure=None, order: int = 3, corrector: bool = False,
              lower_order_final: bool = True):
    if not isinstance(order, int) or not 1 <= order <= 6:
        raise ValueError(f"multistep order must be an integer in 1..6, got {order!r}")
    history: list[tuple[float, object]] = []  # (lambda, x0_hat), newest first
    step = None  # (x_i, lambda_i, nodes) of the step just taken, for the corrector
    for i in range(grid.steps):
        x0_hat = call_denoise(denoise, x, grid.t[i], cond)
        if callback is not None:
            callback({"i": i, "t": grid.t[i], "x": x, "x0_hat": x0_hat})
        lam, lam_next = grid.lam(i), grid.lam(i + 1)
        if corrector and step is not None and grid.t[i + 1] > 0.0:
            # UniC (Zhao et al. 2023): redo the step just taken with the new x0_hat as one more node;
            # x0_hat itself is kept, so this costs no evaluation. (Not before the final denoising step,
            # whose output would not change.)
            x_prev, lam_prev, nodes = step
            nodes = [(lam, x0_hat)] + nodes
            w = _multistep_weights([p[0] for p in nodes], lam - lam_prev, origin=lam_prev) * grid.alpha[i]
            x = _combine(_first_order(grid, i - 1)[0], x_prev, w, nodes)
        history = ([(lam, x0_hat)] + history)[:order] if math.isfinite(lam) else []
        k = len(history)
        if lower_order_final and grid.steps < 15 and i == grid.steps - 2:
            k = min(k, 2)  # DPM-Solver's lower_order_final: long last steps amplify high-order extrapolation
        ratio, weight = _first_order(grid, i)
        step = (x, lam, history[:k]) if math.isfinite(lam) else None
        if k < 2 or not math.isfinite(lam_next):  # start, restart after t = 1, or the final denoising step
            x = after_step(measure, ratio * x + weight * x0_hat, i)
            continue
        nodes = history[:k]
        w = _multistep_weights([p[0] for p in nodes], lam_next - lam) * grid.alpha[i + 1]
        x = after_step(measure, _combine(ratio, x, w, nodes), i)
    return x


def _combine(ratio: float, x, weights, nodes):
    """ratio * x + sum_j weights_j * x0_hat_j, accumulated in place (one temporary, not one per term)."""
    out = x * ratio
    for w, (_, x0_hat) in zip(weights, nodes, strict=True):
        out.add_(x0_hat, alpha=float(w))
    return out
