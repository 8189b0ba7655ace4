"""A high-accuracy reference solution of the probability-flow ODE, for evaluating samplers.

The PF-ODE does not depend on the schedule once written in the noise level: with lambda = log(alpha /
sigma), ve_sigma = e^{-lambda} and x_hat = x_t / alpha, it is d x_hat / d ve_sigma = (x_hat - x0_hat) /
ve_sigma (EDM eq. 4 with s = 1). It is integrated with scipy's DOP853 in two stages whose variables are
both smooth and finite:

1. from the start down to ve_sigma = 1, in y = x_t / sigma = x_hat / ve_sigma over lambda:
   dy / dlambda = e^{lambda} x0_hat, which is finite even from alpha = 0 (lambda = -inf, y = noise);
2. from ve_sigma = 1 down to ``ve_sigma_end``, in x_hat over log ve_sigma: dx_hat / dlog(ve_sigma) =
   x_hat - x0_hat; then one last denoising step x0 = x0_hat(x_hat, ve_sigma_end), whose error is
   O(ve_sigma_end^2) relative to the data's finest scale.
A start at lambda = -inf is taken at lambda = -40, where the neglected part of the integral is e^{-40}.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..conditions import Conditions, as_conditions
from ..schedules import Schedule

__all__ = ["reference_solve"]


def reference_solve(denoise, noise: Tensor, schedule: Schedule, t_start: float = 1.0, *,
                    cond: Conditions | None = None, rtol: float = 1e-10, atol: float = 1e-10,
                    ve_sigma_end: float = 1e-5) -> Tensor:
    """x0 reached by the exact PF-ODE from ``x_{t_start} = sigma(t_start) * noise`` (float64).

    ``denoise(x_t, t, cond)`` is evaluated on ``schedule``; the returned tensor has ``noise``'s dtype.
    """
    from scipy.integrate import solve_ivp  # lazy: slow to import, and only this reference solver needs it

    cond = as_conditions(cond)
    shape, dtype = noise.shape, noise.dtype
    flat = noise.detach().to(torch.float64).reshape(len(noise), -1)

    def x0_at(x_hat_flat: np.ndarray, lam: float) -> np.ndarray:
        t = float(schedule.t_from_logsnr(torch.tensor(2 * lam, dtype=torch.float64)))
        at = schedule(torch.tensor(t, dtype=torch.float64))
        x_t = float(at.alpha) * torch.from_numpy(x_hat_flat).reshape(shape)
        t_batch = torch.full((shape[0],), t, dtype=torch.float64)
        return denoise(x_t, t_batch, cond).to(torch.float64).reshape(len(noise), -1).numpy()

    start = schedule(torch.tensor(float(t_start), dtype=torch.float64))
    lam0 = 0.5 * float(start.logsnr)
    lam0 = max(lam0, -40.0) if not math.isnan(lam0) else -40.0
    y = flat.numpy().ravel()  # y = x_t / sigma = noise
    if lam0 < 0:  # stage 1: lambda from lam0 to 0 in y = x_hat e^{lambda}

        def f1(lam, y_flat):
            x_hat = y_flat * math.exp(-lam)
            return math.exp(lam) * x0_at(x_hat.reshape(flat.shape), lam).ravel()

        y = solve_ivp(f1, (lam0, 0.0), y, method="DOP853", rtol=rtol, atol=atol).y[:, -1]
        x_hat, s0 = y, 0.0  # at lambda = 0, x_hat = y
    else:
        x_hat, s0 = y * math.exp(-lam0), -lam0  # s = log ve_sigma

    def f2(s, x_flat):
        return x_flat - x0_at(x_flat.reshape(flat.shape), -s).ravel()

    s_end = math.log(ve_sigma_end)
    if s0 > s_end:
        x_hat = solve_ivp(f2, (s0, s_end), x_hat, method="DOP853", rtol=rtol, atol=atol).y[:, -1]
    x0 = x0_at(x_hat.reshape(flat.shape), -s_end)
    return torch.from_numpy(x0).reshape(shape).to(dtype)
