"""What every inverse-problem method shares: the problem itself, the sampler run over any part of the grid, the
noised measurement at a grid point, and the gradient of the measurement residual through the denoiser.

An inverse problem here is ``y = A x0 + sigma_y n`` with a linear operator ``A``
(:mod:`diffusekit.inverse.operators`) and a diffusion prior given by ``denoise(x_t, t, cond) -> x0_hat``. For a
latent model, ``x`` is the latent and ``A`` acts on the decoded image ``decode(x)``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..conditions import Conditions
from ..errors import InverseProblemError
from ..sampling import SAMPLERS
from ..sampling._step import randn_like
from ..sampling.grid import Grid
from ..schedules import Schedule

__all__ = ["Problem", "ResidualGradient", "sub_grid", "forward_noise"]


@dataclass
class Problem:
    """One inverse problem and the sampler that solves it.

    ``run(denoise, x, grid, measure)`` runs the chosen sampler from the state ``x`` at ``grid.t[0]`` down
    ``grid`` (which may end above t = 0), calling ``measure(x, j)`` after each step with j the index in ``grid``.
    """

    denoise: object
    schedule: Schedule
    operator: object
    y: Tensor
    grid: Grid
    generator: torch.Generator | None
    cond: Conditions
    sampler: str
    sample_shape: tuple[int, ...]
    sampler_options: dict = field(default_factory=dict)
    decode: object = None

    def run(self, denoise, x: Tensor, grid: Grid, measure=None) -> Tensor:
        fn = SAMPLERS[self.sampler]
        kwargs = {"cond": self.cond, "callback": None, "measure": measure}
        parameters = inspect.signature(fn).parameters
        if "generator" in parameters:
            kwargs["generator"] = self.generator
        if "schedule" in parameters:
            kwargs["schedule"] = self.schedule
        return fn(denoise, x, grid, **kwargs, **self.sampler_options)

    def image(self, x: Tensor) -> Tensor:
        """What the operator measures: x itself, or a latent model's decoded image."""
        return x if self.decode is None else self.decode(x)

    def noised_measurement(self, j: int, grid: Grid | None = None) -> Tensor:
        """``alpha_j y + sigma_j A z`` at grid point j, z fresh white noise: a draw of ``A x_t`` when ``y = A x0``
        (exactly y at t = 0). The forward process of the measurement that replacement, ILVR and MCG use."""
        grid = grid or self.grid
        alpha, sigma = grid.alpha[j], grid.sigma[j]
        if sigma == 0.0:
            return alpha * self.y
        shape = (self.y.shape[0], *self.sample_shape)
        z = torch.randn(shape, generator=self.generator, dtype=self.y.dtype,
                        device=self.generator.device if self.generator is not None else self.y.device)
        return alpha * self.y + sigma * self.operator.forward(z.to(self.y.device))

    def require_pixels(self, method: str) -> None:
        if self.decode is not None:
            raise InverseProblemError(
                f"method {method!r} acts on the pixels of the sample itself, but this model samples latents that a "
                "decoder turns into images: a latent model can use 'dps' or 'reconstruction', which differentiate "
                "through the decoder")


def sub_grid(grid: Grid, start: int, stop: int) -> Grid:
    """Grid points start..stop (inclusive) of ``grid``."""
    part = slice(start, stop + 1)
    return Grid(grid.t[part], grid.alpha[part], grid.sigma[part], grid.d_alpha[part], grid.d_sigma[part])


def forward_noise(x: Tensor, grid: Grid, frm: int, to: int, generator) -> Tensor:
    """A draw of ``x_{t_to} | x_{t_frm}`` (t_to >= t_frm) under the forward process:
    ``(alpha_to / alpha_frm) x + sqrt(sigma_to^2 - (alpha_to / alpha_frm)^2 sigma_frm^2) z``."""
    ratio = grid.alpha[to] / grid.alpha[frm]
    std = math.sqrt(max(grid.sigma[to] ** 2 - (ratio * grid.sigma[frm]) ** 2, 0.0))
    return ratio * x + std * randn_like(x, generator)


class ResidualGradient:
    """``denoise`` evaluated with autograd, keeping ``grad_{x_t} ||y - A D(x0_hat(x_t))||`` per sample (D the
    decoder of a latent model, else the identity).

    ``squared``: the gradient of the squared norm instead (reconstruction guidance, MCG). Each call stores
    ``(x0_hat, gradient, residual norm)`` as ``last``; ``every_call=False`` computes the gradient only on the first
    call after :meth:`want` (the start of a step), the others run plain: DPS and MCG use the gradient at the
    state a step starts from (their x_i), whatever else the sampler evaluates within the step.
    """

    def __init__(self, problem: Problem, squared: bool, every_call: bool = True):
        self.problem, self.squared, self.every_call = problem, squared, every_call
        self.wanted = True
        self.last: tuple[Tensor, Tensor, Tensor] | None = None

    def want(self) -> None:
        self.wanted = True

    def gradient(self, x_t: Tensor, t: Tensor, cond) -> tuple[Tensor, Tensor, Tensor]:
        p = self.problem
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            x0_hat = p.denoise(x, t, cond)
            if not x0_hat.requires_grad:
                raise InverseProblemError(
                    "this method differentiates the measurement residual through the denoiser, but the model's "
                    "output carries no gradient (a denoiser run under torch.no_grad or inference mode, or not made of "
                    "differentiable operations): use replacement, repaint, pocs, ilvr, ccdf or smc, which need none")
            residual = p.y - p.operator.forward(p.image(x0_hat))
            # vector_norm's gradient at a zero residual is zero, where sqrt(sum of squares) would give 0 * inf = nan
            norm = torch.linalg.vector_norm(residual.flatten(1), dim=1)
            objective = norm.square() if self.squared else norm
            (grad,) = torch.autograd.grad(objective.sum(), x)
        return x0_hat.detach(), grad.detach(), norm.detach()

    def __call__(self, x_t: Tensor, t: Tensor, cond) -> Tensor:
        if self.every_call or self.wanted:
            self.wanted = False
            self.last = self.gradient(x_t, t, cond)
            return self.last[0]
        with torch.no_grad():
            return self.problem.denoise(x_t, t, cond)
