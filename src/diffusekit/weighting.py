"""Loss weightings, each defined on the x0-space error ``||x0_hat - x0||^2`` as a function of ScheduleAt.

Because ``F - target = (x0_hat - x0) / c_out``, an x0-space weight w becomes ``w * c_out^2`` on the
network-output (F-space) MSE that the loss computes (docs/design.md). So:

- ``unit``: the parameterization's own plain MSE on F (x0-space weight 1 / c_out^2): eps-MSE for eps,
  v-MSE for v, flow matching's MSE for velocity, EDM's loss for edm with its lambda.
- ``snr``: SNR(t) = alpha^2 / sigma^2 (Kingma et al. 2021; equals the eps-MSE in x0 space).
- ``min_snr``: min(SNR, gamma) (Hang et al. 2023, gamma = 5).
- ``edm``: lambda = (ve_sigma^2 + sigma_data^2) / (ve_sigma sigma_data)^2 (Karras et al. 2022, eq. 8 and
  Table 1), which is the unit weight of the edm parameterization.
- ``sigmoid``: sigmoid(b - logsnr) on the eps-MSE (Kingma & Gao 2023, 'VDM++', b = 0 default);
  in x0 space SNR * sigmoid(b - logsnr).
- ``elbo``: -1/2 lambda'(t) SNR(t), lambda = logsnr (Kingma et al. 2021, 'VDM', eq. 17 and appendix): the
  continuous-time diffusion loss of the variational bound. Per unit of *uniform* time density it is the
  ELBO's integrand, so for t ~ U(0, 1) with no importance weight
  ``D * E_{t, noise}[DiffusionLoss(weighting="elbo").loss]`` equals the diffusion term
  ``L_inf = -1/2 E_{t ~ U(0,1), noise}[lambda'(t) ||eps - eps_hat||^2]`` of one example, in nats: the loss
  averages the squared error over the D = numel(x0) / batch dimensions of an example, the bound sums them.
  Over a time window U(t_min, t_max) the same product times (t_max - t_min) is the integral over the window
  (:func:`diffusekit.likelihood.elbo` uses exactly this). Other time distributions (lognormal, importance)
  estimate a *differently weighted* integral; only uniform t gives the bound.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import build
from .parameterizations import Parameterization
from .schedules import ScheduleAt

__all__ = ["Weighting", "get", "NAMES"]


class Weighting:
    name = ""

    def x0_weight(self, at: ScheduleAt) -> Tensor:
        raise NotImplementedError

    def __call__(self, at: ScheduleAt, parameterization: Parameterization) -> Tensor:
        """The weight on the F-space squared error."""
        _, c_out = parameterization.coefficients(at)
        return self.x0_weight(at) * c_out**2

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Unit(Weighting):
    name = "unit"

    def __call__(self, at, parameterization):
        return torch.ones_like(at.t)


def _snr(at: ScheduleAt) -> Tensor:
    return (at.alpha / at.sigma) ** 2


class SNR(Weighting):
    name = "snr"

    def x0_weight(self, at):
        return _snr(at)


class MinSNR(Weighting):
    name = "min_snr"

    def __init__(self, gamma: float = 5.0):
        if not gamma > 0:
            raise ValueError(f"min_snr gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)

    def x0_weight(self, at):
        return _snr(at).clamp(max=self.gamma)


class EDMWeight(Weighting):
    name = "edm"

    def __init__(self, sigma_data: float = 0.5):
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def x0_weight(self, at):
        sd2 = self.sigma_data**2
        # (ve^2 + sd^2) / (ve sd)^2 with ve = sigma / alpha, multiplied through by alpha^2
        return (at.sigma**2 + sd2 * at.alpha**2) / (at.sigma**2 * sd2)


class Sigmoid(Weighting):
    name = "sigmoid"

    def __init__(self, bias: float = 0.0):
        self.bias = float(bias)

    def x0_weight(self, at):
        return _snr(at) * torch.sigmoid(self.bias - at.logsnr)


class ELBO(Weighting):
    """-1/2 lambda'(t) SNR(t) on the x0 error (Kingma et al. 2021, eq. 17 with ||eps - eps_hat||^2 =
    SNR ||x0 - x0_hat||^2). With lambda' = 2 (alpha'/alpha - sigma'/sigma) and SNR = alpha^2 / sigma^2 it is
    ``alpha (alpha sigma' - sigma alpha') / sigma^3``, written so that it is exactly 0 (not 0 * inf) where
    alpha = 0 (zero terminal SNR: rectified flow and cosine at t = 1). It is >= 0 for every schedule whose
    log-SNR decreases, and infinite at t = 0 (sigma = 0), where the time samplers never land."""

    name = "elbo"

    def x0_weight(self, at):
        return at.alpha * (at.alpha * at.d_sigma - at.sigma * at.d_alpha) / at.sigma**3


_CLASSES = {cls.name: cls for cls in (Unit, SNR, MinSNR, EDMWeight, Sigmoid, ELBO)}
NAMES = tuple(_CLASSES)


def get(name: str = "unit", **options) -> Weighting:
    return build("loss weighting", _CLASSES, name, options)
