"""Sampling time grids: decreasing 1-D tensors of ``steps + 1`` times in [0, 1], ending in exactly 0.

Spacings (``timesteps(schedule, steps, spacing, **options)``):

- ``karras``: EDM eq. 5, ``ve_sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho`` for
  i = 0..N-1, then 0; options ``sigma_min=0.002, sigma_max=80, rho=7`` (in ve_sigma, mapped to t through
  ``schedule.t_from_ve_sigma``; a ``sigma_max`` beyond the schedule's reach starts at t = 1).
- ``logsnr``: uniform in log-SNR between the same ``sigma_min`` / ``sigma_max`` (DPM-Solver's
  'logSNR' spacing, Lu et al. 2022), then 0.
- ``uniform``: uniform in t from ``t_max=1`` to ``t_min=0``: the flow-matching grid.
- ``trailing``: Lin et al. 2023 (Table 2): t_i = 1 - i/N, rounded to the integer timesteps of a discrete
  schedule (one with ``T``), so sampling starts at t = 1 (the terminal, zero-SNR step when ZTSNR is on).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..schedules import DiscreteVP, Schedule

__all__ = ["timesteps", "SPACINGS"]


def _terminal(schedule: Schedule, sigma_max: float) -> float:
    """sigma_max, lowered to the schedule's own noise level at t = 1 where that is smaller (VDM's learned
    schedule ends at ve_sigma = exp(gamma_max / 2), 12.2 at its initial gamma_max = 5)."""
    return min(sigma_max, float(schedule(1.0).ve_sigma))


def _karras(schedule: Schedule, steps: int, sigma_min=0.002, sigma_max=80.0, rho=7.0) -> Tensor:
    sigma_max = _terminal(schedule, sigma_max)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    ve_sigma = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return schedule.t_from_ve_sigma(ve_sigma)


def _logsnr(schedule: Schedule, steps: int, sigma_min=0.002, sigma_max=80.0) -> Tensor:
    sigma_max = _terminal(schedule, sigma_max)
    logsnr = torch.linspace(-2 * torch.log(torch.tensor(sigma_max, dtype=torch.float64)).item(),
                            -2 * torch.log(torch.tensor(sigma_min, dtype=torch.float64)).item(),
                            steps, dtype=torch.float64)
    return schedule.t_from_logsnr(logsnr)


def _uniform(schedule: Schedule, steps: int, t_max=1.0, t_min=0.0) -> Tensor:
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)[:-1]


def _trailing(schedule: Schedule, steps: int) -> Tensor:
    t = 1 - torch.arange(steps, dtype=torch.float64) / steps
    if isinstance(schedule, DiscreteVP):
        t = torch.round(t * schedule.T) / schedule.T
    return t


_SPACINGS = {"karras": _karras, "logsnr": _logsnr, "uniform": _uniform, "trailing": _trailing}
SPACINGS = tuple(_SPACINGS)


def timesteps(schedule: Schedule, steps: int, spacing: str = "karras", **options) -> Tensor:
    """``steps + 1`` decreasing times (float64) ending in 0; ``steps`` is the number of sampler steps."""
    if spacing not in _SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    try:
        t = _SPACINGS[spacing](schedule, steps, **options)
    except TypeError as e:
        raise TypeError(f"bad options for spacing {spacing!r}: {e}") from None
    ts = torch.cat([t.to(torch.float64), torch.zeros(1, dtype=torch.float64)])
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"spacing {spacing!r} with {options or 'defaults'} gave a grid that is not strictly "
                         f"decreasing for {schedule!r} (steps={steps}): {ts.tolist()}")
    return ts
