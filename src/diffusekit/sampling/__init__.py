"""Samplers: every one written once against ``denoise(x_t, t, **cond) -> x0_hat``.

``sample(denoise, noise, ts, schedule, sampler="heun", generator=None, callback=None, cond=None,
**options)`` starts from ``x = sigma(ts[0]) * noise`` and integrates to t = 0 along the decreasing grid
``ts`` (``timesteps(...)``). Samplers and their options:

| sampler          | kind                         | options                                   | NFE           |
|------------------|------------------------------|-------------------------------------------|---------------|
| ``euler``        | PF-ODE, order 1              |                                           | N             |
| ``heun``         | PF-ODE, order 2 (EDM Alg. 1) |                                           | 2N - 1        |
| ``dpmpp_2m``     | PF-ODE, order 2 multistep    |                                           | N             |
| ``multistep``    | PF-ODE, order k multistep    | ``order=3, corrector, lower_order_final`` | N             |
| ``edm``          | EDM Alg. 2 (churn)           | ``S_churn, S_tmin, S_tmax, S_noise``      | 2N - 1        |
| ``euler_maruyama`` | reverse SDE                | ``g="forward"`` (or a scale, or g(t))     | N             |
| ``ddim``         | DDIM                         | ``eta=0``                                 | N             |
| ``ddpm``         | ancestral (DDIM, eta = 1)    |                                           | N             |

The callback receives ``{"i", "t", "x", "x0_hat"}`` after each denoiser call of the main sequence.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ..schedules import Schedule
from .ancestral import ddim, ddpm
from .grid import evaluate_grid
from .ode import dpmpp_2m, euler, heun, multistep
from .reference import reference_solve
from .stochastic import edm, euler_maruyama
from .timesteps import SPACINGS, timesteps

__all__ = ["sample", "timesteps", "reference_solve", "SAMPLERS", "SPACINGS", "nfe"]

SAMPLERS = {
    "euler": euler,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "multistep": multistep,
    "edm": edm,
    "euler_maruyama": euler_maruyama,
    "ddim": ddim,
    "ddpm": ddpm,
}
_FRAMEWORK_ARGS = {"cond", "callback", "generator", "schedule"}


def _options_of(fn) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _FRAMEWORK_ARGS}


def nfe(sampler: str, steps: int) -> int:
    """Denoiser evaluations a sampler makes on a grid of ``steps`` steps."""
    return 2 * steps - 1 if sampler in ("heun", "edm") else steps


def sample(denoise, noise: Tensor, ts: Tensor, schedule: Schedule, sampler: str = "heun",
           generator: torch.Generator | None = None, callback=None, cond: dict | None = None,
           **options) -> Tensor:
    """Run ``sampler`` from ``sigma(ts[0]) * noise`` down the grid ``ts``; returns the sample at t = 0."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    fn = SAMPLERS[sampler]
    allowed = _options_of(fn)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise TypeError(f"sampler {sampler!r} got unknown option(s) {', '.join(unknown)}; its options: {listed}")
    grid = evaluate_grid(schedule, ts)
    kwargs = {"cond": cond or {}, "callback": callback}
    parameters = inspect.signature(fn).parameters
    if "generator" in parameters:
        kwargs["generator"] = generator
    if "schedule" in parameters:
        kwargs["schedule"] = schedule
    x = grid.sigma[0] * noise
    return fn(denoise, x, grid, **kwargs, **options)
