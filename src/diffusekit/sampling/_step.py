"""Pieces shared by the samplers: the denoiser on a grid time, drawing noise, the Heun step, the hook after a step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..conditions import Conditions

DenoiseFn = Callable[[Tensor, Tensor, Conditions], Tensor]


def call_denoise(denoise: DenoiseFn, x: Tensor, t: float, cond: Conditions) -> Tensor:
    """``denoise(x_t, t[batch], cond)``."""
    return denoise(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device), cond)


def after_step(measure, x: Tensor, i: int) -> Tensor:
    """The state after step i (at grid point i + 1), passed through ``measure(x, i + 1) -> x`` when one is given:
    the measurement-consistency step of an inverse-problem solver (:mod:`diffusekit.inverse`)."""
    return x if measure is None else measure(x, i + 1)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, reproducible through ``generator`` (on any device)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def velocity(x: Tensor, x0_hat: Tensor, coefficients: tuple[float, float]) -> Tensor:
    a, b = coefficients
    return a * x0_hat + b * x


def heun_step(denoise: DenoiseFn, x: Tensor, x0_hat: Tensor, t_from: float, t_to: float,
              coef_from: tuple[float, float], coef_to: tuple[float, float] | None, cond: Conditions) -> Tensor:
    """EDM Algorithm 1, lines 5-8: Euler step, then the 2nd-order correction unless t_to = 0."""
    h = t_to - t_from
    d = velocity(x, x0_hat, coef_from)
    x_next = x + h * d  # Euler step.
    if coef_to is None:  # the last step to t = 0 stays Euler (EDM Algorithm 1, line 6)
        return x_next
    d_next = velocity(x_next, call_denoise(denoise, x_next, t_to, cond), coef_to)
    return x + h * 0.5 * (d + d_next)  # Apply 2nd order correction.
