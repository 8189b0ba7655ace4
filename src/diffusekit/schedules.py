"""Noise schedules: the Gaussian path ``x_t = alpha(t) * x0 + sigma(t) * noise``.

Conventions (docs/design.md): ``t`` in [0, 1], t=0 is data, t=1 is noise. A schedule maps ``t`` to a
:class:`ScheduleAt` holding ``alpha``, ``sigma`` and their exact derivatives in ``t``; everything else
(log-SNR, EDM's noise level ``ve_sigma = sigma / alpha``) is derived from those four numbers.

``get(name, **options)`` builds one:

- ``rectified_flow``: alpha = 1 - t, sigma = t (Liu et al. 2023; SD3's path).
- ``cosine``: iDDPM's cosine schedule, alpha^2 = f(t)/f(0), f(t) = cos^2((t + s)/(1 + s) * pi/2), s = 0.008
  (Nichol & Dhariwal 2021, eq. 17), variance preserving. alpha(1) = 0 exactly.
- ``linear_vp``: DDPM's linear betas (1e-4 .. 0.02 over T = 1000, Ho et al. 2020) as the continuous
  VP-SDE of Song et al. 2021 (beta_min = 0.1, beta_max = 20): log alpha^2 = -beta_min t - (beta_max -
  beta_min) t^2 / 2. With ``discrete=True``: the T-step table itself, alpha_n = sqrt(prod_{i<=n}(1 -
  beta_i)), placed at t_n = n / T (n = 1..T, integer timestep n - 1) and linearly interpolated in alpha
  between them, so that models trained on integer timesteps see exactly their training noise levels.
- ``edm``: EDM's VE schedule (Karras et al. 2022, Table 1): alpha = 1, sigma = sigma_max * t, so that
  t and ve_sigma are interchangeable up to the scale sigma_max (default 80).

Options for every name:

- ``zero_terminal_snr=True``: the rescaling of Lin et al. 2023 (Algorithm 1) for VP schedules, so that
  alpha(1) = 0 exactly. On a discrete table it keeps the first entry fixed, as the paper does; on a
  continuous schedule it keeps alpha(0) = 1. Schedules whose alpha(1) is already 0 accept it as a no-op;
  VE schedules cannot reach zero SNR and raise.
- ``shift=s``: SD3's resolution shift (Esser et al. 2024, eq. 23), generalised to every schedule as a
  shift of log-SNR by ``-2 log s``. On ``rectified_flow`` it is exactly t' = s t / (1 + (s - 1) t); on
  ``edm`` it scales sigma_max by s. A shift s > 1 needs a schedule that reaches zero SNR at t = 1 (else
  the shifted noise levels would fall outside [0, 1]) and raises otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._registry import build

__all__ = ["ScheduleAt", "Schedule", "RectifiedFlow", "Cosine", "LinearVP", "DiscreteVP", "EDM",
           "ZeroTerminalSNR", "Shifted", "get", "NAMES"]


@dataclass(frozen=True)
class ScheduleAt:
    """A schedule evaluated at times ``t``: the path's coefficients and their derivatives in ``t``."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor

    @property
    def logsnr(self) -> Tensor:
        """log(alpha^2 / sigma^2): +inf at t=0, -inf where alpha=0."""
        return 2 * (torch.log(self.alpha) - torch.log(self.sigma))

    @property
    def ve_sigma(self) -> Tensor:
        """EDM's noise level sigma / alpha: the std of the noise in x_t / alpha."""
        return self.sigma / self.alpha


class Schedule:
    """Base class. Subclasses implement :meth:`coefficients` and :meth:`t_from_logsnr`."""

    #: True when alpha^2 + sigma^2 = 1 (variance preserving); Lin et al.'s rescaling needs it.
    variance_preserving: bool = False

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(alpha, sigma, d_alpha, d_sigma) at ``t``."""
        raise NotImplementedError

    def t_from_logsnr(self, logsnr: Tensor) -> Tensor:
        """The inverse of ``logsnr(t)``, clamped to [0, 1]."""
        raise NotImplementedError

    def __call__(self, t: Tensor | float) -> ScheduleAt:
        """The schedule at ``t``; Python numbers and integer tensors are evaluated in float64."""
        if not isinstance(t, Tensor) or not t.is_floating_point():
            t = torch.as_tensor(t, dtype=torch.float64)
        return ScheduleAt(t, *self.coefficients(t))

    def logsnr(self, t: Tensor | float) -> Tensor:
        return self(t).logsnr

    def t_from_ve_sigma(self, ve_sigma: Tensor | float) -> Tensor:
        """The time at which ``sigma / alpha`` equals ``ve_sigma`` (clamped to [0, 1])."""
        ve_sigma = torch.as_tensor(ve_sigma, dtype=torch.float64)
        return self.t_from_logsnr(-2 * torch.log(ve_sigma))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def _vp_sigma(alpha: Tensor, d_alpha: Tensor) -> tuple[Tensor, Tensor]:
    """sigma = sqrt(1 - alpha^2) and its derivative, for variance-preserving schedules."""
    sigma = torch.sqrt((1 - alpha) * (1 + alpha))  # avoids cancellation in 1 - alpha^2 near alpha = 1
    return sigma, -alpha * d_alpha / sigma


def _vp_t_alpha(logsnr: Tensor) -> Tensor:
    """alpha of a VP schedule with the given log-SNR: alpha^2 = sigmoid(logsnr)."""
    return torch.sqrt(torch.sigmoid(logsnr))


class RectifiedFlow(Schedule):
    """alpha = 1 - t, sigma = t (the linear / optimal-transport path of flow matching)."""

    def coefficients(self, t):
        one = torch.ones_like(t)
        return 1 - t, t, -one, one

    def t_from_logsnr(self, logsnr):
        # alpha / sigma = (1 - t) / t = exp(logsnr / 2)  =>  t = sigmoid(-logsnr / 2)
        return torch.sigmoid(-torch.as_tensor(logsnr) / 2)


class Cosine(Schedule):
    """iDDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17), continuous in t, variance preserving."""

    variance_preserving = True

    def __init__(self, s: float = 0.008):
        self.s = float(s)
        self._scale = math.pi / 2 / (1 + self.s)
        self._alpha0 = math.cos(self.s * self._scale)  # f(0)^(1/2)

    def coefficients(self, t):
        # cos((t + s) / (1 + s) * pi/2) written as sin of the complement, so alpha(1) = 0 exactly.
        angle = (1 - t) * self._scale
        alpha = torch.sin(angle) / self._alpha0
        d_alpha = -torch.cos(angle) * self._scale / self._alpha0
        sigma, d_sigma = _vp_sigma(alpha, d_alpha)
        return alpha, sigma, d_alpha, d_sigma

    def t_from_logsnr(self, logsnr):
        alpha = _vp_t_alpha(torch.as_tensor(logsnr))
        t = 1 - torch.asin((alpha * self._alpha0).clamp(max=1.0)) / self._scale
        return t.clamp(0.0, 1.0)


class LinearVP(Schedule):
    """DDPM's linear betas as the continuous VP-SDE (Song et al. 2021, eq. 33 with beta_min, beta_max)."""

    variance_preserving = True

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, T: int = 1000):
        self.beta_start, self.beta_end, self.T = float(beta_start), float(beta_end), int(T)
        self._b0 = self.beta_start * self.T  # 0.1
        self._b1 = self.beta_end * self.T  # 20

    def coefficients(self, t):
        log_alpha = -0.25 * t**2 * (self._b1 - self._b0) - 0.5 * t * self._b0
        alpha = torch.exp(log_alpha)
        d_alpha = alpha * (-0.5 * t * (self._b1 - self._b0) - 0.5 * self._b0)
        sigma = torch.sqrt(-torch.expm1(2 * log_alpha))
        return alpha, sigma, d_alpha, -alpha * d_alpha / sigma

    def t_from_logsnr(self, logsnr):
        # log alpha^2 = -softplus(-logsnr) = -(b0 t + (b1 - b0) t^2 / 2): solve the quadratic.
        sp = torch.nn.functional.softplus(-torch.as_tensor(logsnr))
        db = self._b1 - self._b0
        # (-b0 + sqrt(b0^2 + 2 db sp)) / db, written without cancellation for small sp.
        t = 2 * sp / (self._b0 + torch.sqrt(self._b0**2 + 2 * db * sp))
        return t.clamp(0.0, 1.0)


class DiscreteVP(Schedule):
    """A T-step VP table alpha_n (n = 1..T) at t_n = n / T, linear in alpha between grid points.

    alpha(0) = 1. The integer timestep of a model trained diffusers-style is ``round(t * T) - 1``
    (:meth:`timestep_index` gives the continuous version ``t * T - 1``).
    """

    variance_preserving = True

    def __init__(self, alphas: Tensor):
        alphas = torch.as_tensor(alphas, dtype=torch.float64)
        if alphas.ndim != 1 or len(alphas) < 2:
            raise ValueError("DiscreteVP needs a 1-D table of at least 2 alphas")
        if not bool((alphas[1:] <= alphas[:-1]).all()) or not bool((alphas >= 0).all() & (alphas < 1).all()):
            raise ValueError("DiscreteVP alphas must be non-increasing and in [0, 1)")
        self.T = len(alphas)
        self._table = torch.cat([torch.ones(1, dtype=torch.float64), alphas])  # alpha at t = n / T, n = 0..T

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, T: int = 1000) -> DiscreteVP:
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(torch.exp(0.5 * torch.cumsum(torch.log1p(-betas), 0)))

    @property
    def alphas(self) -> Tensor:
        """The table alpha_n, n = 1..T (sqrt of diffusers' ``alphas_cumprod``)."""
        return self._table[1:]

    def timestep_index(self, t: Tensor) -> Tensor:
        return t * self.T - 1

    def coefficients(self, t):
        table = self._table.to(device=t.device, dtype=t.dtype)
        pos = (t * self.T).clamp(0, self.T)
        i = pos.floor().long().clamp(max=self.T - 1)
        slope = (table[i + 1] - table[i]) * self.T
        alpha = table[i] + (pos - i.to(t.dtype)) * slope / self.T
        sigma, d_sigma = _vp_sigma(alpha, slope)
        return alpha, sigma, slope, d_sigma

    def t_from_logsnr(self, logsnr):
        logsnr = torch.as_tensor(logsnr)
        alpha = _vp_t_alpha(logsnr).to(torch.float64)
        desc = self._table.to(alpha.device)
        # the table is decreasing: search in its negation
        i = torch.searchsorted(-desc, -alpha.reshape(-1).contiguous(), right=True).clamp(1, self.T) - 1
        a0, a1 = desc[i], desc[i + 1]
        frac = torch.where(a0 > a1, (a0 - alpha.reshape(-1)) / (a0 - a1), torch.zeros_like(a0))
        t = ((i.to(torch.float64) + frac.clamp(0, 1)) / self.T).reshape(alpha.shape)
        return t.to(logsnr.dtype if logsnr.is_floating_point() else torch.float64)


class EDM(Schedule):
    """EDM's VE schedule (Karras et al. 2022, Table 1, 'ours'): alpha = 1, sigma = sigma_max * t."""

    def __init__(self, sigma_max: float = 80.0):
        self.sigma_max = float(sigma_max)

    def coefficients(self, t):
        one = torch.ones_like(t)
        return one, self.sigma_max * t, torch.zeros_like(t), self.sigma_max * one

    def t_from_logsnr(self, logsnr):
        return (torch.exp(-torch.as_tensor(logsnr) / 2) / self.sigma_max).clamp(0.0, 1.0)


class ZeroTerminalSNR(Schedule):
    """Lin et al. 2023, Algorithm 1, on a continuous VP schedule: alpha' = (alpha - alpha_1) / (1 - alpha_1).

    The result is again variance preserving (sigma' = sqrt(1 - alpha'^2)) with alpha'(0) = 1 and
    alpha'(1) = 0 exactly.
    """

    variance_preserving = True

    def __init__(self, base: Schedule):
        if not base.variance_preserving:
            raise ValueError(f"zero_terminal_snr needs a variance-preserving schedule, got {base!r}")
        self.base = base
        self._alpha1 = float(base(1.0).alpha)
        self._scale = 1.0 / (1.0 - self._alpha1)

    def coefficients(self, t):
        alpha, _, d_alpha, _ = self.base.coefficients(t)
        alpha = ((alpha - self._alpha1) * self._scale).clamp(min=0.0)
        d_alpha = d_alpha * self._scale
        sigma, d_sigma = _vp_sigma(alpha, d_alpha)
        return alpha, sigma, d_alpha, d_sigma

    def t_from_logsnr(self, logsnr):
        logsnr = torch.as_tensor(logsnr)
        alpha = _vp_t_alpha(logsnr) / self._scale + self._alpha1
        base_logsnr = torch.log(alpha**2) - torch.log1p(-(alpha**2))
        t = self.base.t_from_logsnr(base_logsnr)
        return torch.where(logsnr == -math.inf, torch.ones_like(t), t)


class Shifted(Schedule):
    """SD3's shift generalised: log-SNR moves by ``-2 log(shift)`` at every t (shift > 1: noisier).

    alpha, sigma at t are the base schedule's at w(t) = base.t_from_logsnr(base.logsnr(t) - 2 log s).
    w'(t) is written from the identity (alpha / sigma)(w) = (alpha / sigma)(t) / s, in the form that is
    finite at the endpoint nearest to t (t = 0 where sigma = 0, t = 1 where alpha may be 0).
    """

    def __init__(self, base: Schedule, shift: float):
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.base, self.shift = base, float(shift)
        self.variance_preserving = base.variance_preserving

    def _warp(self, t: Tensor) -> Tensor:
        w = self.base.t_from_logsnr(self.base.logsnr(t) - 2 * math.log(self.shift)).to(t.dtype)
        return torch.where(t >= 1, torch.ones_like(t), torch.where(t <= 0, torch.zeros_like(t), w))

    def coefficients(self, t):
        a_t, s_t, da_t, ds_t = self.base.coefficients(t)
        w = self._warp(t)
        a_w, s_w, da_w, ds_w = self.base.coefficients(w)
        # dlogsnr/dt = 2 (d_alpha sigma - d_sigma alpha) / (alpha sigma); w' is the ratio of the two.
        ratio = (da_t * s_t - ds_t * a_t) / (da_w * s_w - ds_w * a_w)
        by_alpha = self.shift * ratio * (a_w / a_t) ** 2
        by_sigma = ratio * (s_w / s_t) ** 2 / self.shift
        dw = torch.where(a_t >= s_t, by_alpha, by_sigma)
        return a_w, s_w, da_w * dw, ds_w * dw

    def t_from_logsnr(self, logsnr):
        return self.base.t_from_logsnr(torch.as_tensor(logsnr) + 2 * math.log(self.shift))


def _linear_vp(discrete: bool = False, beta_start: float = 1e-4, beta_end: float = 0.02, T: int = 1000):
    if discrete:
        return DiscreteVP.linear(beta_start, beta_end, T)
    return LinearVP(beta_start, beta_end, T)


_BUILDERS = {
    "rectified_flow": RectifiedFlow,
    "cosine": Cosine,
    "linear_vp": _linear_vp,
    "edm": EDM,
}
NAMES = tuple(_BUILDERS)


def _zero_terminal(schedule: Schedule) -> Schedule:
    alpha1 = float(schedule(1.0).alpha)
    if alpha1 == 0.0:
        return schedule  # already zero terminal SNR (rectified flow, cosine)
    if isinstance(schedule, DiscreteVP):
        a = schedule.alphas
        return DiscreteVP((a - a[-1]) * a[0] / (a[0] - a[-1]))  # Lin et al. 2023, Algorithm 1
    return ZeroTerminalSNR(schedule)


def get(name: str, *, zero_terminal_snr: bool = False, shift: float | None = None, **options) -> Schedule:
    """Build a schedule by name; see the module docstring for names and options."""
    schedule = build("schedule", _BUILDERS, name, options)
    if zero_terminal_snr:
        schedule = _zero_terminal(schedule)
    if shift is not None and shift != 1.0:
        schedule = _shift(schedule, float(shift))
    return schedule


def _shift(schedule: Schedule, shift: float) -> Schedule:
    if isinstance(schedule, EDM) and shift > 0:
        return EDM(schedule.sigma_max * shift)  # ve_sigma scales by the shift: exact, and keeps t in [0, 1]
    if shift > 1 and float(schedule(1.0).alpha) != 0.0:
        raise ValueError(f"shift={shift} > 1 would move noise levels past t = 1 of {schedule!r}, whose terminal "
                         "SNR is not zero; use zero_terminal_snr=True or a schedule that reaches pure noise")
    return Shifted(schedule, shift)
