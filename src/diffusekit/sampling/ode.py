"""Deterministic samplers of the probability-flow ODE ``d x_t / dt = d_alpha x0_hat + d_sigma eps_hat``.

- ``euler``: Euler in t on the schedule's own ODE (on ``rectified_flow``: flow matching's Euler).
- ``heun``: EDM Algorithm 1 (Karras et al. 2022) in its general (s(t), sigma(t)) form, s = alpha and
  sigma_EDM = sigma / alpha: Heun steps, the last one (to t = 0) Euler.
- ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): a data-prediction exponential integrator
  in lambda = log(alpha / sigma), second order through the previous x0_hat.
- ``multistep``: the same exponential integrator to any order k (default 3): x0_hat is interpolated
  through the last k points as a polynomial in ve_sigma = sigma / alpha = e^{-lambda} (``variable="sigma"``,
  the default) or in lambda (``variable="lambda"``), and the integral of e^{-(h - tau)} P over the step is
  taken exactly (Gauss-Legendre in float64). In lambda this is the exponential Adams-Bashforth method of
  DEIS (Zhang & Chen 2023) with data prediction. ve_sigma is the better variable where steps are long in
  lambda: near the data x0_hat = x0 + O(ve_sigma^2) (Tweedie), a low-degree polynomial in ve_sigma but
  a sum of exponentials in lambda, which a polynomial in lambda extrapolates badly over the long low-noise
  steps of a few-step grid (at 5-10 steps on EDM's Karras grid, interpolating in lambda errs 2-15x more:
  ``benchmarks/multistep_gap.py``). With ``variable="sigma"`` the final step to sigma = 0 integrates the
  interpolant of eps = (x_t - alpha x0_hat) / sigma in ve_sigma exactly down to 0 (the data-prediction
  step has no finite form there), instead of the denoising step x = x0_hat. Unlike the published
  DPM-Solver++(3M), whose second-difference term carries half the Taylor weight, every order here is exact
  for polynomial x0_hat, which the convergence test checks. ``corrector=True`` adds UniPC's corrector idea
  (Zhao et al. 2023, UniC): once x0_hat at the new point is known (it is needed for the next step anyway),
  the step just taken is redone with it as one more interpolation node, raising the order by one at no
  extra evaluation; not before the final step, which starts from the point x0_hat was evaluated at. (The
  published UniPC, with its B(h) coefficients, is ``unipc``.) With ``lower_order_final`` (default), grids
  of fewer than 15 steps take the step onto the last nonzero time at order <= 2, as DPM-Solver does.
  ``prediction`` picks what is interpolated: ``"data"`` (default) x0_hat as above; ``"noise"`` eps =
  (x_t - alpha x0_hat) / sigma, a polynomial in ve_sigma integrated exactly in (x_t / alpha, ve_sigma)
  (Adams-Bashforth in ve_sigma, k-diffusion's ``sample_lms``); ``"switch"`` data prediction above
  ve_sigma = 1 and noise prediction at or below it. Data prediction is the better choice on few-step
  Karras grids; on grids whose low-noise steps are short and nearly uniform in ve_sigma (uniform
  rectified-flow time) eps varies more smoothly than x0_hat there, and ``"switch"`` with order 4 errs
  2-3x less than data prediction at 50-100 steps (``benchmarks/multistep_gap.py``).

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
VARIABLES = ("sigma", "lambda")
PREDICTIONS = ("data", "noise", "switch")


def _basis_variable(variable: str, lam: np.ndarray) -> np.ndarray:
    """The variable x0_hat is interpolated in: ve_sigma = e^{-lambda} or lambda itself."""
    return np.exp(-lam) if variable == "sigma" else lam


def _multistep_weights(lams: list[float], h: float, origin: float | None = None,
                       variable: str = "sigma") -> np.ndarray:
    """Weights w_j with sum_j w_j D_j = int_0^h e^{-(h - tau)} P(lambda_0 + tau) dtau, P the interpolant of
    D_j at lams[j] as a polynomial in ``variable`` (ve_sigma = e^{-lambda}, or lambda), lambda_0 the step's
    start (``origin``, by default lams[0]). 24-point Gauss-Legendre in lambda: the integrand is a sum of
    exponentials in lambda, smooth over any finite step."""
    start = lams[0] if origin is None else origin
    tau = 0.5 * h * (_NODES + 1)  # Gauss-Legendre nodes on [0, h]
    kernel = 0.5 * h * _WEIGHTS * np.exp(-(h - tau))
    at = _basis_variable(variable, start + tau)
    nodes = _basis_variable(variable, np.asarray(lams, dtype=np.float64))
    weights = np.empty(len(nodes))
    for j in range(len(nodes)):  # Lagrange basis polynomial L_j at the quadrature nodes
        others = np.delete(nodes, j)
        basis = np.prod((at[:, None] - others) / (nodes[j] - others), axis=1)
        weights[j] = kernel @ basis
    return weights


def _noise_weights(ve_sigmas: list[float], s_from: float, s_to: float) -> np.ndarray:
    """w_j = int_{s_to}^{s_from} L_j(s) ds, L_j the Lagrange basis in ve_sigma s at the nodes ``ve_sigmas``:
    the noise-prediction step x_hat(s_to) = x_hat(s_from) - sum_j w_j eps_j integrates the eps interpolant
    exactly (Gauss-Legendre, exact for these polynomials). s_to = 0 is the final step."""
    nodes = np.asarray(ve_sigmas, dtype=np.float64)
    half = 0.5 * (s_from - s_to)
    s = s_to + half * (_NODES + 1)
    weights = np.empty(len(nodes))
    for j in range(len(nodes)):
        others = np.delete(nodes, j)
        weights[j] = (half * _WEIGHTS) @ np.prod((s[:, None] - others) / (nodes[j] - others), axis=1)
    return weights


def multistep(denoise, x, grid: Grid, *, cond, callback, measure=None, order: int = 3, corrector: bool = False,
              lower_order_final: bool = True, variable: str = "sigma", prediction: str = "data"):
    if not isinstance(order, int) or not 1 <= order <= 6:
        raise ValueError(f"multistep order must be an integer in 1..6, got {order!r}")
    if variable not in VARIABLES:
        raise ValueError(f"multistep variable must be one of {', '.join(VARIABLES)}, got {variable!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"multistep prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    history: list[tuple] = []  # (lambda, x0_hat, the x_t it came from, alpha there), newest first
    step = None  # (x_i, i, nodes) of the step just taken, for the corrector
    for i in range(grid.steps):
        x0_hat = call_denoise(denoise, x, grid.t[i], cond)
        if callback is not None:
            callback({"i": i, "t": grid.t[i], "x": x, "x0_hat": x0_hat})
        lam, lam_next = grid.lam(i), grid.lam(i + 1)
        if corrector and step is not None and grid.t[i + 1] > 0.0:
            # UniC (Zhao et al. 2023): redo the step just taken with the new x0_hat as one more node;
            # x0_hat itself is kept, so this costs no evaluation. (Not before the final step, which
            # starts from the point x0_hat was evaluated at.)
            x_prev, i_prev, nodes = step
            x_eval, x = x, _advance(grid, i_prev, x_prev, [(lam, x0_hat, x, grid.alpha[i])] + nodes, variable,
                                    prediction)
        else:
            x_eval = x
        history = ([(lam, x0_hat, x_eval, grid.alpha[i])] + history)[:order] if math.isfinite(lam) else []
        k = len(history)
        if lower_order_final and grid.steps < 15 and i == grid.steps - 2:
            k = min(k, 2)  # DPM-Solver's lower_order_final: long last steps amplify high-order extrapolation
        step = (x, i, history[:k]) if math.isfinite(lam) else None
        final = not math.isfinite(lam_next)  # the step to sigma = 0
        if k < 2 or (final and variable == "lambda" and prediction == "data"):
            ratio, weight = _first_order(grid, i)  # start, restart after t = 1, or the final denoising step
            x = after_step(measure, ratio * x + weight * x0_hat, i)
            continue
        x = after_step(measure, _advance(grid, i, x, history[:k], variable, prediction), i)
    return x


def _advance(grid: Grid, i: int, x, nodes, variable: str, prediction: str):
    """x at grid point i + 1 from x at grid point i through the interpolant of ``nodes`` (newest first, the
    first at point i): the data-prediction step, or the noise-prediction one where ``prediction`` asks for it
    and on the step to sigma = 0."""
    lam, lam_next = grid.lam(i), grid.lam(i + 1)
    if prediction == "noise" or (prediction == "switch" and lam >= 0.0) or not math.isfinite(lam_next):
        return _noise_step(grid, i, x, nodes)
    w = _multistep_weights([p[0] for p in nodes], lam_next - lam, lam, variable) * grid.alpha[i + 1]
    return _combine(_first_order(grid, i)[0], x, w, nodes)


def _noise_step(grid: Grid, i: int, x, nodes):
    """The PF-ODE d x_hat / d s = eps (x_hat = x / alpha, s = sigma / alpha = e^{-lambda}) integrated from
    s_i to s_{i+1}, eps_j = (x_hat_j - x0_hat_j) / s_j interpolated in s through the nodes: Adams-Bashforth
    in ve_sigma, k-diffusion's ``sample_lms``. On the step to sigma = 0 the data-prediction form has no
    finite limit (lambda = inf); in eps the integral is finite and exact for the interpolant."""
    w = _noise_weights([math.exp(-p[0]) for p in nodes], grid.ve_sigma(i), grid.ve_sigma(i + 1))
    out = x / grid.alpha[i]
    for wj, (lam, x0_hat, x_at, alpha) in zip(w, nodes, strict=True):
        out.sub_((x_at / alpha - x0_hat) / math.exp(-lam), alpha=float(wj))
    return out * grid.alpha[i + 1]


def _combine(ratio: float, x, weights, nodes):
    """ratio * x + sum_j weights_j * x0_hat_j, accumulated in place (one temporary, not one per term)."""
    out = x * ratio
    for w, (_, x0_hat, *_) in zip(weights, nodes, strict=True):
        out.add_(x0_hat, alpha=float(w))
    return out
