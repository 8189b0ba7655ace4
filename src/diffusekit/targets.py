"""Analytic targets: Gaussian mixtures with their exact denoiser, score and density on any Gaussian path.

For data ``x0 ~ sum_k w_k N(mu_k, diag(s_k^2))`` and ``x_t = alpha x0 + sigma noise``:

- ``x_t | k ~ N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2))``, so the noisy marginal is again a mixture;
- ``E[x0 | x_t, k] = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) * (x_t - alpha mu_k)``;
- ``E[x0 | x_t] = sum_k r_k(x_t) E[x0 | x_t, k]`` with responsibilities ``r_k`` from a log-sum-exp.

This is the ideal denoiser a network tries to learn, so a sampler run on it isolates the sampler's own
error. The formulas stay finite at alpha = 0 (pure noise: x0_hat is the data mean) and at sigma = 0
(for s_k > 0: x0_hat = x_t / alpha).

Exact posterior under a linear-Gaussian measurement (``GaussianMixture.posterior``). For
``y = A x0 + sigma_y n`` with ``A`` of shape ``[m, D]`` and ``S_k = diag(s_k^2)``, each component is conditioned
as a linear-Gaussian model (Bishop, PRML 2006, eq. 2.113-2.117; the gain form below is eq. 2.116-2.117 rewritten
with the Woodbury identity, i.e. one Kalman update):

- ``S_y,k = A S_k A^T + sigma_y^2 I`` (the evidence covariance, eq. 2.115),
- ``K_k = S_k A^T S_y,k^{-1}``, ``mu'_k = mu_k + K_k (y - A mu_k)``,
- ``S'_k = S_k - K_k A S_k``, evaluated in the Joseph form ``(I - K_k A) S_k (I - K_k A)^T + sigma_y^2 K_k K_k^T``
  (positive semi-definite by construction, which matters at sigma_y = 0 where ``S'_k`` is singular),
- ``w'_k ∝ w_k N(y; A mu_k, S_y,k)`` (normalised by a log-sum-exp).

The posterior is again a mixture, now of full-covariance Gaussians (``MixturePosterior``). At sigma_y = 0 the
measurement pins ``A x0 = y`` exactly; ``S_y,k`` is then invertible only when ``A`` has full row rank.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .schedules import Schedule

__all__ = ["GaussianMixture", "MixturePosterior", "sliced_wasserstein"]


def _all_equal(v: Tensor) -> bool:
    return v.numel() == 1 or bool((v == v.reshape(-1)[0]).all())


class _Mixture:
    """What every mixture here has: ``weights [K]`` and ``means [K, D]``."""

    weights: Tensor
    means: Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> Tensor:
        """The mixture mean ``sum_k w_k mu_k``, ``[D]``."""
        return self.weights @ self.means


class GaussianMixture(_Mixture):
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

    def sample(self, n: int, generator: torch.Generator | None = None, return_components: bool = False):
        """n exact draws ``[n, D]`` (float64), optionally with their component indices."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[k] + self.stds[k] * noise
        return (x, k) if return_components else x

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

    # -- posterior under a linear measurement ------------------------------------------------------
    def posterior(self, matrix, y, sigma_y: float) -> MixturePosterior:
        """The exact posterior of x0 given one measurement ``y = A x0 + sigma_y n`` (formulas: module docstring).

        Args:
            matrix: ``A``, ``[m, D]`` (tensor or array); at sigma_y = 0 it must have full row rank.
            y: ``[m]``, one measurement.
            sigma_y: the measurement noise std, >= 0.
        """
        A = torch.as_tensor(matrix, dtype=torch.float64, device=self.means.device)
        y = torch.as_tensor(y, dtype=torch.float64, device=self.means.device)
        if A.ndim != 2 or A.shape[1] != self.dim:
            raise ValueError(f"matrix must be [m, D] with D = {self.dim}, got shape {tuple(A.shape)}")
        m = A.shape[0]
        if y.shape != (m,):
            raise ValueError(f"y must be one measurement of shape [m] = [{m}], got shape {tuple(y.shape)}")
        sigma_y = float(sigma_y)
        if not (math.isfinite(sigma_y) and sigma_y >= 0):
            raise ValueError(f"sigma_y must be finite and >= 0, got {sigma_y}")
        if sigma_y == 0:
            rank = int(torch.linalg.matrix_rank(A))
            if rank < m:
                raise ValueError(f"with sigma_y = 0 the matrix [{m}, {self.dim}] needs full row rank {m} but has "
                                 f"rank {rank}: drop the dependent rows or use sigma_y > 0")
        var = self.stds**2  # [K, D], the diagonals of S_k
        AS = A * var[:, None, :]  # A S_k: [K, m, D]
        S_y = AS @ A.T + sigma_y**2 * torch.eye(m, dtype=torch.float64, device=A.device)  # [K, m, m]
        chol, info = torch.linalg.cholesky_ex(S_y)
        if bool((info > 0).any()):
            raise ValueError("A S_k A^T + sigma_y^2 I is numerically singular: the matrix is too close to "
                             "rank-deficient for sigma_y = 0; use sigma_y > 0")
        gain = torch.cholesky_solve(AS, chol).transpose(-1, -2)  # K_k = S_k A^T S_y^{-1}: [K, D, m]
        resid = y - self.means @ A.T  # y - A mu_k: [K, m]
        means = self.means + (gain @ resid[..., None])[..., 0]
        # Joseph form: a sum of two PSD terms, so rounding cannot make S'_k indefinite
        eye = torch.eye(self.dim, dtype=torch.float64, device=A.device)
        reduce = eye - gain @ A  # I - K_k A: [K, D, D]
        cov = (reduce * var[:, None, :]) @ reduce.transpose(-1, -2) + sigma_y**2 * gain @ gain.transpose(-1, -2)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        # log N(y; A mu_k, S_y,k) through the Cholesky factor
        white = torch.linalg.solve_triangular(chol, resid[..., None], upper=False)[..., 0]
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_evidence = -0.5 * ((white**2).sum(-1) + log_det + m * math.log(2 * math.pi))
        weights = torch.softmax(torch.log(self.weights) + log_evidence, dim=0)
        return MixturePosterior(weights, means, cov)

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


class MixturePosterior(_Mixture):
    """A mixture of K full-covariance Gaussians in D dimensions (float64), e.g. ``GaussianMixture.posterior``.

    Covariances may be singular (a noiseless measurement pins some directions): ``sample`` handles that through an
    eigendecomposition, ``log_prob`` needs them non-singular.

    Args:
        weights: ``[K]``, non-negative, summing to 1 (normalised here).
        means: ``[K, D]``.
        covariances: ``[K, D, D]``, symmetric positive semi-definite.
    """

    def __init__(self, weights, means, covariances):
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        covariances = torch.as_tensor(covariances, dtype=torch.float64)
        if means.ndim != 2 or weights.shape != means.shape[:1] or covariances.shape != means.shape + means.shape[1:]:
            raise ValueError(f"need weights [K], means [K, D] and covariances [K, D, D], got {tuple(weights.shape)}, "
                             f"{tuple(means.shape)} and {tuple(covariances.shape)}")
        self.weights, self.means, self.covariances = weights / weights.sum(), means, covariances
        self._factors: Tensor | None = None  # sampling factors F_k with F_k F_k^T = S_k, built on first use
        self._cholesky: Tensor | None = None

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws ``[n, D]`` (float64)."""
        if self._factors is None:
            # eigh rather than Cholesky: singular covariances are expected at sigma_y = 0, and rounding can leave
            # eigenvalues slightly below zero, which are clamped
            evals, evecs = torch.linalg.eigh(self.covariances)
            self._factors = evecs * evals.clamp(min=0).sqrt()[:, None, :]
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator, device=self.means.device)
        return self.means[k] + (self._factors[k] @ noise[..., None])[..., 0]

    def log_prob(self, x: Tensor) -> Tensor:
        """The mixture log-density of ``x`` (``[N, D]``) -> ``[N]``; needs non-singular covariances."""
        if self._cholesky is None:
            chol, info = torch.linalg.cholesky_ex(self.covariances)
            if bool((info > 0).any()):
                k = int((info > 0).nonzero()[0])
                raise ValueError(f"covariance of component {k} is singular, so the density does not exist "
                                 "(a noiseless measurement pins it): use sigma_y > 0 for log_prob")
            self._cholesky = chol
        diff = x.to(torch.float64)[:, None, :] - self.means  # [N, K, D]
        white = torch.linalg.solve_triangular(self._cholesky, diff[..., None], upper=False)[..., 0]
        log_det = 2 * torch.log(torch.diagonal(self._cholesky, dim1=-2, dim2=-1)).sum(-1)
        log_comp = -0.5 * ((white**2).sum(-1) + log_det + self.dim * math.log(2 * math.pi))
        return torch.logsumexp(log_comp + torch.log(self.weights), -1).to(x.dtype)


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
