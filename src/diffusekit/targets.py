"""Analytic targets: Gaussian mixtures with their exact denoiser, score and density on any Gaussian path.

For data ``x0 ~ sum_k w_k N(mu_k, diag(s_k^2))`` and ``x_t = alpha x0 + sigma noise``:

- ``x_t | k ~ N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2))``, so the noisy marginal is again a mixture;
- ``E[x0 | x_t, k] = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) * (x_t - alpha mu_k)``;
- ``E[x0 | x_t] = sum_k r_k(x_t) E[x0 | x_t, k]`` with responsibilities ``r_k`` from a log-sum-exp.

This is the ideal denoiser a network tries to learn, so a sampler run on it isolates the sampler's own
error. The formulas stay finite at alpha = 0 (pure noise: x0_hat is the data mean) and at sigma = 0
(for s_k > 0: x0_hat = x_t / alpha).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .schedules import Schedule

__all__ = ["GaussianMixture", "sliced_wasserstein"]


def _all_equal(v: Tensor) -> bool:
    return v.numel() == 1 or bool((v == v.reshape(-1)[0]).all())


class GaussianMixture:
    """A mixture of K diagonal Gaussians in D dimensions.

    Args:
        means: ``[K, D]``.
        stds: ``[K]`` (isotropic) or ``[K, D]`` (diagonal), all > 0.
        weights: ``[K]``, non-negative; normalised here.
    Computation is in float64; outputs take the dtype of the input ``x``.
    """

    def __init__(self, means, stds, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D], got shape {tuple(means.shape)}")
        K, D = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 1:
            stds = stds[:, None].expand(K, D)
        if stds.shape != (K, D) or not bool((stds > 0).all()):
            raise ValueError(f"stds must be positive with shape [K] or [K, D] = [{K}, {D}]")
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or not bool((weights >= 0).all()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be non-negative with shape [K] = [{K}] and a positive sum")
        self.means, self.stds, self.weights = means, stds.contiguous(), weights / weights.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None, return_components: bool = False):
        """n exact draws ``[n, D]`` (float64), optionally with their component indices."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[k] + self.stds[k] * noise
        return (x, k) if return_components else x

    def mean(self) -> Tensor:
        return self.weights @ self.means

    # -- noisy marginal ---------------------------------------------------------------------------
    def _posterior(self, x: Tensor, alpha, sigma):
        """Per-component log joint terms of x_t, component variances and posterior means."""
        x = x.to(torch.float64)[:, None, :]  # [N, 1, D]
        alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1)
        var = alpha**2 * self.stds**2 + sigma**2  # [N, K, D]
        diff = x - alpha * self.means
        log_lik = -0.5 * ((diff**2 / var) + torch.log(2 * math.pi * var)).sum(-1)  # [N, K]
        log_joint = log_lik + torch.log(self.weights)
        resp = torch.softmax(log_joint, dim=-1)
        return log_joint, resp, var, diff, alpha

    def _x0_hat_shared(self, x: Tensor, alpha: float, sigma: float) -> Tensor:
        """x0_hat when every sample has the same (alpha, sigma): the quadratic form as matrix products."""
        x = x.to(torch.float64)
        var = alpha**2 * self.stds**2 + sigma**2  # [K, D]
        inv = 1 / var
        mean = alpha * self.means
        # sum_d (x_d - m_kd)^2 / v_kd = x^2 @ inv^T - 2 x @ (m inv)^T + sum_d m^2 inv
        quad = (x * x) @ inv.T - 2 * x @ (mean * inv).T + (mean * mean * inv).sum(1)
        log_joint = -0.5 * (quad + torch.log(2 * math.pi * var).sum(1)) + torch.log(self.weights)
        resp = torch.softmax(log_joint, dim=-1)  # [N, K]
        gain = alpha * self.stds**2 * inv  # E[x0 | x_t, k] = mu_k + gain_k (x - alpha mu_k)
        return resp @ (self.means - gain * mean) + x * (resp @ gain)

    def x0_hat(self, x: Tensor, alpha, sigma) -> Tensor:
        """E[x0 | x_t = x] for coefficients ``alpha``, ``sigma`` (scalars or ``[N]``)."""
        alpha = torch.as_tensor(alpha, dtype=torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if _all_equal(alpha) and _all_equal(sigma):
            return self._x0_hat_shared(x, float(alpha.reshape(-1)[0]), float(sigma.reshape(-1)[0])).to(x.dtype)
        _, resp, var, diff, alpha = self._posterior(x, alpha, sigma)
        cond_mean = self.means + alpha * self.stds**2 / var * diff  # [N, K, D]
        return (resp[..., None] * cond_mean).sum(1).to(x.dtype)

    def score(self, x: Tensor, alpha, sigma) -> Tensor:
        """grad log p_t(x) of the noisy marginal."""
        _, resp, var, diff, _ = self._posterior(x, alpha, sigma)
        return (resp[..., None] * (-diff / var)).sum(1).to(x.dtype)

    def log_prob(self, x: Tensor, alpha=1.0, sigma=0.0) -> Tensor:
        """log p_t(x) of the noisy marginal (defaults: the clean data density)."""
        log_joint, *_ = self._posterior(x, alpha, sigma)
        return torch.logsumexp(log_joint, -1).to(x.dtype)

    def component(self, x: Tensor) -> Tensor:
        """The most likely component of each clean sample (for mode-weight statistics)."""
        log_joint, *_ = self._posterior(x, 1.0, 0.0)
        return log_joint.argmax(-1)

    def denoiser(self, schedule: Schedule):
        """The exact ``denoise(x_t, t, cond=None) -> x0_hat`` on ``schedule`` (t of shape [] or [N]); the data are
        unconditional, so ``cond`` is ignored."""

        def denoise(x_t: Tensor, t: Tensor, cond=None) -> Tensor:
            at = schedule(torch.as_tensor(t, dtype=torch.float64, device=x_t.device))
            return self.x0_hat(x_t, at.alpha, at.sigma)

        return denoise

    # -- ready-made targets -----------------------------------------------------------------------
    @classmethod
    def ring2d(cls, seed: int = 0) -> GaussianMixture:
        """8 anisotropic components on the unit circle, stds 0.03-0.15, unequal weights (sharp modes)."""
        g = torch.Generator().manual_seed(seed)
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        means = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
        stds = 0.03 + 0.12 * torch.rand(8, 2, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(8, generator=g, dtype=torch.float64) * 2
        return cls(means, stds, weights)

    @classmethod
    def random(cls, dim: int, components: int, seed: int = 0, mean_std: float = 0.5,
               std_range: tuple[float, float] = (0.02, 0.5)) -> GaussianMixture:
        """Means ~ N(0, mean_std^2), per-dimension stds log-uniform in ``std_range``, random weights."""
        g = torch.Generator().manual_seed(seed)
        means = mean_std * torch.randn(components, dim, generator=g, dtype=torch.float64)
        lo, hi = math.log(std_range[0]), math.log(std_range[1])
        stds = torch.exp(lo + (hi - lo) * torch.rand(components, dim, generator=g, dtype=torch.float64))
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        return cls(means, stds, weights)


def sliced_wasserstein(a: Tensor, b: Tensor, num_directions: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point sets ``[N, D]``: the root mean over
    ``num_directions`` fixed random unit directions of the 1-D W2^2 of the projections."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two [N, D] sets of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], num_directions, generator=g, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    pa = torch.sort(a.to(torch.float64) @ directions, dim=0).values
    pb = torch.sort(b.to(torch.float64) @ directions, dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())
