"""Inverse-problem methods, each written once against the sampler loop: a measurement step ``measure(x, j)`` that
every sampler calls after each step, a guidance term on ``denoise``, or both.

Every method has the signature ``method(problem, x, grid, **options) -> x0``: ``x`` is the state at ``grid.t[0]``
(``sigma * noise`` at the start of a full grid), ``grid`` the decreasing grid down to t = 0. Notation: ``A``
the operator, ``A^+`` its pseudo-inverse, ``y_t = alpha_t y + sigma_t A z`` the measurement noised like the
state (a fresh z at every step; exactly y at t = 0), ``x0_hat`` the denoiser's estimate.

- ``replacement`` (Song et al. 2021, "Score-based generative modeling through SDEs", App. I.2, imputation):
  after each step the measured part of the state is replaced by the noised measurement,
  ``x <- x + A^+ (y_t - A x)``.
- ``repaint`` (Lugmayr et al. 2022, "RePaint", Algorithm 1 and Sec. 4.2): replacement, and every ``jump_length``
  steps the state is noised back ``jump_length`` steps by the forward process and the stretch is sampled again,
  ``resamples - 1`` more times (the paper's jump length j and jump count r; its schedule written out in
  :func:`repaint_path`).
- ``pocs`` (the projection onto convex sets of Chung et al. 2022, "Come-closer-diffuse-faster", Sec. 3, its
  non-expansive data-consistency step):
  after each step the state is projected onto the measurement-consistent set, in the variance-exploding
  coordinates ``x / alpha`` that paper works in: ``x <- x + A^+ (alpha_t y - A x)``. Unlike replacement, the
  measured part is made noise-free, so at t = 0 a noiseless measurement holds to float precision.
- ``ilvr`` (Choi et al. 2021, "ILVR", Algorithm 1): ``x <- x + U (y_t - A x)`` with ``U`` the
  operator's own up filter (:meth:`lift`: bicubic up for bicubic down, nearest for box), the low-pass
  replacement ``phi_N(y_t) + (I - phi_N)(x)`` with ``phi_N = U A``.
- ``ccdf`` (Chung et al. 2022, "Come-closer-diffuse-faster", Sec. 3 and Algorithm 1): start at ``t0 < 1`` from the
  forward-noised initial estimate ``alpha_t0 x_init + sigma_t0 noise`` (default ``x_init = A^+ y``) and run
  another method (``consistency``, default ``pocs``) over the part of the grid below t0: about ``t0 * N`` steps.
- ``mcg`` (Chung et al. 2022, "Improving diffusion models for inverse problems using manifold constraints",
  Algorithm 1): after each step, ``x <- x - alpha grad_{x_i} ||y - A x0_hat(x_i)||^2`` with the
  gradient taken through the denoiser at the state x_i the step started from and ``alpha = scale /
  ||y - A x0_hat||`` (the normalisation of the authors' code), then the replacement projection.
- ``reconstruction`` (Ho et al. 2022, "Video diffusion models", eq. 7): the guidance term
  ``x0_hat <- x0_hat - (weight * alpha_t / 2) grad_{x_t} ||y - A x0_hat(x_t)||^2`` on every denoiser call, plus
  replacement after each step (pixels only: a latent model gets the guidance term alone).
- ``dps`` (Chung et al. 2023, "Diffusion posterior sampling", Algorithm 1, and its step size
  ``zeta_i = zeta' / ||y - A x0_hat||``, App. C): after each step ``x <- x - zeta' grad_{x_i}
  ||y - A x0_hat(x_i)||``, i.e. ``zeta_i`` times the gradient of the squared norm up to the factor 2 the paper
  folds into zeta'. Through the decoder for a latent model.
- ``smc``: sequential Monte Carlo, asymptotically exact (:mod:`diffusekit.inverse.smc`).
"""

from __future__ import annotations

import torch

from .._tensors import append_dims
from ..errors import InverseProblemError
from ..sampling.grid import Grid, evaluate_grid
from .problem import Problem, ResidualGradient, forward_noise, sub_grid
from .smc import smc

__all__ = ["METHODS", "LATENT_METHODS", "replacement", "repaint", "pocs", "ilvr", "ccdf", "mcg", "reconstruction",
           "dps", "repaint_path"]


def _replace(problem: Problem, grid: Grid, offset: int = 0):
    """The replacement step at grid point ``offset + j``."""
    A = problem.operator

    def measure(x, j):
        return x + A.pinv(problem.noised_measurement(offset + j, grid) - A.forward(x))
    return measure


def replacement(problem: Problem, x, grid: Grid):
    problem.require_pixels("replacement")
    return problem.run(problem.denoise, x, grid, _replace(problem, grid))


def pocs(problem: Problem, x, grid: Grid):
    problem.require_pixels("pocs")
    A, y = problem.operator, problem.y

    def measure(x, j):
        return x + A.pinv(grid.alpha[j] * y - A.forward(x))
    return problem.run(problem.denoise, x, grid, measure)


def ilvr(problem: Problem, x, grid: Grid):
    problem.require_pixels("ilvr")
    A = problem.operator

    def measure(x, j):
        return x + A.lift(problem.noised_measurement(j, grid) - A.forward(x))
    return problem.run(problem.denoise, x, grid, measure)


def repaint_path(steps: int, jump_length: int, resamples: int) -> list[int]:
    """The grid indices RePaint visits (0 = the start, ``steps`` = t = 0): down one step at a time, and at every
    ``jump_length``-th step (counted from the end, RePaint's ``t in range(0, T - j, j)``) back up ``jump_length``
    steps, ``resamples - 1`` times per point."""
    jumps = {t: resamples - 1 for t in range(0, steps - jump_length, jump_length)}
    t, path = steps, [0]
    while t >= 1:
        t -= 1
        path.append(steps - t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            t += jump_length
            path.append(steps - t)
    return path


def repaint(problem: Problem, x, grid: Grid, jump_length: int = 10, resamples: int = 10):
    problem.require_pixels("repaint")
    if not (isinstance(jump_length, int) and jump_length >= 1 and isinstance(resamples, int) and resamples >= 1):
        raise InverseProblemError(f"repaint needs integers jump_length >= 1 and resamples >= 1, got {jump_length} "
                                  f"and {resamples}")
    path = repaint_path(grid.steps, jump_length, resamples)
    start = 0
    for k in range(1, len(path) + 1):
        end_of_run = k == len(path) or path[k] < path[k - 1]
        if not end_of_run:
            continue
        a, b = path[start], path[k - 1]
        if b > a:  # a run down the grid: the sampler, with replacement after each step
            x = problem.run(problem.denoise, x, sub_grid(grid, a, b), _replace(problem, grid, offset=a))
        if k < len(path):  # then back up by the forward process
            x = forward_noise(x, grid, b, path[k], problem.generator)
        start = k
    return x


def _gradient_step(problem: Problem, x, gradient: ResidualGradient, scale: float, squared: bool):
    _, grad, norm = gradient.last
    gradient.want()
    step = scale / norm.clamp_min(1e-12) if squared else torch.full_like(norm, scale)
    return x - append_dims(step.to(x.dtype), x) * grad


def dps(problem: Problem, x, grid: Grid, scale: float = 1.0):
    gradient = ResidualGradient(problem, squared=False, every_call=False)
    return problem.run(gradient, x, grid, lambda x, j: _gradient_step(problem, x, gradient, scale, squared=False))


def mcg(problem: Problem, x, grid: Grid, scale: float = 1.0):
    problem.require_pixels("mcg")
    gradient = ResidualGradient(problem, squared=True, every_call=False)
    project = _replace(problem, grid)

    def measure(x, j):
        return project(_gradient_step(problem, x, gradient, scale, squared=True), j)
    return problem.run(gradient, x, grid, measure)


def reconstruction(problem: Problem, x, grid: Grid, weight: float = 1.0):
    gradient = ResidualGradient(problem, squared=True)

    def guided(x_t, t, cond):
        x0_hat, grad, _ = gradient.gradient(x_t, t, cond)
        alpha = problem.schedule(t.to(torch.float64)).alpha.to(x0_hat.dtype)
        return x0_hat - append_dims(weight * alpha / 2, x0_hat) * grad
    measure = None if problem.decode is not None else _replace(problem, grid)
    return problem.run(guided, x, grid, measure)


def ccdf(problem: Problem, x, grid: Grid, t0: float = 0.5, consistency: str = "pocs", init=None,
         **consistency_options):
    if not 0.0 < t0 < grid.t[0]:
        raise InverseProblemError(f"ccdf starts below the grid's first time {grid.t[0]:g}: t0 must be in "
                                  f"(0, {grid.t[0]:g}), got {t0}")
    if consistency not in METHODS or consistency in ("ccdf", "smc"):
        choices = ", ".join(m for m in METHODS if m not in ("ccdf", "smc"))
        raise InverseProblemError(f"ccdf's consistency step must be one of {choices}, got {consistency!r}")
    if init is None:
        if problem.decode is not None:
            raise InverseProblemError("ccdf on a latent model needs init=, an initial estimate as a latent")
        init = problem.operator.pinv(problem.y)
    init = torch.as_tensor(init, dtype=x.dtype, device=x.device)
    if init.shape != x.shape:
        raise InverseProblemError(f"ccdf's init has shape {tuple(init.shape)}, the samples {tuple(x.shape)}")
    below = [t for t in grid.t if t < t0]
    short = evaluate_grid(problem.schedule, torch.tensor([t0, *below], dtype=torch.float64))
    noise = x / grid.sigma[0]
    start = short.alpha[0] * init + short.sigma[0] * noise
    return METHODS[consistency](problem, start, short, **consistency_options)


METHODS = {
    "replacement": replacement,
    "repaint": repaint,
    "pocs": pocs,
    "ilvr": ilvr,
    "ccdf": ccdf,
    "mcg": mcg,
    "reconstruction": reconstruction,
    "dps": dps,
    "smc": smc,
}
# the methods that work on a latent model: they only need gradients through the decoder
LATENT_METHODS = ("dps", "reconstruction")
