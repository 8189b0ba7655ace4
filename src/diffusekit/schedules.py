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
- ``learned``: VDM's learned VP schedule gamma(t) = -logsnr(t) (Kingma et al. 2021), a monotone network with
  torch parameters (the maths and its training: :mod:`diffusekit.learned_schedule`; options hidden,
  gamma_min, gamma_max, learn_endpoints, lr_scale, seed).

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

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

from ._registry import build

__all__ = ["ScheduleAt", "Schedule", "RectifiedFlow", "Cosine", "LinearVP", "DiscreteVP", "EDM",
           "ZeroTerminalSNR", "Shifted", "MonotoneNetwork", "VarianceTape", "LearnedVP", "get", "NAMES"]


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


# -- VDM's learned schedule (the maths: diffusekit.learned_schedule) ---------------------------------------------

_INVERSE_SOFTPLUS_1 = math.log(math.e - 1)  # softplus(x) = 1


class MonotoneNetwork(nn.Module):
    """g(t) = l1(t) + l3(sigmoid(l2(l1(t)))) with positive weights, and the endpoints gamma_min, gamma_max.

    ``interior(t)`` returns s(t) = (g(t) - g(0)) / (g(1) - g(0)) in [0, 1] and s'(t), with ``t``'s shape and
    dtype (the float32 parameters are cast to it, so float64 evaluation is exact to float64).
    """

    def __init__(self, hidden: int = 1024, gamma_min: float = -13.3, gamma_max: float = 5.0,
                 learn_endpoints: bool = True, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.tensor([_INVERSE_SOFTPLUS_1]))  # l1(t) = t at initialisation
        self.b1 = nn.Parameter(torch.zeros(1))
        self.w2 = nn.Parameter(torch.randn(hidden, generator=g))  # softplus: slopes ~0.3 .. 2
        # sigmoid transitions centred at l1 = 1/2 (VDM feeds l2 with 2 (t - 1/2))
        self.b2 = nn.Parameter(-softplus(self.w2.detach()) / 2)
        self.w3 = nn.Parameter(torch.randn(hidden, generator=g))
        self.gamma_min = nn.Parameter(torch.tensor(float(gamma_min)), requires_grad=learn_endpoints)
        self.gamma_max = nn.Parameter(torch.tensor(float(gamma_max)), requires_grad=learn_endpoints)

    @property
    def hidden(self) -> int:
        return self.w2.numel()

    def shape_parameters(self) -> list[nn.Parameter]:
        """The parameters of g (trained on the variance), not the endpoints."""
        return [self.w1, self.b1, self.w2, self.b2, self.w3]

    def g(self, t: Tensor, detach: bool = False) -> tuple[Tensor, Tensor]:
        """(g(t), g'(t)) for a 1-D ``t``; ``detach``: as constants of the parameters (gradients to t only)."""
        # cast before the softplus: a float64 schedule is then exact to float64 for the stored parameters
        w1, b1, w2, b2, w3 = ((p.detach() if detach else p).to(t.dtype) for p in self.shape_parameters())
        w1, w2, w3 = softplus(w1), softplus(w2), softplus(w3) / self.hidden
        u = w1 * t + b1  # [N]
        h = torch.sigmoid(u[:, None] * w2 + b2)  # [N, hidden]
        value = u + h @ w3
        slope = w1 * (1 + (h * (1 - h) * w2) @ w3)
        return value, slope

    def interior(self, t: Tensor, detach: bool = False) -> tuple[Tensor, Tensor]:
        """(s(t), s'(t)), each of ``t``'s shape."""
        flat = t.reshape(-1)
        ends = torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device)
        value, slope = self.g(torch.cat([flat, ends]), detach)
        g0, g1 = value[-2], value[-1]
        span = g1 - g0
        s = ((value[:-2] - g0) / span).clamp(0.0, 1.0)
        return s.reshape(t.shape), (slope[:-2] / span).reshape(t.shape)

    def endpoints(self, dtype: torch.dtype, detach: bool = False) -> tuple[Tensor, Tensor]:
        low, high = (self.gamma_min, self.gamma_max) if not detach else (self.gamma_min.detach(),
                                                                          self.gamma_max.detach())
        return low.to(dtype), high.to(dtype)


class VarianceTape:
    """The evaluations (s, s') of a learned schedule made while recording; see the module docstring."""

    def __init__(self):
        self.records: list[tuple[Tensor, Tensor]] = []

    def scale_gradients(self, losses: Tensor) -> None:
        """Make the gradient that reaches g through the recorded evaluations that of mean(L^2) instead of
        mean(L): each example's gradient is multiplied by 2 L_i. ``losses``: [batch], the per-example L whose
        mean is backpropagated; every recorded evaluation must be of one time per example."""
        scale = 2 * losses.detach()
        for s, ds in self.records:
            for value in (s, ds):
                if not value.requires_grad:
                    continue
                if value.shape != scale.shape:
                    raise ValueError(f"the learned schedule was evaluated at {tuple(value.shape)} times while "
                                     f"building a loss of {tuple(scale.shape)} examples: the variance gradient "
                                     "needs one time per example")
                value.register_hook(lambda grad, c=scale: grad * c.to(device=grad.device, dtype=grad.dtype))


class LearnedVP(Schedule):
    """VDM's learned variance-preserving schedule; see the module docstring.

    ``hidden``: g's width (VDM: 1024). ``gamma_min``, ``gamma_max``: the initial endpoints (VDM: -13.3, 5.0).
    ``learn_endpoints``: train them on the bound (else fixed). ``lr_scale``: the schedule's learning rate
    relative to the model's. ``seed``: g's initialisation. The torch parameters live in :attr:`module`.
    """

    variance_preserving = True

    def __init__(self, hidden: int = 1024, gamma_min: float = -13.3, gamma_max: float = 5.0,
                 learn_endpoints: bool = True, lr_scale: float = 1.0, seed: int = 0):
        if not (isinstance(hidden, int) and hidden >= 1):
            raise ValueError(f"the learned schedule's hidden width must be a positive integer, got {hidden!r}")
        if not gamma_min < gamma_max:
            raise ValueError(f"the learned schedule needs gamma_min < gamma_max, got {gamma_min}, {gamma_max}")
        if not lr_scale > 0:
            raise ValueError(f"the learned schedule's lr_scale must be > 0, got {lr_scale}")
        self.hidden, self.learn_endpoints, self.lr_scale = hidden, bool(learn_endpoints), float(lr_scale)
        self.module = MonotoneNetwork(hidden, gamma_min, gamma_max, learn_endpoints, seed)
        self._tape: VarianceTape | None = None

    # -- the torch side -------------------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (the endpoints only with ``learn_endpoints``)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        try:
            self.module.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise ValueError(f"the stored learned schedule does not fit this one (hidden {self.hidden}): "
                             f"{first}") from None

    def to(self, device: torch.device | str) -> LearnedVP:
        self.module.to(device)
        return self

    @property
    def gamma_range(self) -> tuple[float, float]:
        """(gamma_min, gamma_max) now."""
        return float(self.module.gamma_min.detach()), float(self.module.gamma_max.detach())

    @contextlib.contextmanager
    def tape(self):
        """Inside the block the schedule's outputs carry gradients to its parameters, and every evaluation of
        s, s' is recorded (see :class:`VarianceTape`)."""
        tape = self._tape = VarianceTape()
        try:
            yield tape
        finally:
            self._tape = None

    # -- the schedule -----------------------------------------------------------------------------------
    def gamma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(gamma(t), gamma'(t)). Gradients reach the parameters only inside :meth:`tape` (training); elsewhere
        (sampling, evaluation) the schedule is a fixed function of t."""
        t = t.to(device=self.module.w1.device)
        detach = self._tape is None
        s, ds = self.module.interior(t, detach)
        if not detach:
            self._tape.records.append((s, ds))
        gamma_min, gamma_max = self.module.endpoints(t.dtype, detach)
        return gamma_min + (gamma_max - gamma_min) * s, (gamma_max - gamma_min) * ds

    def coefficients(self, t):
        gamma, d_gamma = self.gamma(t)
        alpha2, sigma2 = torch.sigmoid(-gamma), torch.sigmoid(gamma)
        alpha, sigma = alpha2.sqrt(), sigma2.sqrt()
        # alpha^2 = sigmoid(-gamma): 2 alpha alpha' = -alpha^2 sigma^2 gamma', and sigma' the mirror image
        return alpha, sigma, -0.5 * alpha * sigma2 * d_gamma, 0.5 * sigma * alpha2 * d_gamma

    def t_from_logsnr(self, logsnr):
        """gamma(t) = -logsnr, solved in float64 (gamma increases strictly) and clamped to [0, 1]: 12 bisection
        steps bracket t to 2.4e-4, then Newton steps on gamma, kept inside the bracket, converge quadratically
        to float64's resolution."""
        logsnr = torch.as_tensor(logsnr)
        target = -logsnr.detach().to(torch.float64)
        flat = target.reshape(-1).to(self.module.w1.device)
        with torch.no_grad():
            lo, hi = torch.zeros_like(flat), torch.ones_like(flat)
            for _ in range(12):
                mid = (lo + hi) / 2
                below = self.gamma(mid)[0] < flat
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            t = (lo + hi) / 2
            for _ in range(6):
                gamma, d_gamma = self.gamma(t)
                t = torch.minimum(torch.maximum(t - (gamma - flat) / d_gamma, lo), hi)
            gamma_min, gamma_max = self.gamma_range
            t = torch.where(flat <= gamma_min, torch.zeros_like(t),
                            torch.where(flat >= gamma_max, torch.ones_like(t), t))
        t = t.reshape(target.shape).to(logsnr.device)
        return t.to(logsnr.dtype if logsnr.is_floating_point() else torch.float64)

    def __repr__(self) -> str:
        low, high = self.gamma_range
        return (f"LearnedVP(hidden={self.hidden}, gamma_min={low:.4g}, gamma_max={high:.4g}, "
                f"learn_endpoints={self.learn_endpoints})")


def _linear_vp(discrete: bool = False, beta_start: float = 1e-4, beta_end: float = 0.02, T: int = 1000):
    if discrete:
        return DiscreteVP.linear(beta_start, beta_end, T)
    return LinearVP(beta_start, beta_end, T)


_BUILDERS = {
    "rectified_flow": RectifiedFlow,
    "cosine": Cosine,
    "linear_vp": _linear_vp,
    "edm": EDM,
    "learned": LearnedVP,
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
    if name == "learned" and (zero_terminal_snr or shift not in (None, 1.0)):
        raise ValueError("the learned schedule takes no zero_terminal_snr or shift: its endpoints gamma_min, "
                         "gamma_max set its noise range")
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
