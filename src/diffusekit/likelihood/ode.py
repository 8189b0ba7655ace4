"""The negative log-likelihood of data under the probability-flow ODE (Song et al. 2021, "Score-based
generative modeling through SDEs", appendix D.2; Chen et al. 2018, "Neural ordinary differential equations").

The PF-ODE ``dx/dt = f(x, t)`` carries the data density p_0 to p_T, and along a solution the density obeys
the instantaneous change of variables ``d log p_t(x_t) / dt = -div f(x_t, t)``, so

    log p_0(x_0) = log p_T(x_T) + int_0^T div f(x_t, t) dt.

:func:`ode_nll` integrates x and the divergence together from the data to t_max with the embedded
Runge-Kutta solver of :mod:`diffusekit.sampling.adaptive`, in that module's variables: the VP-normalised
state z = x_t / rho(t), rho = sqrt(alpha^2 + sigma^2), over lambda = log(alpha / sigma), where the ODE is
``dz / dlambda = a (x0_hat - a z)``, a = sqrt(sigmoid(2 lambda)). Its divergence is ``a div_z x0_hat - a^2 D``
(the second term in closed form); the rescalings z <-> x add ``D log(rho(t_max) / rho(t_min))``, D the number
of dimensions. Reported per row: ``prior = -log p_T(x_T)``, ``delta = int div f dt`` (in x, t) and
``nll = prior - delta``, in nats, for continuous data (no dequantisation).

Divergence: ``"exact"``, D vector-Jacobian products per evaluation (for small D), or ``"hutchinson"`` (Hutchinson
1990; Grathwohl et al. 2019, FFJORD): E[v^T (d x0_hat / dz) v] with v Rademacher or Gaussian, one backward
pass per probe. The probes are drawn once and kept along the whole trajectory, so the integrand is a smooth
function the solver can integrate; ``probes`` averages several. Either way, each evaluation is one denoiser
call with autograd (``nfe`` counts those calls).

Error control covers both x and the divergence accumulator: the answer is prior - delta, and an error in the
accumulator enters it directly, while controlling x alone would leave the quadrature of the divergence, which
varies fastest near sharp modes of the data, unchecked.

The endpoint density (:func:`endpoint_std`): x_T ~ N(0, sigma(T)^2 I), exact where alpha(T) = 0 (rectified
flow, cosine, zero-terminal-SNR), and otherwise an approximation that ignores the data's contribution alpha(T)
x_0 to x_T: EDM (alpha = 1, sigma_max = 80: SNR 1.6e-4) and ``linear_vp`` at t = 1 (alpha = 6.6e-3: N(0, I) as
Song et al. use). Its error, log p_T(x_T) - log N(x_T; 0, sigma^2 I), is at first order alpha x_T . E[x_0] /
sigma^2 per sample and, averaged over the data, about SNR(T) E|x_0|^2 / 2 nats: small when sigma(T) is much
larger than the data's scale. A schedule whose SNR at t_max exceeds :data:`MAX_PRIOR_SNR` has no such
endpoint density and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..conditions import Conditions, as_conditions
from ..sampling.adaptive import (
    LAMBDA_MAX,
    LAMBDA_MIN,
    MAX_STEP_LAMBDA,
    METHODS,
    FlowInLambda,
    check_tolerances,
    integrate,
    vp_alpha,
)
from ..schedules import Schedule

__all__ = ["ode_nll", "ODELikelihood", "endpoint_std", "MAX_PRIOR_SNR", "DIVERGENCES", "PROBES"]

# The largest alpha^2 / sigma^2 at t_max for which N(0, sigma^2 I) stands in for p_T: on average its error is
# about SNR * E|x0|^2 / 2 nats, 5e-4 per dimension of unit-scale data here; EDM (1.6e-4) and linear_vp at t = 1
# (4.3e-5) pass, a VP schedule stopped early does not.
MAX_PRIOR_SNR = 1e-3
DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
# Song et al. 2021 integrate likelihoods from t = 1e-5. Log-SNR there: rectified_flow 23.0, linear_vp 13.8,
# cosine 14.8, edm 14.3 (ve_sigma 8e-4); lambda is capped at LAMBDA_MAX (ve_sigma 1e-6) in any case.
DEFAULT_T_MIN = 1e-5


@dataclass(frozen=True)
class ODELikelihood:
    """Per row of x (``[B]`` each): ``nll = prior - delta`` in nats, ``prior = -log p_T(x_T)``, ``delta`` the
    integrated divergence int_{t_min}^{t_max} div f dt; ``endpoint`` x_T ``[B, ...]``; ``nfe`` denoiser calls
    (each with a backward pass per basis vector or probe); ``accepted`` and ``rejected`` solver steps."""

    nll: Tensor
    prior: Tensor
    delta: Tensor
    endpoint: Tensor
    nfe: int
    accepted: int
    rejected: int


def endpoint_std(schedule: Schedule, t_max: float = 1.0) -> float:
    """sigma(t_max), the std of the endpoint density N(0, sigma^2 I) (module docstring); a ValueError naming the
    schedule and its SNR when alpha(t_max) / sigma(t_max) is not small (SNR > MAX_PRIOR_SNR)."""
    at = schedule(torch.tensor(float(t_max), dtype=torch.float64))
    alpha, sigma = float(at.alpha), float(at.sigma)
    snr = alpha**2 / sigma**2 if sigma > 0 else math.inf
    if snr > MAX_PRIOR_SNR:
        raise ValueError(f"{schedule!r} has SNR alpha^2/sigma^2 = {snr:.3g} at t_max = {t_max:g}, above "
                         f"{MAX_PRIOR_SNR:g}: x_T is not close to N(0, sigma^2 I), so there is no endpoint density "
                         "(use t_max = 1 or a schedule that reaches pure noise)")
    return sigma


def _probes(x: Tensor, probes: int, probe: str, generator: torch.Generator | None) -> Tensor:
    """[probes, B, ...] Rademacher (+-1) or standard Gaussian vectors, drawn from ``generator``."""
    device = generator.device if generator is not None else x.device
    shape = (probes, *x.shape)
    if probe == "gaussian":
        v = torch.randn(shape, generator=generator, device=device, dtype=x.dtype)
    else:
        v = torch.randint(0, 2, shape, generator=generator, device=device).to(x.dtype) * 2 - 1
    return v.to(x.device)


def _divergence(x0_hat: Tensor, z: Tensor, vectors: Tensor | None) -> Tensor:
    """div_z x0_hat per row ``[B]``: exact (vectors None: one vjp per dimension) or the mean of v^T J v."""
    rows = len(z)
    if vectors is None:
        flat = x0_hat.reshape(rows, -1)
        dims = flat.shape[1]
        div = torch.zeros(rows, dtype=z.dtype, device=z.device)
        for i in range(dims):
            (grad,) = torch.autograd.grad(flat[:, i].sum(), z, retain_graph=i < dims - 1)
            div += grad.reshape(rows, -1)[:, i]
        return div
    div = torch.zeros(rows, dtype=z.dtype, device=z.device)
    for k, v in enumerate(vectors):
        (grad,) = torch.autograd.grad(x0_hat, z, grad_outputs=v, retain_graph=k < len(vectors) - 1)
        div += (grad * v).reshape(rows, -1).sum(1)
    return div / len(vectors)


def ode_nll(denoise, schedule: Schedule, x: Tensor, *, rtol: float = 1e-5, atol: float = 1e-5,
            divergence: str = "exact", probes: int = 1, probe: str = "rademacher",
            generator: torch.Generator | None = None, t_min: float = DEFAULT_T_MIN, t_max: float = 1.0,
            cond: Conditions | None = None, method: str = "bs32", dtype: torch.dtype | None = None) -> ODELikelihood:
    """-log p(x) under the PF-ODE of ``denoise(x_t, t, cond) -> x0_hat`` on ``schedule``, per row of ``x``.

    Args:
        x: data ``[B, ...]``, taken as x_{t_min}; the whole batch is integrated at once (the denoiser must treat
            rows independently).
        rtol, atol: solver tolerances (> 0), on z and on the divergence accumulator.
        divergence: ``"exact"`` or ``"hutchinson"``; ``probes`` (>= 1) of kind ``probe`` (``"rademacher"`` or
            ``"gaussian"``) drawn from ``generator``, fixed along the trajectory.
        t_min: the start; 0 works for an exact denoiser, a network wants a small positive time (default 1e-5, as
            Song et al.). t_max: the end, where the endpoint density must exist (:func:`endpoint_std`).
        method: ``"bs32"`` or ``"dp54"``. dtype: the computation's dtype (default x's; float64 for exactness).
    """
    check_tolerances(rtol, atol)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min = {t_min}, t_max = {t_max}")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch [B, ...] of at least 2 dimensions, got shape {tuple(x.shape)}")
    sigma_T = endpoint_std(schedule, t_max)
    x = x.detach().to(dtype or x.dtype)
    rows, dims = len(x), x[0].numel()
    flow = FlowInLambda(denoise, schedule, as_conditions(cond))
    vectors = None if divergence == "exact" else _probes(x, probes, probe, generator)
    lam_hi = min(0.5 * float(schedule.logsnr(torch.tensor(float(t_min), dtype=torch.float64))), LAMBDA_MAX)
    lam_lo = max(0.5 * float(schedule.logsnr(torch.tensor(float(t_max), dtype=torch.float64))), LAMBDA_MIN)
    rho_min, rho_max = flow.rho(float(t_min)), flow.rho(float(t_max))

    def f(lam: float, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        a = vp_alpha(lam)
        with torch.enable_grad():
            z = state[0].detach().requires_grad_(True)
            x0_hat = flow.x0_hat(lam, z)
            div = _divergence(x0_hat, z, vectors)
        return a * (x0_hat.detach() - a * state[0]), a * div - a * a * dims

    start = (x / rho_min, torch.zeros(rows, dtype=x.dtype, device=x.device))
    solution = integrate(f, start, lam_hi, lam_lo, rtol=rtol, atol=atol, method=method, max_step=MAX_STEP_LAMBDA)
    z_T, accumulated = solution.state
    x_T = rho_max * z_T
    prior = 0.5 * x_T.reshape(rows, -1).pow(2).sum(1) / sigma_T**2 + 0.5 * dims * math.log(2 * math.pi * sigma_T**2)
    delta = accumulated + dims * math.log(rho_max / rho_min)
    return ODELikelihood(prior - delta, prior, delta, x_T, flow.calls, solution.accepted, solution.rejected)
