"""Training-time distributions over t, and how a batch draws from them.

Every distribution is given by its quantile function ``t = icdf(u, schedule)`` for ``u`` in (0, 1), and
noise-level distributions are defined in log-SNR through ``schedule.t_from_logsnr`` (docs/design.md), so the
same distribution of noise levels is drawn whatever the schedule:

- ``uniform``: t ~ U(t_min, t_max) (DDPM, flow matching).
- ``lognormal``: EDM's ln(ve_sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1: -1.2, 1.2), i.e.
  logsnr ~ N(-2 P_mean, (2 P_std)^2).
- ``logit_normal``: SD3's t = sigmoid(m + s z) on rectified flow (Esser et al. 2024, eq. 19), i.e.
  logsnr = -2 logit(t) ~ N(-2 m, (2 s)^2): the same noise levels on any schedule.

A :class:`TimeSampler` turns a distribution into a batch of times, with per-example weights that keep
the loss an unbiased estimate of E_u[L(icdf(u))]:

- ``iid``: independent u.
- ``stratified``: one stratum per example, u_i = (pi(i) + U_i) / n with a random permutation pi.
- ``low_discrepancy``: VDM's u_i = (u_0 + i / n) mod 1 (Kingma et al. 2021, appendix I.2).
- ``importance``: u is drawn by bins with probability p_k proportional to sqrt(E[L^2]) over the bin,
  from running second moments of the per-example loss (iDDPM, Nichol & Dhariwal 2021, section 3.3),
  mixed with uniform (weight ``uniform_mix``) so no bin starves; each example is weighted by
  1 / (K p_k). It draws uniformly until every bin has ``warmup`` observations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._registry import build
from .schedules import Schedule

__all__ = ["TimeDistribution", "Uniform", "LogSNRNormal", "TimeSampler", "TimeDraw", "get_distribution",
           "get", "DISTRIBUTIONS", "MODES"]


class TimeDistribution:
    def icdf(self, u: Tensor, schedule: Schedule) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Uniform(TimeDistribution):
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"uniform needs 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def icdf(self, u, schedule):
        return self.t_min + (self.t_max - self.t_min) * u


@dataclass(frozen=True)
class LogSNRNormal(TimeDistribution):
    """logsnr ~ N(mean, std^2)."""

    mean: float
    std: float

    def __post_init__(self):
        if not self.std > 0:
            raise ValueError(f"the log-SNR std must be > 0, got {self.std}")

    def icdf(self, u, schedule):
        z = math.sqrt(2) * torch.erfinv(2 * u.to(torch.float64) - 1)
        return schedule.t_from_logsnr(self.mean + self.std * z).to(u.dtype)


def lognormal(P_mean: float = -1.2, P_std: float = 1.2) -> LogSNRNormal:  # noqa: N803 (EDM's names)
    """EDM: ln(ve_sigma) ~ N(P_mean, P_std^2)."""
    return LogSNRNormal(-2 * P_mean, 2 * P_std)


def logit_normal(mean: float = 0.0, std: float = 1.0) -> LogSNRNormal:
    """SD3: on rectified flow t = sigmoid(mean + std z); elsewhere the same log-SNR distribution."""
    return LogSNRNormal(-2 * mean, 2 * std)


_DISTRIBUTIONS = {"uniform": Uniform, "lognormal": lognormal, "logit_normal": logit_normal}
DISTRIBUTIONS = tuple(_DISTRIBUTIONS)
MODES = ("iid", "stratified", "low_discrepancy", "importance")


def get_distribution(name: str, **options) -> TimeDistribution:
    return build("time distribution", _DISTRIBUTIONS, name, options)


@dataclass(frozen=True)
class TimeDraw:
    t: Tensor  # [batch]
    weight: Tensor  # [batch], 1 except under importance sampling
    u: Tensor  # [batch], the uniform quantiles behind t


class TimeSampler:
    """Draws ``t`` for a batch from ``distribution`` in ``mode`` (see the module docstring).

    ``u`` is kept inside ``[u_eps, 1 - u_eps]`` so that t never lands exactly on an endpoint where a
    parameterization's coefficients are infinite (t = 0 always; t = 1 for eps / score at zero SNR).
    """

    def __init__(self, distribution: TimeDistribution, mode: str = "iid", *, bins: int = 64,
                 uniform_mix: float = 0.1, warmup: int = 10, ema: float = 0.99, u_eps: float = 1e-5):
        if mode not in MODES:
            raise ValueError(f"unknown time-sampling mode {mode!r}; choose one of {', '.join(MODES)}")
        if not 0.0 < uniform_mix <= 1.0:
            raise ValueError(f"uniform_mix must be in (0, 1], got {uniform_mix}")
        if bins < 1 or warmup < 1 or not 0.0 <= ema < 1.0:
            raise ValueError("importance sampling needs bins >= 1, warmup >= 1 and 0 <= ema < 1")
        self.distribution, self.mode = distribution, mode
        self.bins, self.uniform_mix, self.warmup, self.ema, self.u_eps = bins, uniform_mix, warmup, ema, u_eps
        self.second_moment = torch.zeros(bins, dtype=torch.float64)
        self.counts = torch.zeros(bins, dtype=torch.long)

    # -- importance-sampling state (part of a training checkpoint) --------------------------------
    def state_dict(self) -> dict:
        return {"second_moment": self.second_moment.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.second_moment = state["second_moment"].to(torch.float64).clone()
        self.counts = state["counts"].to(torch.long).clone()

    @property
    def warmed_up(self) -> bool:
        return bool((self.counts >= self.warmup).all())

    def bin_probabilities(self) -> Tensor:
        """p_k of the importance sampler (uniform until warmed up)."""
        uniform = torch.full((self.bins,), 1.0 / self.bins, dtype=torch.float64)
        if self.mode != "importance" or not self.warmed_up:
            return uniform
        rms = self.second_moment.sqrt()
        if float(rms.sum()) <= 0 or not bool(torch.isfinite(rms).all()):
            return uniform
        return (1 - self.uniform_mix) * rms / rms.sum() + self.uniform_mix * uniform

    def update(self, u: Tensor, losses: Tensor) -> None:
        """Record per-example losses (before any importance weight) at their quantiles ``u``."""
        if self.mode != "importance":
            return
        u, losses = u.detach().to("cpu", torch.float64), losses.detach().to("cpu", torch.float64)
        k = (u * self.bins).long().clamp(0, self.bins - 1)
        for b in torch.unique(k).tolist():  # per-bin mean of squared losses, folded into an EMA
            sq = (losses[k == b] ** 2).mean()
            if not bool(torch.isfinite(sq)):
                continue
            if self.counts[b] == 0:
                self.second_moment[b] = sq
            else:
                self.second_moment[b] = self.ema * self.second_moment[b] + (1 - self.ema) * sq
            self.counts[b] += int((k == b).sum())

    # -- drawing ----------------------------------------------------------------------------------
    def draw_u(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(u, weight) for a batch of n."""
        gen = {"generator": generator, "dtype": torch.float64}
        weight = torch.ones(n, dtype=torch.float64)
        if self.mode == "iid":
            u = torch.rand(n, **gen)
        elif self.mode == "stratified":
            u = (torch.randperm(n, generator=generator).to(torch.float64) + torch.rand(n, **gen)) / n
        elif self.mode == "low_discrepancy":
            u = (torch.rand(1, **gen) + torch.arange(n, dtype=torch.float64) / n) % 1.0
        else:
            p = self.bin_probabilities()
            k = torch.multinomial(p, n, replacement=True, generator=generator)
            u = (k.to(torch.float64) + torch.rand(n, **gen)) / self.bins
            weight = 1.0 / (self.bins * p[k])
        return u.clamp(self.u_eps, 1 - self.u_eps), weight

    def __call__(self, n: int, schedule: Schedule, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> TimeDraw:
        u, weight = self.draw_u(n, generator)
        t = self.distribution.icdf(u, schedule).clamp(0.0, 1.0)
        return TimeDraw(t.to(device), weight.to(device), u.to(device))


def get(name: str = "uniform", mode: str = "iid", *, bins: int = 64, uniform_mix: float = 0.1,
        warmup: int = 10, **distribution_options) -> TimeSampler:
    """``get("lognormal", "stratified", P_mean=-1.2)``: a sampler over a named distribution."""
    return TimeSampler(get_distribution(name, **distribution_options), mode, bins=bins,
                       uniform_mix=uniform_mix, warmup=warmup)
