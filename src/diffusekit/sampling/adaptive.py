"""Embedded Runge-Kutta integration with error control, on torch tensors, and the ``adaptive`` PF-ODE sampler.

Methods (Butcher tableaux as published):

- ``"bs32"`` (default): Bogacki & Shampine 1989, "A 3(2) pair of Runge-Kutta formulas": order 3, embedded
  order 2 for the error, 4 stages of which the last is the first of the next step (FSAL): 3 evaluations
  per accepted step.
- ``"dp54"``: Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae": order 5, embedded order 4,
  7 stages, FSAL: 6 evaluations per accepted step.

Error control follows Hairer, Norsett & Wanner, "Solving ODEs I", section II.4: a step's error estimate
``e = y1 - y1_hat`` is measured as ``err = sqrt(mean((e / sc)^2))`` with ``sc = atol + rtol * max(|y0|,
|y1|)``; the step is accepted when err <= 1 and the next step is ``h * min(fac_max, max(fac_min, 0.9 *
err^(-1 / (q + 1))))``, q the lower of the pair's two orders, with fac_max = 1 right after a rejection.
The first step is Hairer's starting-step algorithm (same section), which costs one evaluation besides
the first stage.

The state is a batch: a tensor ``[B, ...]`` or a tuple of such tensors (all with the same B), and one step
size serves the whole batch. The norm is taken per row and per tuple component, then the largest is used,
so that every sample meets the tolerance however large the batch (an RMS over the whole batch would let
one bad row hide among many good ones) and a small component (a [B] accumulator beside a [B, 784] image)
is not drowned by a large one. ``norm_components`` limits the norm to the first k tuple components.

The ``adaptive`` sampler integrates the probability-flow ODE in the VP-normalised state
``z = x_t / sqrt(alpha^2 + sigma^2)`` over ``lambda = log(alpha / sigma)`` (:class:`FlowInLambda`). Why not
``t``: near t = 0 the ODE in t is stiff or singular for VP schedules (``sigma ~ sqrt(beta_min t)``, so
``d sigma / dt`` is unbounded), and at alpha = 0 a start in ``x_t / alpha`` (EDM's variable) is infinite.
In (lambda, z) the ODE is ``dz / dlambda = a (x0_hat - a z)``, ``a = sqrt(sigmoid(2 lambda))`` the VP alpha:

- it is the same ODE for every schedule (only the time handed to the denoiser depends on it), so step
  sizes and NFE do not depend on how a schedule spends its t;
- z stays of the order of the data and the noise (z = noise at lambda = -inf, z -> x0 as lambda -> inf),
  so a mixed rtol/atol norm means the same thing along the whole path;
- the right-hand side vanishes at both ends (``a -> 0`` at lambda -> -inf; ``x0_hat - z = O(e^{-2 lambda})``
  at the data end), so the long tails of the lambda range cost few steps.

lambda = -inf is started at :data:`LAMBDA_MIN` (the neglected part of the flow is of size e^{-20} relative)
and the data end is taken at :data:`LAMBDA_MAX` (ve_sigma = 1e-6), followed by one denoising step x0 =
x0_hat(x_t), whose error is O(ve_sigma^2) relative to the data's finest scale. Steps are at most
:data:`MAX_STEP_LAMBDA` long.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..conditions import Conditions
from ..schedules import Schedule
from .grid import Grid

__all__ = ["integrate", "Solution", "METHODS", "adaptive_sampler", "FlowInLambda", "LAMBDA_MIN", "LAMBDA_MAX",
           "MAX_STEP_LAMBDA", "check_tolerances", "vp_alpha"]

LAMBDA_MIN = -20.0  # where alpha = 0 is started: the flow before it moves z by ~e^{-20} |E[x0]| (2e-9)
LAMBDA_MAX = math.log(1e6)  # the data end: ve_sigma = 1e-6
# The largest step in lambda. From LAMBDA_MIN the right-hand side is nearly zero, the step grows by fac_max per
# step, and without a cap one step can jump from lambda ~ -15 to ~ +10 with every stage where f is still (or
# already) ~ 0, an error estimate near zero and a wrong answer (measured with dp54 on 16-D mixtures). Three
# units of lambda (a factor e^6 in SNR) keep the transient in view at the cost of a few steps in the tails.
MAX_STEP_LAMBDA = 3.0


@dataclass(frozen=True)
class Tableau:
    """An embedded pair: stages ``c``, ``a`` (lower triangle, rows 1..s-1), weights ``b`` (order ``order``)
    and ``b_hat`` (order ``order_hat``); ``fsal``: the last stage is evaluated at the new point."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_hat: tuple[float, ...]
    order: int
    order_hat: int
    fsal: bool


BOGACKI_SHAMPINE = Tableau(
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_hat=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    order=3, order_hat=2, fsal=True)

DORMAND_PRINCE = Tableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((1 / 5,),
       (3 / 40, 9 / 40),
       (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    b_hat=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    order=5, order_hat=4, fsal=True)

METHODS = {"bs32": BOGACKI_SHAMPINE, "dp54": DORMAND_PRINCE}
SAFETY, FAC_MIN, FAC_MAX = 0.9, 0.2, 5.0  # Hairer-Norsett-Wanner II.4, eq. (4.13)

State = Tensor | tuple[Tensor, ...]


@dataclass(frozen=True)
class Solution:
    """The state at t1 (same structure as the initial state), the number of f evaluations, and the accepted
    and rejected steps."""

    state: State
    nfe: int
    accepted: int
    rejected: int


def check_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _combine(y: tuple[Tensor, ...], h: float, weights, ks: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """y + h * sum_j weights_j k_j, per tuple component (zero weights skipped)."""
    out = []
    for i, yi in enumerate(y):
        acc = yi.clone()
        for w, k in zip(weights, ks, strict=False):
            if w != 0.0:
                acc.add_(k[i], alpha=h * w)
        out.append(acc)
    return tuple(out)


def _row_rms(values: tuple[Tensor, ...], scales: tuple[Tensor, ...], count: int) -> float:
    """max over rows and over the first ``count`` tuple components of the RMS of values / scales."""
    worst = 0.0
    for v, s in zip(values[:count], scales[:count], strict=True):
        ratio = (v / s).reshape(len(v), -1)
        worst = max(worst, float(ratio.pow(2).mean(1).sqrt().max()))
    return worst


def _scales(y0: tuple[Tensor, ...], y1: tuple[Tensor, ...], rtol: float, atol: float) -> tuple[Tensor, ...]:
    return tuple(atol + rtol * torch.maximum(a.abs(), b.abs()) for a, b in zip(y0, y1, strict=True))


def _initial_step(f, t0: float, y0: tuple[Tensor, ...], f0: tuple[Tensor, ...], order: int, direction: float,
                  rtol: float, atol: float, count: int) -> float:
    """Hairer-Norsett-Wanner II.4, 'Starting step size' (a)-(f); one evaluation of ``f`` (on packed states)."""
    sc = _scales(y0, y0, rtol, atol)
    d0, d1 = _row_rms(y0, sc, count), _row_rms(f0, sc, count)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    y1 = tuple(y + direction * h0 * k for y, k in zip(y0, f0, strict=True))
    f1 = f(t0 + direction * h0, y1)
    d2 = _row_rms(tuple(b - a for a, b in zip(f0, f1, strict=True)), sc, count) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1)


def integrate(f: Callable[[float, State], State], state: State, t0: float, t1: float, *, rtol: float = 1e-5,
              atol: float = 1e-5, method: str = "bs32", max_steps: int = 100_000,
              norm_components: int | None = None, max_step: float = math.inf) -> Solution:
    """Integrate ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` (either direction) with error control.

    Args:
        f: ``f(t, y) -> dy/dt``, ``t`` a Python float, ``y`` structured like ``state``.
        state: a tensor ``[B, ...]`` or a tuple of tensors ``[B, ...]`` (one B); integrated in its dtype.
        rtol, atol: relative and absolute tolerance of the mixed RMS norm (module docstring), > 0.
        method: ``"bs32"`` or ``"dp54"``.
        max_steps: accepted plus rejected steps allowed before giving up (RuntimeError).
        norm_components: measure the error on the first k components of a tuple state only (None: all).
        max_step: the largest step |h| (Hairer's hmax): where f is nearly zero the step grows by fac_max per
            step, and one long step can then jump over a region where f changes, unseen by its stages.
    """
    check_tolerances(rtol, atol)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    tableau = METHODS[method]
    is_tuple = isinstance(state, (tuple, list))
    y = tuple(state) if is_tuple else (state,)
    if any(v.ndim < 1 or len(v) != len(y[0]) for v in y):
        raise ValueError("the state must be a tensor [B, ...] or a tuple of tensors [B, ...] with one batch size B")
    count = len(y) if norm_components is None else norm_components
    if not 1 <= count <= len(y):
        raise ValueError(f"norm_components must be in 1..{len(y)}, got {norm_components}")

    def unpack(yy: tuple[Tensor, ...]) -> State:
        return yy if is_tuple else yy[0]

    def call(t: float, yy: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        out = f(t, unpack(yy))
        return tuple(out) if is_tuple else (out,)

    t0, t1 = float(t0), float(t1)
    if t0 == t1:
        return Solution(state, 0, 0, 0)
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    k_first = call(t0, y)
    h = min(span, max_step, _initial_step(call, t0, y, k_first, tableau.order, direction, rtol, atol, count))
    nfe = 2
    exponent = 1.0 / (min(tableau.order, tableau.order_hat) + 1)
    error_weights = [bi - bh for bi, bh in zip(tableau.b, tableau.b_hat, strict=True)]
    t, done, accepted, rejected, just_rejected = t0, 0.0, 0, 0, False  # done: distance covered
    while done < span:
        if accepted + rejected >= max_steps:
            raise RuntimeError(f"adaptive integration took more than max_steps={max_steps} steps and reached "
                               f"t = {t:.6g} of {t1:.6g}; loosen rtol/atol or raise max_steps")
        last = h >= span - done
        if last:
            h = span - done  # land on t1 exactly
        hs = direction * h
        ks = [k_first]
        for c, row in zip(tableau.c[1:], tableau.a, strict=True):
            ks.append(call(t + c * hs, _combine(y, hs, row, ks)))
        nfe += len(tableau.a)
        y_new = _combine(y, hs, tableau.b, ks)
        error = _combine(tuple(torch.zeros_like(v) for v in y), hs, error_weights, ks)
        err = _row_rms(error, _scales(y, y_new, rtol, atol), count)
        if not math.isfinite(err):
            raise RuntimeError(f"adaptive integration met a non-finite value at t = {t:.6g}")
        factor = SAFETY * err ** -exponent if err > 0 else FAC_MAX
        if err <= 1.0:
            accepted += 1
            done = span if last else done + h
            t = t1 if last else t + hs
            y = y_new
            if tableau.fsal:  # the last stage was evaluated at (t, y_new)
                k_first = ks[-1]
            else:
                k_first = call(t, y)
                nfe += 1
            h = min(max_step, h * min(1.0 if just_rejected else FAC_MAX, max(FAC_MIN, factor)))
            just_rejected = False
        else:
            rejected += 1
            h *= min(1.0, max(FAC_MIN, factor))
            just_rejected = True
    return Solution(unpack(y), nfe, accepted, rejected)


def vp_alpha(lam: float) -> float:
    """sqrt(sigmoid(2 lambda)): alpha of the variance-preserving path with half log-SNR lambda."""
    return math.exp(-0.5 * math.log1p(math.exp(-2 * lam))) if lam > -350 else 0.0


class FlowInLambda:
    """The PF-ODE as ``dz / dlambda = a (x0_hat - a z)`` (module docstring), for a denoiser on ``schedule``.

    ``z = x_t / rho(t)`` with ``rho = sqrt(alpha^2 + sigma^2)``; lambda = log(alpha / sigma). The denoiser is
    called at ``t = schedule.t_from_logsnr(2 lambda)`` on ``x_t = rho(t) z``; ``calls`` counts its calls.
    """

    def __init__(self, denoise, schedule: Schedule, cond: Conditions, callback=None):
        self.denoise, self.schedule, self.cond, self.callback = denoise, schedule, cond, callback
        self.calls = 0

    def time(self, lam: float) -> float:
        return float(self.schedule.t_from_logsnr(torch.tensor(2 * lam, dtype=torch.float64)))

    def rho(self, t: float) -> float:
        """sqrt(alpha^2 + sigma^2) at time t: x_t = rho z."""
        at = self.schedule(torch.tensor(t, dtype=torch.float64))
        return math.hypot(float(at.alpha), float(at.sigma))

    def x0_hat(self, lam: float, z: Tensor) -> Tensor:
        """``denoise(x_t, t, cond)`` at the time of ``lam``, ``z [B, ...]``."""
        t = self.time(lam)
        x_t = self.rho(t) * z
        x0_hat = self.denoise(x_t, torch.full((len(z),), t, dtype=z.dtype, device=z.device), self.cond)
        if self.callback is not None:
            self.callback({"i": self.calls, "t": t, "x": x_t, "x0_hat": x0_hat, "nfe": self.calls + 1})
        self.calls += 1
        return x0_hat

    def __call__(self, lam: float, z: Tensor) -> Tensor:
        a = vp_alpha(lam)
        return a * (self.x0_hat(lam, z) - a * z)


def adaptive_sampler(denoise, x, grid: Grid, *, cond, callback, schedule: Schedule, measure=None, rtol: float = 1e-3,
             atol: float = 1e-3, method: str = "bs32"):
    """The PF-ODE from grid time ts[0] to t = 0 by :func:`integrate` in (lambda, z); only the grid's endpoints
    are used. The callback sees every denoiser call, its ``"nfe"`` the calls so far."""
    check_tolerances(rtol, atol)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if measure is not None:
        raise ValueError("the adaptive sampler has no grid steps to apply a measurement step after; use a "
                         "fixed-grid sampler for inverse problems")
    flow = FlowInLambda(denoise, schedule, cond, callback)
    lam0 = max(grid.lam(0), LAMBDA_MIN)
    z = x / math.hypot(grid.alpha[0], grid.sigma[0])
    if lam0 < LAMBDA_MAX:
        z = integrate(flow, z, lam0, LAMBDA_MAX, rtol=rtol, atol=atol, method=method,
                      max_step=MAX_STEP_LAMBDA).state
    return flow.x0_hat(max(lam0, LAMBDA_MAX), z)  # the final denoising step
