"""What the network predicts, as one exact identity: ``x0_hat = c_skip(t) * x_t + c_out(t) * F``.

Under a Gaussian path every prediction target is affine in ``x_t``, so a parameterization is only the
pair ``(c_skip, c_out)`` computed from the schedule's ``(alpha, sigma, d_alpha, d_sigma)`` (docs/design.md).
From that pair alone:

- ``to_x0(F, x_t, at) = c_skip * x_t + c_out * F``;
- ``training_target(x0, noise, at) = (x0 - c_skip * x_t) / c_out``, so the loss needs no branch on the
  prediction type; the F-space MSE of a parameterization equals the x0-space MSE weighted by 1 / c_out^2.

| name     | F predicts                 | c_skip                           | c_out                            |
|----------|----------------------------|----------------------------------|----------------------------------|
| x0       | x0                         | 0                                | 1                                |
| eps      | noise                      | 1/a                              | -s/a                             |
| v        | a*noise - s*x0             | a/(a^2+s^2)                      | -s/(a^2+s^2)                     |
| velocity | da*x0 + ds*noise           | ds/(a ds - s da)                 | -s/(a ds - s da)                 |
| score    | -noise/s                   | 1/a                              | s^2/a                            |
| edm      | preconditioned network F   | sd^2 a/(s^2 + sd^2 a^2)          | s sd/sqrt(s^2 + sd^2 a^2)        |

(a, s, da, ds = alpha, sigma, d_alpha, d_sigma; sd = sigma_data.)

Sign and direction conventions. Here t=0 is data and t=1 is noise, and ``velocity`` is ``d x_t / dt``
along the path: on ``rectified_flow`` it is ``noise - x0``. Flow matching is often written with the target
``u = x0 - x1``, x1 the noise, i.e. the direction from noise to data, which is ``-velocity`` here. Lipman et
al.'s flow matching runs time the other way (X0 noise, X1 data, alpha_t = t multiplying the data), so its
``u_t = d X_t / dt`` is also ``-velocity`` and its time is ``1 - t``. Checkpoints from such code
(flow_matching, torchcfm) convert with ``t -> 1 - t`` and
``F -> -F`` in one adapter. ``v`` is Salimans & Ho's (2022) ``alpha * eps - sigma * x0``,
unrelated to ``velocity``. ``score`` is the conditional score ``grad log p(x_t | x0) = -noise / sigma``,
whose regression target's minimiser is the marginal score (Vincent 2011). ``edm`` is Karras et al. 2022's
preconditioning (Table 1) applied to ``x_t / alpha`` with noise level ``ve_sigma = sigma / alpha``,
written multiplied through by alpha so that it stays finite where alpha = 0.

eps and score cannot express x0 where alpha = 0 (zero terminal SNR: their c_skip is infinite), which
is why Lin et al. 2023 move to v; the others are finite on the whole of [0, 1) and at t = 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import build
from ._tensors import append_dims
from .schedules import ScheduleAt

__all__ = ["Parameterization", "X0", "Eps", "V", "Velocity", "Score", "EDM", "get", "NAMES"]


class Parameterization:
    """Base class: subclasses give ``coefficients(at) -> (c_skip, c_out)``."""

    name: str = ""

    def coefficients(self, at: ScheduleAt) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def to_x0(self, network_output: Tensor, x_t: Tensor, at: ScheduleAt) -> Tensor:
        """x0_hat from the raw network output F."""
        c_skip, c_out = self.coefficients(at)
        return append_dims(c_skip, x_t) * x_t + append_dims(c_out, x_t) * network_output

    def training_target(self, x0: Tensor, noise: Tensor, at: ScheduleAt) -> Tensor:
        """The F that makes ``to_x0`` return ``x0`` exactly: ``(x0 - c_skip x_t) / c_out``.

        Expanded in (x0, noise) with coefficients computed in the schedule's dtype, so that a float64
        schedule gives a target accurate to float64 even where c_skip and c_out are large.
        """
        c_skip, c_out = self.coefficients(at)
        a = (1 - c_skip * at.alpha) / c_out  # coefficient of x0
        b = -c_skip * at.sigma / c_out  # coefficient of noise
        return append_dims(a, x0) * x0 + append_dims(b, x0) * noise

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class X0(Parameterization):
    name = "x0"

    def coefficients(self, at):
        return torch.zeros_like(at.alpha), torch.ones_like(at.alpha)


class Eps(Parameterization):
    """DDPM's noise prediction (Ho et al. 2020)."""

    name = "eps"

    def coefficients(self, at):
        return 1 / at.alpha, -at.sigma / at.alpha


class V(Parameterization):
    """Salimans & Ho 2022, v = alpha * noise - sigma * x0 (their section 4 and appendix D)."""

    name = "v"

    def coefficients(self, at):
        norm = at.alpha**2 + at.sigma**2
        return at.alpha / norm, -at.sigma / norm


class Velocity(Parameterization):
    """Flow matching's u = d x_t / dt = d_alpha * x0 + d_sigma * noise (Lipman et al. 2023)."""

    name = "velocity"

    def coefficients(self, at):
        det = at.alpha * at.d_sigma - at.sigma * at.d_alpha
        return at.d_sigma / det, -at.sigma / det


class Score(Parameterization):
    """The score grad_x log p(x_t | x0) = -noise / sigma (Song et al. 2021)."""

    name = "score"

    def coefficients(self, at):
        return 1 / at.alpha, at.sigma**2 / at.alpha


class EDM(Parameterization):
    """Karras et al. 2022 preconditioning (Table 1) in ve_sigma = sigma / alpha, multiplied through by alpha."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5):
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def coefficients(self, at):
        sd2 = self.sigma_data**2
        denom = at.sigma**2 + sd2 * at.alpha**2  # = alpha^2 (ve_sigma^2 + sigma_data^2)
        return sd2 * at.alpha / denom, at.sigma * self.sigma_data / torch.sqrt(denom)


_CLASSES = {cls.name: cls for cls in (X0, Eps, V, Velocity, Score, EDM)}
NAMES = tuple(_CLASSES)


def get(name: str, **options) -> Parameterization:
    """Build a parameterization by name (``x0``, ``eps``, ``v``, ``velocity``, ``score``, ``edm``)."""
    return build("parameterization", _CLASSES, name, options)
