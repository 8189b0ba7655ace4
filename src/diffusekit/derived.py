"""eps, v, velocity and score from a denoised estimate x0_hat: the only place these formulas live.

With ``x_t = alpha * x0 + sigma * noise`` (docs/design.md, "One identity under every parameterization"):

- ``eps_hat = (x_t - alpha * x0_hat) / sigma``
- ``v = alpha * eps_hat - sigma * x0_hat`` (Salimans & Ho 2022)
- ``velocity = d_alpha * x0_hat + d_sigma * eps_hat`` = d x_t / dt, the probability-flow ODE's drift
- ``score = (alpha * x0_hat - x_t) / sigma^2`` = grad log p_t(x_t) (Tweedie; EDM eq. 3 in ve_sigma)

All are undefined at t = 0 (sigma = 0), where a sampler only ever needs x0_hat.
"""

from __future__ import annotations

from torch import Tensor

from ._tensors import append_dims
from .schedules import ScheduleAt

__all__ = ["eps_from_x0", "v_from_x0", "velocity_from_x0", "score_from_x0"]


def eps_from_x0(x0_hat: Tensor, x_t: Tensor, at: ScheduleAt) -> Tensor:
    return (x_t - append_dims(at.alpha, x_t) * x0_hat) / append_dims(at.sigma, x_t)


def v_from_x0(x0_hat: Tensor, x_t: Tensor, at: ScheduleAt) -> Tensor:
    eps = eps_from_x0(x0_hat, x_t, at)
    return append_dims(at.alpha, x_t) * eps - append_dims(at.sigma, x_t) * x0_hat


def velocity_from_x0(x0_hat: Tensor, x_t: Tensor, at: ScheduleAt) -> Tensor:
    eps = eps_from_x0(x0_hat, x_t, at)
    return append_dims(at.d_alpha, x_t) * x0_hat + append_dims(at.d_sigma, x_t) * eps


def score_from_x0(x0_hat: Tensor, x_t: Tensor, at: ScheduleAt) -> Tensor:
    return (append_dims(at.alpha, x_t) * x0_hat - x_t) / append_dims(at.sigma**2, x_t)
