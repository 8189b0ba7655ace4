"""The continuous-time variational bound of a diffusion model (Kingma et al. 2021, "Variational Diffusion Models").

For x of D = numel(x) / batch dimensions, a time window [t_min, t_max] and x_t = alpha x + sigma eps,

    -log p(x) <= prior + reconstruction + diffusion   (nats, per example),

- ``prior`` = KL(q(x_T | x) || p(x_T)) at T = t_max, with p(x_T) = N(0, sigma(T)^2 I), the density samplers start
  from (``sigma(ts[0]) * noise``). Both Gaussians share the variance, so KL = SNR(T) ||x||^2 / 2: exactly 0 on a
  zero-terminal-SNR schedule at T = 1, ||x||^2 / (2 sigma_max^2) on a VE schedule.
- ``reconstruction`` = -E log p(x | x_{t_min}) with the Gaussian decoder p(x | z) = N(x; z / alpha, r^2 I),
  r = sigma / alpha at t_min. This is q(z | x) = N(z; alpha x, sigma^2 I) read as a density in x, the decoder
  VDM's continuous-data limit gives (a flat prior over x at noise level r). As z / alpha = x + r eps it is the
  same for every x: D (log(2 pi r^2) + 1) / 2, no denoiser call needed.
- ``diffusion`` = -1/2 int_{t_min}^{t_max} lambda'(t) E_eps ||eps - eps_hat||^2 dt
  = int_{t_min}^{t_max} w(t) E_eps ||x - x0_hat(x_t, t)||^2 dt with w = -1/2 lambda' SNR (VDM eq. 17; lambda is
  the log-SNR), the weight of :class:`diffusekit.weighting.ELBO`. The sum over dimensions is the bound's; the
  training loss takes the mean, so D (t_max - t_min) times the mean ``DiffusionLoss(weighting="elbo")`` under
  t ~ U(t_min, t_max) is the same estimate for the same draws of t and noise (tests/likelihood/test_elbo.py).

The bound's gap (what theory says). Write q(x | z) for the exact posterior of the data given z = x_{t_min}. With
the exact denoiser and a zero-SNR schedule at t_max = 1 (prior term 0), the path terms are exact and
-ELBO(x) + log p(x) = E_{z ~ q(z | x)}[log q(x | z) - log p(x | z)]: its mean over the data is
E_z KL(q(x | z) || p(x | z)) >= 0, which vanishes as r -> 0 for a smooth density. For Gaussian data N(m, s^2) per
dimension it is exactly (1/2) log(1 + r^2 / s^2) per dimension, about r^2 / (2 s^2).

How the time integral is estimated (``time``):

- ``uniform``: t ~ U(t_min, t_max) independently per (sample, row); the estimate is (t_max - t_min) times the mean
  integrand. Unbiased, and the exact counterpart of the training loss, but its variance is large on fixed
  schedules with a small t_min, where w(t) E||x - x0_hat||^2 grows like D |lambda'(t)| / 2.
- ``low_discrepancy``: VDM's shifted lattice (appendix I.2) over a row's samples, u_s = (u_0 + s / S) mod 1.
- ``quadrature``: the same integral in log-SNR, int 1/2 e^lambda E||x - x0_hat||^2 dlambda, where it is bounded by
  D / 2 and smooth: composite 8-point Gauss-Legendre over [max(lambda(t_max), -30), lambda(t_min)] (the neglected
  tail below -30 is at most e^-30 / 2 times the largest squared error), each sample one draw of eps shared by all
  nodes. Deterministic in t; the remaining randomness is only eps.

``stderr`` is the standard error of ``total`` over a row's ``samples`` draws (the prior and reconstruction terms
are exact). For ``low_discrepancy`` the draws are not independent and the independent-draw formula overstates it.
It is NaN with one sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._tensors import append_dims
from ..conditions import Conditions
from ..schedules import Schedule
from ..weighting import ELBO

__all__ = ["ELBOResult", "elbo", "elbo_integrand", "TIME_MODES", "LOGSNR_FLOOR"]

TIME_MODES = ("low_discrepancy", "uniform", "quadrature")
LOGSNR_FLOOR = -30.0  # quadrature's lower end in log-SNR (zero-SNR schedules reach -inf at t = 1)
DEFAULT_VE_SIGMA_MIN = 1e-3  # t_min default: r = sigma / alpha = 1e-3, VDM's SNR_max = e^13.3 (r ~ 1.3e-3)
_GL_ORDER = 8  # Gauss-Legendre points per panel of the quadrature


@dataclass(frozen=True)
class ELBOResult:
    """Per-row terms of the bound, all ``[N]`` float64 nats: ``total`` = prior + reconstruction + diffusion is
    -ELBO, an upper bound on -log p(x) (estimated: ``stderr`` is its Monte-Carlo standard error)."""

    total: Tensor
    prior: Tensor
    reconstruction: Tensor
    diffusion: Tensor
    stderr: Tensor
    t_min: float
    t_max: float
    nfe: int  # denoiser calls per row


def elbo_integrand(denoise, schedule: Schedule, x: Tensor, t: Tensor, noise: Tensor,
                   cond: Conditions | None = None) -> Tensor:
    """w(t) ||x - x0_hat(alpha x + sigma noise, t)||^2 summed over dimensions, w = -1/2 lambda'(t) SNR(t).

    Args: ``x`` and ``noise`` ``[N, ...]``, ``t`` ``[N]``. Returns ``[N]`` float64; its mean over t ~ U(t_min, t_max)
    times (t_max - t_min) is the diffusion term.
    """
    at = schedule(t.to(torch.float64))
    return ELBO().x0_weight(at) * _squared_error(denoise, x, at.t, at.alpha, at.sigma, noise, cond)


def _squared_error(denoise, x, t, alpha, sigma, noise, cond) -> Tensor:
    """||x - x0_hat(x_t, t)||^2 per row, float64."""
    x_t = append_dims(alpha, x) * x + append_dims(sigma, x) * noise
    x0_hat = denoise(x_t, t.to(device=x.device, dtype=x.dtype), cond)
    diff = (x0_hat.to(torch.float64) - x.to(torch.float64)).reshape(len(x), -1)
    return diff.pow(2).sum(1).cpu()


def _randn(shape, generator, x: Tensor) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _check(schedule: Schedule, x: Tensor, t_min: float | None, t_max: float, samples: int, time: str,
           nodes: int, noise: Tensor | None) -> float:
    if time not in TIME_MODES:
        raise ValueError(f"unknown time mode {time!r}; choose one of {', '.join(TIME_MODES)}")
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch [N, ...], got shape {tuple(x.shape)}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if nodes < _GL_ORDER or nodes % _GL_ORDER:
        raise ValueError(f"nodes must be a positive multiple of {_GL_ORDER}, got {nodes}")
    if t_min is None:  # a schedule that is noisier than that at t = 0 (the learned one) starts at 0
        t_min = float(schedule.t_from_ve_sigma(DEFAULT_VE_SIGMA_MIN))
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if not float(schedule(torch.tensor(t_min, dtype=torch.float64)).ve_sigma) > 0.0:
        raise ValueError(f"t_min={t_min}: the schedule is noiseless there (sigma / alpha = 0), where the bound's "
                         "reconstruction term is infinite; give t_min > 0")
    if noise is not None and tuple(noise.shape) != (samples, *x.shape):
        raise ValueError(f"noise must be [samples, *x.shape] = {[samples, *x.shape]}, got {list(noise.shape)}")
    return t_min


@torch.no_grad()
def elbo(denoise, schedule: Schedule, x: Tensor, *, t_min: float | None = None, t_max: float = 1.0,
         samples: int = 8, time: str = "quadrature", nodes: int = 128, noise: Tensor | None = None,
         generator: torch.Generator | None = None, cond: Conditions | None = None) -> ELBOResult:
    """-ELBO per row of ``x`` ``[N, ...]`` under ``denoise(x_t, t[N], cond) -> x0_hat`` on ``schedule``.

    Args:
        t_min, t_max: the window of the diffusion term; t_min None: where sigma / alpha = 1e-3.
        samples: draws of eps (and of t, for ``uniform`` / ``low_discrepancy``) per row.
        time: ``quadrature`` (log-SNR Gauss-Legendre, ``nodes`` points), ``low_discrepancy`` or ``uniform``
            (module docstring).
        noise: optional fixed eps ``[samples, *x.shape]`` (common random numbers across models); else drawn from
            ``generator`` after the times.
    Denoiser calls per row: ``samples`` (Monte Carlo) or ``samples * nodes`` (quadrature).
    """
    t_min = _check(schedule, x, t_min, t_max, samples, time, nodes, noise)
    n, dims = len(x), x[0].numel()
    draws = torch.empty(samples, n, dtype=torch.float64)
    if time == "quadrature":
        lam, weight = _logsnr_nodes(schedule, t_min, t_max, nodes)
        t_nodes = schedule.t_from_logsnr(lam).to(torch.float64)
        for s in range(samples):
            eps = noise[s] if noise is not None else _randn(x.shape, generator, x)
            total = torch.zeros(n, dtype=torch.float64)
            for t_j, w_j in zip(t_nodes.tolist(), weight.tolist(), strict=True):
                at = schedule(torch.full((n,), t_j, dtype=torch.float64))
                snr = (at.alpha / at.sigma) ** 2
                total += w_j * 0.5 * snr * _squared_error(denoise, x, at.t, at.alpha, at.sigma, eps, cond)
            draws[s] = total
        nfe = samples * nodes
    else:
        u = _uniforms(time, samples, n, generator)
        t = t_min + (t_max - t_min) * u
        for s in range(samples):
            eps = noise[s] if noise is not None else _randn(x.shape, generator, x)
            draws[s] = (t_max - t_min) * elbo_integrand(denoise, schedule, x, t[s].to(x.device), eps, cond)
        nfe = samples
    diffusion = draws.mean(0)
    stderr = draws.std(0) / math.sqrt(samples) if samples > 1 else torch.full((n,), math.nan, dtype=torch.float64)
    prior = _prior_kl(schedule, x, t_max)
    r = float(schedule(t_min).ve_sigma)
    reconstruction = torch.full((n,), 0.5 * dims * (math.log(2 * math.pi * r**2) + 1), dtype=torch.float64)
    return ELBOResult(prior + reconstruction + diffusion, prior, reconstruction, diffusion, stderr, t_min, t_max,
                      nfe)


def _uniforms(time: str, samples: int, n: int, generator) -> Tensor:
    """u in [0, 1) of shape [samples, n]: independent, or VDM's shifted lattice per row."""
    if time == "uniform":
        return torch.rand(samples, n, generator=generator, dtype=torch.float64)
    u0 = torch.rand(n, generator=generator, dtype=torch.float64)
    return (u0 + torch.arange(samples, dtype=torch.float64)[:, None] / samples) % 1.0


def _logsnr_nodes(schedule: Schedule, t_min: float, t_max: float, nodes: int) -> tuple[Tensor, Tensor]:
    """Composite Gauss-Legendre nodes and weights in log-SNR over [max(lambda(t_max), floor), lambda(t_min)]."""
    hi = float(schedule(t_min).logsnr)
    lo = max(float(schedule(t_max).logsnr), LOGSNR_FLOOR)
    if not lo < hi:
        raise ValueError(f"log-SNR at t_min ({hi:.3g}) must exceed the one at t_max ({lo:.3g})")
    x, w = np.polynomial.legendre.leggauss(_GL_ORDER)
    edges = np.linspace(lo, hi, nodes // _GL_ORDER + 1)
    half = np.diff(edges) / 2
    mids = (edges[1:] + edges[:-1]) / 2
    lam = (mids[:, None] + half[:, None] * x[None, :]).reshape(-1)
    weight = (half[:, None] * w[None, :]).reshape(-1)
    return torch.from_numpy(lam), torch.from_numpy(weight)


def _prior_kl(schedule: Schedule, x: Tensor, t_max: float) -> Tensor:
    """KL(N(alpha x, sigma^2 I) || N(0, sigma^2 I)) at t_max = SNR ||x||^2 / 2 per row."""
    at = schedule(t_max)
    snr = float((at.alpha / at.sigma) ** 2)
    return 0.5 * snr * x.to(torch.float64).reshape(len(x), -1).pow(2).sum(1).cpu()
