"""Sequential Monte Carlo for linear inverse problems: the asymptotically exact reference.

The filtering construction of SMCDiff (Trippe et al. 2023, "Diffusion probabilistic modeling of protein backbones
in 3D for the motif-scaffolding problem", Sec. 4, Algorithm 2) and FPS-SMC (Dou & Song 2024, "Diffusion posterior
sampling for linear inverse problem solving: a filtering perspective", Sec. 3-4), written here for any linear
operator and for measurement noise by one augmentation:

1. **Noise as data.** ``y = A x0 + sigma_y e`` with ``e ~ N(0, I)`` is a *noiseless* measurement ``y = B (x0, e)``
   of the augmented sample ``(x0, e)``, ``B = [A, sigma_y I]``. The prior of ``e`` is standard normal, so its
   exact denoiser is ``E[e | e_t] = alpha e_t / (alpha^2 + sigma^2)``; the augmented prior's denoiser is the model
   for ``x`` and this for ``e``.
2. **Measurements along the path.** Noising ``(x0, e)`` step by step with the forward process noises the
   measurement with it: ``y_{j} = B (x, e)_{t_j}`` is a Markov chain of its own,
   ``y_{j} = (alpha_j / alpha_{j+1}) y_{j+1} + sqrt(sigma_j^2 - (alpha_j / alpha_{j+1})^2 sigma_{j+1}^2) B w``,
   started at ``y`` at t = 0 and independent of ``(x0, e)`` given ``y``. Drawing it once per problem and
   conditioning on all of it leaves the posterior of ``x0`` unchanged.
3. **The particle filter.** Down the grid, the reverse transition is the sampler's Gaussian step
   (DDPM / DDIM with eta > 0, :func:`diffusekit.sampling.ancestral.ddim_coefficients`):
   ``N(mu, c^2 I)``. Conditioned on the linear constraint ``B x_{j+1} = y_{j+1}`` it is again Gaussian: the
   locally optimal proposal ``mu + B^T (B B^T)^{-1} (y_{j+1} - B mu) + c (I - B^T (B B^T)^{-1} B) z``, and the
   particle's weight is its predictive likelihood ``N(y_{j+1}; B mu, c^2 B B^T)`` (a fully adapted filter:
   weigh, resample when the effective sample size drops below half, then propose). ``B B^T = A A^T +
   sigma_y^2 I`` is the operator's own :meth:`gram_solve`.
4. **The last step** (to t = 0, where the transition is deterministic) takes x0_hat and projects it onto
   ``B x = y``; its error vanishes with the step size. One particle per problem is returned, drawn by weight.

With the exact denoiser, the result tends to the exact posterior as the particles and the steps grow; the
benchmark in docs/inverse.md shows the curve. Each step costs one denoiser call per particle and no gradients.
"""

from __future__ import annotations

import math

import torch

from ..conditions import select
from ..errors import InverseProblemError
from ..sampling.ancestral import ddim_coefficients
from ..sampling.grid import Grid
from .problem import Problem

__all__ = ["smc", "systematic_resample"]


def systematic_resample(log_weights, generator=None):
    """Indices ``[B, K]`` drawn by systematic resampling from each row of ``log_weights [B, K]`` (Kitagawa 1996):
    one uniform offset per row, K evenly spaced points through the cumulative weights."""
    B, K = log_weights.shape
    weights = torch.softmax(log_weights.to(torch.float64), dim=1)
    cumulative = weights.cumsum(1)
    cumulative[:, -1] = 1.0
    u = torch.rand(B, 1, generator=generator, dtype=torch.float64, device=getattr(generator, "device", "cpu"))
    points = (u.to(cumulative.device) + torch.arange(K, dtype=torch.float64, device=cumulative.device)) / K
    return torch.searchsorted(cumulative, points).clamp_max(K - 1)


class _Augmented:
    """``B = [A, sigma_y I]`` on pairs ``(x, e)``; ``e`` lives in the measurement space (zero where an inpainting
    mask measures nothing), and is dropped when sigma_y = 0."""

    def __init__(self, operator, y):
        self.A, self.s = operator, float(operator.sigma_y)
        self.measured = (operator.forward(operator.adjoint(torch.ones_like(y[:1]))) != 0).to(y.dtype)

    def forward(self, x, e):
        return self.A.forward(x) if e is None else self.A.forward(x) + self.s * self.measured * e

    def adjoint(self, v):
        return self.A.adjoint(v), (None if self.s == 0 else self.s * self.measured * v)

    def gram_solve(self, v):
        return self.A.gram_solve(v, shift=self.s**2)

    def project(self, x, e, target):
        """The nearest (x, e) with B (x, e) = target."""
        u = self.gram_solve(target - self.forward(x, e))
        dx, de = self.adjoint(u)
        return x + dx, (None if e is None else e + de)


def _rows(t, index):
    return None if t is None else t[index]


def smc(problem: Problem, x, grid: Grid, particles: int = 16):
    problem.require_pixels("smc")
    if problem.sampler not in ("ddpm", "ddim"):
        raise InverseProblemError(f"smc runs over the Gaussian steps of the 'ddpm' or 'ddim' (eta > 0) sampler, not "
                                  f"{problem.sampler!r}")
    eta = 1.0 if problem.sampler == "ddpm" else float(problem.sampler_options.get("eta", 0.0))
    if eta <= 0:
        raise InverseProblemError("smc needs stochastic steps: use the 'ddpm' sampler, or 'ddim' with eta > 0")
    if not (isinstance(particles, int) and particles >= 1):
        raise InverseProblemError(f"smc needs an integer particles >= 1, got {particles!r}")
    if grid.t[-1] != 0.0:
        raise InverseProblemError("smc must run down to t = 0")
    gen = problem.generator
    B, K, N = x.shape[0], particles, grid.steps
    B_ = _Augmented(problem.operator, problem.y)
    noisy = B_.s > 0

    def randn(shape):
        device = gen.device if gen is not None else x.device
        return torch.randn(shape, generator=gen, dtype=x.dtype, device=device).to(x.device)

    def noise_pair(count, y_like):
        return randn((count, *x.shape[1:])), (randn((count, *y_like.shape[1:])) if noisy else None)

    # the measurement chain y_j, from y at t = 0 up to the grid's start (step 2)
    ys = [None] * (N + 1)
    ys[N] = problem.y
    for j in range(N - 1, -1, -1):
        ratio = grid.alpha[j] / grid.alpha[j + 1]
        std = math.sqrt(max(grid.sigma[j] ** 2 - (ratio * grid.sigma[j + 1]) ** 2, 0.0))
        ys[j] = ratio * ys[j + 1] + std * B_.forward(*noise_pair(B, problem.y))

    def per_particle(t):
        return t.repeat_interleave(K, 0)

    cond = select(problem.cond, torch.arange(B).repeat_interleave(K)) if problem.cond else problem.cond
    # start: the prior at t_0 (as the samplers take it, N(0, sigma_0^2 I)) conditioned on B x_0 = y_0
    xs, es = noise_pair(B * K, problem.y)
    xs, es = grid.sigma[0] * xs, (None if es is None else grid.sigma[0] * es)
    xs, es = B_.project(xs, es, per_particle(ys[0]))
    log_w = torch.zeros(B, K, dtype=torch.float64, device=x.device)
    for i in range(N):
        t = torch.full((B * K,), grid.t[i], dtype=xs.dtype, device=xs.device)
        with torch.no_grad():
            x0_hat = problem.denoise(xs, t, cond)
        a, s = grid.alpha[i], grid.sigma[i]
        e0_hat = None if es is None else es * (a / (a * a + s * s))
        if grid.t[i + 1] == 0.0:  # step 4
            xs, es = B_.project(x0_hat, e0_hat, per_particle(problem.y))
            break
        coef_x, coef_x0, c = ddim_coefficients(grid, i, eta)
        mu_x = coef_x * xs + coef_x0 * x0_hat
        mu_e = None if es is None else coef_x * es + coef_x0 * e0_hat
        target = per_particle(ys[i + 1])
        r = target - B_.forward(mu_x, mu_e)
        u = B_.gram_solve(r)
        log_w = log_w + (-(r * u).flatten(1).sum(1) / (2 * c * c)).to(torch.float64).reshape(B, K)
        ess = 1.0 / torch.softmax(log_w, 1).pow(2).sum(1)
        if bool((ess < K / 2).any()):
            index = systematic_resample(log_w, gen)
            keep = ess >= K / 2  # groups that need no resampling keep their particles and weights
            index = torch.where(keep[:, None], torch.arange(K, device=index.device).expand(B, K), index)
            flat = (index + K * torch.arange(B, device=index.device)[:, None]).reshape(-1)
            mu_x, mu_e, u = mu_x[flat], _rows(mu_e, flat), u[flat]
            log_w = torch.where(keep[:, None], log_w, torch.zeros_like(log_w))
        dx, de = B_.adjoint(u)
        zx, ze = noise_pair(B * K, problem.y)
        zx, ze = B_.project(zx, ze, torch.zeros_like(target))  # c z projected onto the null space of B
        xs = mu_x + dx + c * zx
        es = None if mu_e is None else mu_e + de + c * ze
    pick = torch.multinomial(torch.softmax(log_w, 1).cpu(), 1, generator=gen if gen is None or
                             gen.device.type == "cpu" else None).reshape(B).to(xs.device)
    return xs.reshape(B, K, *xs.shape[1:])[torch.arange(B, device=xs.device), pick]
