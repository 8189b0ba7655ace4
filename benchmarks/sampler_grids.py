"""The noise-level grids of the sampler benchmark, and their exact conversion into each library's convention.

A grid is a decreasing sequence of ve_sigma = sigma / alpha values, ``steps + 1`` of them, from
``SIGMA_MAX`` = 80 down to a last nonzero level and then exactly 0. Every grid starts at the same noise
level so that every sampler, ours or a peer's, starts from the same state (x / alpha = 80 * noise) and is
scored against the same exact probability-flow ODE solution. Families:

- ``karras(rho, sigma_min)``: EDM eq. 5 (Karras et al. 2022) from 80 to ``sigma_min``;
- ``logsnr(sigma_min)``: uniform in log-SNR from 80 to ``sigma_min`` (DPM-Solver's spacing);
- ``flow(shift)``: uniform in rectified-flow time u (ve = u / (1 - u)) from u_max to 0, SD3's shift applied
  (ve -> shift * ve), u_max chosen so that the grid starts at 80 (at u = 1 it would start at infinite
  ve_sigma, which k-diffusion's VE samplers cannot represent).

Conversions (each one checked by reading the library's own noise levels back, ``readback_error``):

- diffusekit: t = ve / 80 on ``schedules.get("edm", sigma_max=80)`` (alpha = 1, sigma = 80 t), t_0 = 1;
- k-diffusion: ``sigmas`` = ve (its VE convention);
- diffusers, ``sigmas=`` in VE (EulerDiscreteScheduler): ve itself, the last 0 included;
- diffusers, flow-matching ``sigmas=`` (FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler with
  ``use_flow_sigmas``): s = ve / (1 + ve), the last 0 left to the scheduler;
- diffusers, ``timesteps=`` into ``alphas_cumprod`` (HeunDiscrete, DPMSolverMultistep, DDPM): a table of
  ``TABLE_T`` noise levels built for the grid (``trained_betas``) with the grid's nonzero levels at integer
  timesteps, alphas_cumprod = 1 / (1 + ve^2). Integer-timestep schedulers use those entries, whose float32
  ``1 - beta`` products carry a relative error of up to ~1e-2 at ve = 0.002 (1 - alphas_cumprod ~ 4e-6 is
  stored in float32 next to 1); HeunDiscrete takes float timesteps, so its t is found by inverting its own
  piecewise-linear sigma(t) and its levels read back to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffusekit import schedules
from diffusekit.sampling import timesteps

SIGMA_MAX = 80.0
TABLE_T = 1000


@dataclass(frozen=True)
class GridSpec:
    family: str  # karras | logsnr | flow
    rho: float | None = None
    sigma_min: float | None = None
    shift: float | None = None

    @property
    def name(self) -> str:
        if self.family == "karras":
            return f"karras(rho={self.rho:g},sigma_min={self.sigma_min:g})"
        if self.family == "logsnr":
            return f"logsnr(sigma_min={self.sigma_min:g})"
        return f"flow(shift={self.shift:g})"

    def ve(self, steps: int) -> Tensor:
        """``steps + 1`` float64 ve_sigma values: SIGMA_MAX first, 0 last, strictly decreasing."""
        if self.family in ("karras", "logsnr"):
            options = {"sigma_min": self.sigma_min, "sigma_max": SIGMA_MAX}
            if self.family == "karras":
                options["rho"] = self.rho
            ve = timesteps(schedules.get("edm", sigma_max=SIGMA_MAX), steps, self.family, **options) * SIGMA_MAX
        elif self.family == "flow":
            u_max = SIGMA_MAX / (SIGMA_MAX + self.shift)  # shift * u / (1 - u) = SIGMA_MAX at u_max
            u = timesteps(schedules.get("rectified_flow"), steps, "uniform", t_max=u_max)
            ve = self.shift * u / (1 - u)
        else:
            raise ValueError(f"unknown grid family {self.family!r}; choose karras, logsnr or flow")
        ve[0] = SIGMA_MAX  # equal to it up to rounding; exact, so that every grid shares one start
        return ve


def search_grids() -> list[GridSpec]:
    """The grids every sampler is searched over: the families diffusekit's own search used, thinned to 14
    grids so that 30 samplers x 14 grids x 5 budgets fit the benchmark's run time."""
    grids = [GridSpec("karras", rho=rho, sigma_min=smin) for rho in (5.0, 7.0, 9.0) for smin in (0.002, 0.01)]
    grids += [GridSpec("logsnr", sigma_min=smin) for smin in (0.002, 0.01, 0.05, 0.1)]
    grids += [GridSpec("flow", shift=shift) for shift in (0.5, 1.0, 2.0, 3.0)]
    return grids


KARRAS_DEFAULT = GridSpec("karras", rho=7.0, sigma_min=0.002)
FLOW_UNIFORM = GridSpec("flow", shift=1.0)
IDENTICAL_GRIDS = [KARRAS_DEFAULT, FLOW_UNIFORM]


# -- diffusekit ---------------------------------------------------------------------------------------
def ours_grid(ve: Tensor) -> tuple[schedules.Schedule, Tensor]:
    """(schedule, ts) for diffusekit: EDM's VE schedule with sigma_max = ve[0], t = ve / ve[0]."""
    ts = ve / ve[0]
    ts[0] = 1.0
    return schedules.get("edm", sigma_max=float(ve[0])), ts


# -- diffusers ----------------------------------------------------------------------------------------
def flow_sigmas(ve: Tensor) -> np.ndarray:
    """Flow-matching sigmas s = ve / (1 + ve) of the nonzero levels (the scheduler appends the final 0)."""
    nonzero = ve[:-1].numpy()
    return nonzero / (1 + nonzero)


def table_for(ve: Tensor, T: int = TABLE_T) -> tuple[np.ndarray, np.ndarray]:
    """(trained_betas, integer timesteps) of a T-level table with the grid's nonzero levels at the
    returned timesteps (decreasing, the largest level at T - 1), log-linear in ve in between."""
    levels = ve[:-1].numpy()[::-1]  # increasing
    n = len(levels)
    if not 2 <= n <= T:
        raise ValueError(f"a table of {T} timesteps holds 2..{T} nonzero levels, the grid has {n}")
    index = np.round(np.linspace(0, T - 1, n)).astype(np.int64)
    log_ve = np.interp(np.arange(T), index, np.log(levels))
    abar = 1.0 / (1.0 + np.exp(2 * log_ve))
    betas = np.empty(T)
    betas[0] = 1 - abar[0]
    betas[1:] = 1 - abar[1:] / abar[:-1]
    return betas, index[::-1].copy()


def scheduler_ve_table(scheduler) -> np.ndarray:
    """The scheduler's own ve_sigma per training timestep, computed as diffusers computes it."""
    return (((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5).numpy()


def float_timesteps(scheduler, ve: Tensor) -> list[float]:
    """Float timesteps whose linearly interpolated ve (HeunDiscrete's np.interp) is the grid's."""
    table = scheduler_ve_table(scheduler).astype(np.float64)
    return np.interp(ve[:-1].numpy(), table, np.arange(len(table))).tolist()


def readback_error(levels: Tensor | np.ndarray, ve: Tensor) -> dict:
    """Relative error of a library's noise levels (as ve_sigma, nonzero ones) against the grid's."""
    got = torch.as_tensor(np.asarray(levels, dtype=np.float64))
    want = ve[:-1].to(torch.float64)
    rel = ((got - want).abs() / want)
    return {"first": float(rel[0]), "last": float(rel[-1]), "max": float(rel.max())}
