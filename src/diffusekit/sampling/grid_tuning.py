"""Time grids tuned for one sampler, one NFE budget and one model: the interior times that bring the sampler's
output closest to the probability-flow ODE's solution from the same noise.

Given ``denoise``, a deterministic sampler with its options, a number of steps N and a batch of starting noise
(and conditions), :func:`tune_grid` minimises the root mean square difference between the sampler's output on a
grid ``t_0 > t_1 > ... > t_{N-1} > t_N = 0`` and a reference solve of the same noise (:func:`reference_samples`:
``reference_solve``'s adaptive DOP853, or a many-step ``multistep`` for a network, where an adaptive solve at
1e-10 would cost thousands of evaluations).

Parametrisation: ``t_0`` (the start) and ``t_N = 0`` stay fixed; the N - 1 interior points are placed in
half log-SNR lambda = log(alpha / sigma) between ``lam_lo`` (lambda at t_0, or at ve_sigma = 80 when t_0 is
pure noise) and ``lam_hi`` (ve_sigma = ``sigma_floor``) by N positive increments, a softmax of N - 1 free
logits and a fixed 0: ``lambda_k = lam_lo + (lam_hi - lam_lo) * cumsum(softmax(z, 0))_k``. Every parameter
vector is a strictly monotone grid (the last increment is the slack above the last nonzero level, so that
level is free too), and both start grids map to it exactly.

Search: Nelder-Mead (scipy) from the Karras grid and from the log-SNR grid, each search restarted ``restarts``
times from where it stopped with a fresh simplex (a collapsed simplex stalls Nelder-Mead short of a minimum;
on the mixtures one restart lowers the error by up to 20%), keeping the best of the starts and the searches,
so the result is never worse than either start on the fitting batch. Derivative-free because
the objective is piecewise: guidance intervals switch the denoiser on and off at fixed noise levels, the
multistep sampler lowers its order on the last steps, and a discrete schedule's t_from_logsnr is a table
look-up; the dimension is small (N - 1 <= ~20), and a gradient would need a backward pass through N network
calls per step of the search, holding every activation.

Align Your Steps (Sabour et al. 2024) optimises a grid too, but minimises an upper bound on the KL divergence
between the true and the discretised reverse processes (KLUB), in expectation over the training data, with
stochastic samplers in mind, and interpolates its grid to other step counts. Here the objective is the error
the chosen sampler itself makes, with its options and guidance, at one NFE, from given noise, measured
directly against the ODE's solution: a grid per (sampler, NFE), not per model. The fitting batch is provenance
stored with the grid; report errors on another batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..conditions import Conditions
from ..schedules import Schedule
from . import sample as run_sampler
from .reference import reference_solve
from .timesteps import timesteps

__all__ = ["tune_grid", "TuneResult", "reference_samples", "GridParametrisation", "grid_error",
           "is_deterministic"]

SIGMA_MAX = 80.0  # the lower end of lambda when the grid starts from pure noise (the Karras grids' start)
DETERMINISTIC = ("euler", "heun", "dpmpp_2m", "multistep")


def is_deterministic(sampler: str, options: dict) -> bool:
    """Whether ``sampler`` with ``options`` follows the probability-flow ODE (so a grid can be fitted to it)."""
    if sampler in DETERMINISTIC:
        return True
    return sampler in ("ddim", "dpmpp_3m_sde") and float(options.get("eta", 0.0 if sampler == "ddim" else 1.0)) == 0


def _lam(schedule: Schedule, t: float) -> float:
    return 0.5 * float(schedule.logsnr(torch.tensor(t, dtype=torch.float64)))


class GridParametrisation:
    """Grids of ``steps`` steps from ``t_start`` to 0 as N - 1 logits (module docstring)."""

    def __init__(self, schedule: Schedule, steps: int, t_start: float, sigma_floor: float = 2e-4):
        if steps < 2:
            raise ValueError(f"a grid of {steps} step(s) has no interior point to tune; use at least 2 steps")
        self.schedule, self.steps, self.t_start = schedule, steps, float(t_start)
        lam0 = _lam(schedule, self.t_start)
        self.lam_lo = lam0 if math.isfinite(lam0) else -math.log(SIGMA_MAX)
        self.lam_hi = -math.log(sigma_floor)
        if not self.lam_hi > self.lam_lo:
            raise ValueError(f"sigma_floor {sigma_floor} lies above the start's noise level")

    def times(self, z: np.ndarray) -> Tensor | None:
        """The grid (``steps + 1`` float64 times) for logits ``z`` [steps - 1]; None where the schedule cannot
        place it strictly decreasing above 0 (levels beyond its reach)."""
        logits = np.append(np.asarray(z, dtype=np.float64), 0.0)
        w = np.exp(logits - logits.max())
        lam = self.lam_lo + (self.lam_hi - self.lam_lo) * np.cumsum(w / w.sum())[:-1]
        inner = self.schedule.t_from_logsnr(torch.from_numpy(2 * lam)).to(torch.float64)
        ts = torch.cat([torch.tensor([self.t_start], dtype=torch.float64), inner, torch.zeros(1, dtype=torch.float64)])
        if not bool((ts[1:] < ts[:-1]).all()) or not bool(torch.isfinite(ts).all()):
            return None
        return ts

    def logits(self, ts: Tensor) -> np.ndarray:
        """The logits of a grid with the same start and steps (its interior levels inside (lam_lo, lam_hi))."""
        ts = torch.as_tensor(ts, dtype=torch.float64)
        if len(ts) != self.steps + 1:
            raise ValueError(f"expected a grid of {self.steps} steps, got {len(ts) - 1}")
        lam = np.array([_lam(self.schedule, float(t)) for t in ts[1:-1]])
        increments = np.diff(np.concatenate([[self.lam_lo], lam, [self.lam_hi]]))
        if not (increments > 0).all():
            raise ValueError("the grid's interior levels must lie strictly inside the tuned range of log-SNR, "
                             f"[{2 * self.lam_lo:.3g}, {2 * self.lam_hi:.3g}]")
        return np.log(increments[:-1]) - np.log(increments[-1])


def reference_samples(denoise, noise: Tensor, schedule: Schedule, t_start: float, *, cond: Conditions | None = None,
                      steps: int | None = None) -> Tensor:
    """Where the probability-flow ODE takes ``sigma(t_start) * noise``: ``reference_solve`` (steps None; exact
    to ~1e-10) or ``multistep`` order 3 with the corrector (its most accurate form on such a grid) with ``steps``
    steps uniform in log-SNR from ``t_start`` down to ve_sigma = 1e-4 (for networks)."""
    if steps is None:
        return reference_solve(denoise, noise, schedule, t_start, cond=cond)
    grid = GridParametrisation(schedule, steps, t_start, sigma_floor=1e-4)
    ts = grid.times(np.zeros(steps - 1))
    if ts is None:
        raise ValueError(f"the schedule cannot place a {steps}-step log-SNR grid from t = {t_start}")
    with torch.no_grad():
        return run_sampler(denoise, noise, ts, schedule, "multistep", cond=cond, order=3, corrector=True)


def grid_error(denoise, noise: Tensor, reference: Tensor, ts: Tensor, schedule: Schedule, sampler: str,
               options: dict | None = None, cond: Conditions | None = None) -> float:
    """Root mean square of (sampler output on ``ts`` - ``reference``) over the batch (inf if not finite)."""
    with torch.no_grad():
        x = run_sampler(denoise, noise, ts, schedule, sampler, cond=cond, **(options or {}))
    err = float((x.to(torch.float64) - reference.to(torch.float64)).pow(2).mean().sqrt())
    return err if math.isfinite(err) else math.inf


@dataclass
class TuneResult:
    times: Tensor  # steps + 1, decreasing, ending in 0
    error: float  # RMSE against the reference on the fitting batch
    start: str  # the start grid the best search began from ("karras", "logsnr"), or that start itself
    start_errors: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0


def tune_grid(denoise, noise: Tensor, schedule: Schedule, sampler: str, steps: int, *,
              reference: Tensor, options: dict | None = None, cond: Conditions | None = None,
              t_start: float | None = None, starts: dict[str, Tensor] | None = None, max_evals: int = 400,
              restarts: int = 1, sigma_floor: float = 2e-4, log=None) -> TuneResult:
    """The grid of ``steps`` steps minimising :func:`grid_error` on this batch, from ``t_start`` (default: the
    Karras grid's start) to 0. ``noise`` [n, ...] and ``reference`` [n, ...] (where the PF-ODE takes
    ``sigma(t_start) * noise``: :func:`reference_samples`); ``starts``: named start grids (default Karras and
    log-SNR from ``timesteps``, their first time set to ``t_start``); ``max_evals``: sampler runs per search,
    of which each start has ``1 + restarts``."""
    from scipy.optimize import minimize  # lazy: scipy is slow to import and only the search needs it

    options = dict(options or {})
    if max_evals < 1 or restarts < 0:
        raise ValueError(f"max_evals must be >= 1 and restarts >= 0, got {max_evals} and {restarts}")
    if not is_deterministic(sampler, options):
        raise ValueError(f"sampler {sampler!r} with {options or 'its defaults'} is stochastic; grids are tuned "
                         "against the probability-flow ODE, for a deterministic sampler")
    if t_start is None:
        t_start = float(timesteps(schedule, steps, "karras")[0])
    if starts is None:
        starts = {name: timesteps(schedule, steps, name) for name in ("karras", "logsnr")}
    grid = GridParametrisation(schedule, steps, t_start, sigma_floor)
    count = 0

    def error_of(ts: Tensor | None) -> float:
        nonlocal count
        count += 1
        return math.inf if ts is None else grid_error(denoise, noise, reference, ts, schedule, sampler, options, cond)

    best: TuneResult | None = None
    start_errors = {}
    for name, start in starts.items():
        start = torch.as_tensor(start, dtype=torch.float64).clone()
        start[0] = t_start
        z0 = grid.logits(start)
        start_errors[name] = error_of(start)
        if best is None or start_errors[name] < best.error:
            best = TuneResult(start, start_errors[name], name)
        z, runs, value = z0, 0, start_errors[name]
        for _ in range(1 + restarts):
            simplex = np.vstack([z] + [z + 0.5 * e for e in np.eye(len(z))])  # steps of 0.5 in each logit
            found = minimize(lambda v: error_of(grid.times(v)), z, method="Nelder-Mead",
                             options={"maxfev": max_evals, "initial_simplex": simplex, "xatol": 1e-3, "fatol": 0.0,
                                      "adaptive": len(z) > 4})
            runs += found.nfev
            if not found.fun < value:
                break
            z, value = found.x, float(found.fun)
            ts = grid.times(z)
            if ts is not None and value < best.error:
                best = TuneResult(ts, value, name)
        if log is not None:
            log(f"{sampler} {steps} steps from {name}: {start_errors[name]:.4g} -> {value:.4g} ({runs} runs)")
    best.start_errors, best.evaluations = start_errors, count
    return best
