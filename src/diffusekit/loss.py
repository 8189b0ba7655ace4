"""The diffusion training objective, one formula for every parameterization (docs/design.md).

For data x0, noise ~ N(0, I) and t from the time sampler:
    x_t = alpha x0 + sigma noise,   target = (x0 - c_skip x_t) / c_out,
    loss_i = importance_weight_i * weighting(t_i) * mean_over_dims((F(x_t, t) - target)^2).
The network callable returns the raw output F; it is called as ``network_fn(x_t, t, cond)`` with ``cond`` the
mapping of named conditions (:mod:`diffusekit.conditions`; empty when there are none).

Input perturbation (Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in Diffusion Models",
DDPM-IP): with ``input_perturbation`` = gamma > 0 the network sees x_t + gamma * sigma * xi, xi ~ N(0, I)
drawn apart from the noise, while the target is still built from the clean (x0, noise). The network thereby
learns to undo errors of the size a sampler accumulates, which the paper reports closes part of the gap
between training inputs and sampling inputs (gamma = 0.1 there). Only training applies it: the trainer draws
xi (:meth:`DiffusionLoss.draw_perturbation`) and passes it; evaluation losses are the plain objective.

A learned schedule (:class:`~diffusekit.schedules.LearnedVP`) is trained through this loss: its
evaluations for the batch (here and inside ``network_fn``) are recorded, and the gradient reaching the shape of
gamma(t) is that of the mean of loss_i^2 instead of loss_i (VDM's variance trick), in the same backward pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ._tensors import append_dims
from .conditions import Conditions, as_conditions
from .parameterizations import Parameterization
from .schedules import LearnedVP, Schedule, ScheduleAt
from .time_sampling import TimeDraw, TimeSampler
from .weighting import Weighting

__all__ = ["DiffusionLoss", "LossOutput", "loss_by_logsnr_bins"]


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype,
           device: torch.device | str) -> Tensor:
    """N(0, I) drawn on the generator's device (so a CPU generator gives the same numbers on any device), then
    moved to ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


@dataclass(frozen=True)
class LossOutput:
    loss: Tensor  # [batch]: weighted per-example losses, their mean estimates the objective
    unweighted: Tensor  # [batch]: weighting * MSE without the importance weight (for monitoring)
    t: Tensor  # [batch]
    logsnr: Tensor  # [batch]


class DiffusionLoss:
    def __init__(self, schedule: Schedule, parameterization: Parameterization, time_sampler: TimeSampler,
                 weighting: Weighting, input_perturbation: float = 0.0):
        if not 0.0 <= input_perturbation < 1.0:
            raise ValueError(f"input_perturbation must be in [0, 1), got {input_perturbation}")
        self.schedule, self.parameterization = schedule, parameterization
        self.time_sampler, self.weighting = time_sampler, weighting
        self.input_perturbation = input_perturbation

    def at(self, t: Tensor) -> ScheduleAt:
        """The schedule in float64 (coefficients are then cast to the data's dtype)."""
        return self.schedule(t.to(torch.float64))

    def draw(self, x0_shape: tuple[int, ...], *, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> tuple[TimeDraw, Tensor]:
        """The random part of a batch: times, then noise (in that order from ``generator``). Drawn once for a
        whole global batch and sliced per process, it makes training independent of the number of processes."""
        draw = self.time_sampler(x0_shape[0], self.schedule, generator=generator)
        return draw, _randn(x0_shape, generator, dtype, device)

    def draw_perturbation(self, x0_shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                          dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor | None:
        """xi for input perturbation, drawn after :meth:`draw` for the whole global batch; None (and nothing
        drawn, so the random stream is unchanged) when ``input_perturbation`` is 0."""
        if self.input_perturbation == 0:
            return None
        return _randn(x0_shape, generator, dtype, device)

    def __call__(self, network_fn, x0: Tensor, *, generator: torch.Generator | None = None,
                 noise: Tensor | None = None, t: Tensor | None = None, cond: Conditions | None = None,
                 time_draw: TimeDraw | None = None, update_sampler: bool = True,
                 perturbation: Tensor | None = None, mask: Tensor | None = None) -> LossOutput:
        """Per-example losses for a batch. ``noise`` and ``t`` (or a whole ``time_draw``, importance weights
        included) may be given, then no draw is made. ``update_sampler=False`` leaves the importance
        sampler's statistics to the caller (distributed training updates them with every process's losses).
        ``perturbation``: xi of input perturbation (scaled here by ``input_perturbation`` and sigma); only the
        network's input changes, not the target. ``mask``: where the loss counts, broadcastable to ``x0`` (e.g.
        ``[B, 1, F, 1, 1]`` leaves out a clip's given context frames); each example's MSE is then the mean over
        its counted elements (an example with none counts 0)."""
        n = x0.shape[0]
        if time_draw is None and t is None:
            time_draw = self.time_sampler(n, self.schedule, generator=generator)
        if time_draw is not None:
            t, importance, u = time_draw.t, time_draw.weight, time_draw.u
        else:
            importance, u = torch.ones(n, dtype=torch.float64), None
        if noise is None:
            noise = _randn(tuple(x0.shape), generator, x0.dtype, x0.device)
        learned = isinstance(self.schedule, LearnedVP) and torch.is_grad_enabled()
        with self.schedule.tape() if learned else contextlib.nullcontext() as tape:
            at, output, target = self._forward(network_fn, x0, noise, t, cond, perturbation)
        squared = (output - target).pow(2)
        if mask is None:
            mse = squared.reshape(n, -1).mean(1)
        else:
            weight = mask.to(squared.dtype).expand_as(squared).reshape(n, -1)
            mse = (squared.reshape(n, -1) * weight).sum(1) / weight.sum(1).clamp_min(1)
        unweighted = self.weighting(at, self.parameterization).to(mse.dtype) * mse
        if u is not None and update_sampler:
            self.time_sampler.update(u, unweighted)
        loss = importance.to(device=mse.device, dtype=mse.dtype) * unweighted
        if tape is not None:
            tape.scale_gradients(loss)
        return LossOutput(loss, unweighted, at.t, at.logsnr)

    def _forward(self, network_fn, x0: Tensor, noise: Tensor, t: Tensor, cond: Conditions | None,
                 perturbation: Tensor | None) -> tuple[ScheduleAt, Tensor, Tensor]:
        """(schedule at t, network output F, its target) for a batch."""
        at = self.at(t.to(x0.device))
        x_t = append_dims(at.alpha, x0) * x0 + append_dims(at.sigma, x0) * noise
        target = self.parameterization.training_target(x0, noise, at)
        if perturbation is not None and self.input_perturbation > 0:
            x_t = x_t + self.input_perturbation * append_dims(at.sigma, x0) * perturbation
        return at, network_fn(x_t, at.t.to(x0.dtype), as_conditions(cond)), target


def loss_by_logsnr_bins(losses: Tensor, logsnr: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
    """Mean loss and count per log-SNR bin (bins between consecutive ``edges``; outside ones are clipped
    into the first / last bin). Empty bins have a NaN mean."""
    edges = torch.as_tensor(edges, dtype=torch.float64)
    nbins = len(edges) - 1
    k = (torch.bucketize(logsnr.detach().to(torch.float64).cpu(), edges) - 1).clamp(0, nbins - 1)
    values = losses.detach().to(torch.float64).cpu()
    sums = torch.zeros(nbins, dtype=torch.float64).index_add_(0, k, values)
    counts = torch.zeros(nbins, dtype=torch.long).index_add_(0, k, torch.ones_like(k))
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
    return means, counts
