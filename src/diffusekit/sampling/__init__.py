"""Samplers: every one written once against ``denoise(x_t, t, cond) -> x0_hat``.

``sample(denoise, noise, ts, schedule, sampler="heun", generator=None, callback=None, cond=None,
**options)`` starts from ``x = sigma(ts[0]) * noise`` and integrates to t = 0 along the decreasing grid
``ts`` (``timesteps(...)``). ``cond`` is the mapping of named conditions (:mod:`diffusekit.conditions`;
None: none); every denoiser call receives it unchanged, as ``denoise(x_t, t[batch], cond)``. Samplers and
their options:

| sampler          | kind                         | options                                   | NFE           |
|------------------|------------------------------|-------------------------------------------|---------------|
| ``euler``        | PF-ODE, order 1              |                                           | N             |
| ``heun``         | PF-ODE, order 2 (EDM Alg. 1) |                                           | 2N - 1        |
| ``dpmpp_2m``     | PF-ODE, order 2 multistep    |                                           | N             |
| ``multistep``    | PF-ODE, order k multistep    | ``order=3, corrector, lower_order_final,``| N             |
|                  |                              | ``variable, prediction``                  |               |
| ``unipc``        | PF-ODE, UniPC (Zhao et al.)  | ``order=2, variant, corrector, lower_order_final`` | N    |
| ``edm_churn``    | EDM Alg. 2 (churn)           | ``S_churn, S_tmin, S_tmax, S_noise``      | 2N - 1        |
| ``euler_maruyama`` | reverse SDE                | ``g="forward"`` (or a scale, or g(t))     | N             |
| ``ddim``         | DDIM                         | ``eta=0``                                 | N             |
| ``ddpm``         | ancestral (DDIM, eta = 1)    |                                           | N             |
| ``adaptive``     | PF-ODE, embedded RK (error   | ``rtol=1e-3, atol=1e-3, method="bs32"``   | from the      |
|                  | control); uses only ts[0]    | (or ``"dp54"``)                           | tolerance:    |
|                  | and ts[-1]                   |                                           | callback nfe  |
| ``dpmpp_3m_sde`` | DPM-Solver++(3M) SDE         | ``eta=1, s_noise=1``                      | N             |

The callback receives ``{"i", "t", "x", "x0_hat"}`` after each denoiser call of the main sequence (``adaptive``:
after every call, with ``"nfe"``, the calls so far; :func:`nfe` cannot know its count in advance and raises).
``measure(x, j) -> x``, when given, is called on the state after every step, j being the grid index the step
reached (1..N): an inverse-problem solver's measurement-consistency step (:mod:`diffusekit.inverse`), so every
sampler but ``adaptive`` (which has no grid steps, and refuses one) runs every such method. A multistep
sampler keeps its x0_hat history across it.

``edm`` is the former name of ``edm_churn``, kept for one release: it still samples, with a
``DeprecationWarning`` (:func:`sampler_name`).
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import Tensor

from ..conditions import Conditions, as_conditions
from ..schedules import Schedule
from .adaptive import adaptive_sampler
from .ancestral import ddim, ddpm
from .dpm_solver_sde import dpmpp_3m_sde
from .grid import evaluate_grid
from .ode import dpmpp_2m, euler, heun, multistep
from .reference import reference_solve
from .stochastic import edm_churn, euler_maruyama
from .timesteps import SPACINGS, timesteps
from .unipc import unipc

__all__ = ["sample", "timesteps", "reference_solve", "SAMPLERS", "DEPRECATED_SAMPLERS", "SPACINGS", "nfe",
           "sampler_name", "same_sampler"]

SAMPLERS = {
    "euler": euler,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "multistep": multistep,
    "unipc": unipc,
    "edm_churn": edm_churn,
    "euler_maruyama": euler_maruyama,
    "ddim": ddim,
    "ddpm": ddpm,
    "adaptive": adaptive_sampler,
    "dpmpp_3m_sde": dpmpp_3m_sde,
}
# former name -> current name; an old name still works for one release, with a DeprecationWarning
DEPRECATED_SAMPLERS = {"edm": "edm_churn"}
_FRAMEWORK_ARGS = {"cond", "callback", "generator", "schedule", "measure"}


def sampler_name(name: str, stacklevel: int = 2) -> str:
    """The current name of sampler ``name``: ``name`` itself, or the new name of a deprecated one (with a
    ``DeprecationWarning`` naming it, attributed ``stacklevel`` frames up). An unknown name is a ValueError
    listing the samplers."""
    if name in SAMPLERS:
        return name
    if name in DEPRECATED_SAMPLERS:
        new = DEPRECATED_SAMPLERS[name]
        warnings.warn(f"the sampler {name!r} is now called {new!r}; the old name will be removed in the next "
                      "release", DeprecationWarning, stacklevel=stacklevel)
        return new
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def same_sampler(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one sampler, a deprecated name counting as its new one (no warning)."""
    return DEPRECATED_SAMPLERS.get(a, a) == DEPRECATED_SAMPLERS.get(b, b)


def options_of(fn) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _FRAMEWORK_ARGS}


def nfe(sampler: str, steps: int) -> int:
    """Denoiser evaluations a sampler makes on a grid of ``steps`` steps; for ``adaptive`` a ValueError (its
    count follows from the tolerance and the denoiser: read the callback's ``"nfe"``)."""
    if sampler_name(sampler, stacklevel=3) == "adaptive":
        raise ValueError("the adaptive sampler's NFE is not known before it runs: read the callback's 'nfe'")
    return 2 * steps - 1 if sampler_name(sampler, stacklevel=3) in ("heun", "edm_churn") else steps


def sample(denoise, noise: Tensor, ts: Tensor, schedule: Schedule, sampler: str = "heun",
           generator: torch.Generator | None = None, callback=None, cond: Conditions | None = None,
           measure=None, **options) -> Tensor:
    """Run ``sampler`` from ``sigma(ts[0]) * noise`` down the grid ``ts``; returns the sample at t = 0."""
    sampler = sampler_name(sampler, stacklevel=3)
    fn = SAMPLERS[sampler]
    allowed = options_of(fn)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise TypeError(f"sampler {sampler!r} got unknown option(s) {', '.join(unknown)}; its options: {listed}")
    grid = evaluate_grid(schedule, ts)
    kwargs = {"cond": as_conditions(cond), "callback": callback, "measure": measure}
    parameters = inspect.signature(fn).parameters
    if "generator" in parameters:
        kwargs["generator"] = generator
    if "schedule" in parameters:
        kwargs["schedule"] = schedule
    x = grid.sigma[0] * noise
    return fn(denoise, x, grid, **kwargs, **options)
