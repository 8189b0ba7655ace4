import math

import pytest
import torch

from diffusekit import schedules
from diffusekit.targets import GaussianMixture, MixturePosterior, sliced_wasserstein


def test_denoiser_is_tweedie_of_the_exact_log_density():
    """x0_hat = (x_t + sigma^2 grad log p_t(x_t)) / alpha with the gradient from autograd of log_prob."""
    gmm = GaussianMixture.random(dim=3, components=4, seed=1)
    g = torch.Generator().manual_seed(0)
    for alpha, sigma in [(1.0, 0.05), (0.8, 0.6), (0.3, 0.95), (1.0, 3.0)]:
        x = (alpha * gmm.sample(50, g) + sigma * torch.randn(50, 3, generator=g)).requires_grad_(True)
        (grad,) = torch.autograd.grad(gmm.log_prob(x, alpha, sigma).sum(), x)
        torch.testing.assert_close(gmm.x0_hat(x.detach(), alpha, sigma), (x.detach() + sigma**2 * grad) / alpha)
        torch.testing.assert_close(gmm.score(x.detach(), alpha, sigma), grad)


def test_denoiser_limits():
    gmm = GaussianMixture.ring2d()
    x = torch.randn(20, 2)
    # pure noise (alpha = 0): the posterior mean is the data mean
    torch.testing.assert_close(gmm.x0_hat(x, 0.0, 1.0), gmm.mean().expand(20, 2).to(x.dtype))
    # no noise: identity (scaled)
    torch.testing.assert_close(gmm.x0_hat(x, 0.5, 0.0), x / 0.5)


def test_denoiser_matches_monte_carlo_posterior_mean():
    gmm = GaussianMixture.ring2d()
    g = torch.Generator().manual_seed(3)
    schedule = schedules.get("cosine")
    at = schedule(torch.tensor(0.5))
    x0 = gmm.sample(400_000, g)
    x_t = at.alpha * x0 + at.sigma * torch.randn(x0.shape, generator=g)
    # regress E[x0 | x_t] on a small neighbourhood of a query point
    query = x_t[0]
    near = (x_t - query).norm(dim=1) < 0.02
    mc = x0[near].mean(0)
    stderr = x0[near].std(0) / near.sum().sqrt()
    exact = gmm.denoiser(schedule)(query[None], at.t)[0]
    assert bool(((mc - exact).abs() < 5 * stderr + 2e-3).all())


def test_sampling_moments_and_components():
    gmm = GaussianMixture([[0.0, 0.0], [4.0, 4.0]], [0.5, 1.0], [0.25, 0.75])
    x, k = gmm.sample(200_000, torch.Generator().manual_seed(0), return_components=True)
    assert abs(float((k == 1).double().mean()) - 0.75) < 0.005
    torch.testing.assert_close(x.mean(0), gmm.mean(), atol=0.02, rtol=0)
    assert float((gmm.component(x) == k).double().mean()) > 0.99


def test_sliced_wasserstein_floor_and_shift():
    gmm = GaussianMixture.ring2d()
    g = torch.Generator().manual_seed(0)
    a, b = gmm.sample(4000, g), gmm.sample(4000, g)
    floor = sliced_wasserstein(a, b)
    assert floor < 0.05
    assert sliced_wasserstein(a, b + 0.3) > 0.15  # a shift of 0.3 along any direction shows up


def test_denoiser_with_per_sample_levels_matches_one_at_a_time():
    gmm = GaussianMixture.ring2d()
    x = torch.randn(4, 2)
    sigma = torch.tensor([0.1, 0.5, 1.0, 5.0])
    for alpha in (1.0, torch.ones(4), torch.tensor([1.0, 0.9, 0.5, 0.1])):
        batched = gmm.x0_hat(x, alpha, sigma)
        a = torch.as_tensor(alpha).expand(4)
        single = torch.cat([gmm.x0_hat(x[i:i + 1], float(a[i]), float(sigma[i])) for i in range(4)])
        torch.testing.assert_close(batched, single)


# -- exact posterior under a linear-Gaussian measurement ----------------------------------------------------------
def _mixture_covariance(weights, means, covariances):
    """Law of total covariance: sum_k w_k (S_k + mu_k mu_k^T) - m m^T."""
    m = weights @ means
    second = (weights[:, None, None] * (covariances + means[:, :, None] * means[:, None, :])).sum(0)
    return second - m[:, None] * m[None, :]


def _weighted(w, f):
    """Self-normalised importance estimate of E[f] and its standard error sqrt(sum w_i^2 (f_i - est)^2)."""
    est = w @ f
    return est, ((w**2) @ (f - est) ** 2).sqrt()


@pytest.mark.parametrize("case", ["ring", "random5"])
def test_posterior_matches_importance_sampling(case):
    """Prior draws weighted by N(y; A x, sigma_y^2 I): weighted moments and component masses agree with the closed
    form within 5 standard errors (the error bars come from the weights, i.e. the effective sample size)."""
    g = torch.Generator().manual_seed(7)
    if case == "ring":
        gmm, sigma_y = GaussianMixture.ring2d(), 0.3
        A = torch.tensor([[0.8, 0.6]], dtype=torch.float64)
    else:
        gmm, sigma_y = GaussianMixture.random(dim=5, components=6, seed=2), 0.4
        A = torch.randn(2, 5, generator=g, dtype=torch.float64)
    y = A @ gmm.sample(1, g)[0] + sigma_y * torch.randn(A.shape[0], generator=g, dtype=torch.float64)
    post = gmm.posterior(A, y, sigma_y)

    x, k = gmm.sample(400_000, g, return_components=True)
    log_w = -0.5 * ((x @ A.T - y) ** 2).sum(1) / sigma_y**2
    w = torch.softmax(log_w, 0)
    assert 1 / float((w**2).sum()) > 10_000  # enough effective samples for the error bars to mean something

    mean, se = _weighted(w, x)
    assert bool(((mean - post.mean()).abs() < 5 * se).all())
    exact_cov = _mixture_covariance(post.weights, post.means, post.covariances)
    centred = x - post.mean()
    outer = (centred[:, :, None] * centred[:, None, :]).reshape(len(x), -1)
    cov, se = _weighted(w, outer)
    assert bool(((cov - exact_cov.reshape(-1)).abs() < 5 * se + 1e-12).all())
    mass, se = _weighted(w, torch.nn.functional.one_hot(k, gmm.num_components).to(torch.float64))
    assert bool(((mass - post.weights).abs() < 5 * se + 1e-4).all())


def test_posterior_agrees_with_the_information_form():
    """Per component, Bishop PRML eq. 2.116-2.117: S' = (S^-1 + A^T A / sigma_y^2)^-1,
    mu' = S' (S^-1 mu + A^T y / sigma_y^2); the evidence is eq. 2.115."""
    gmm = GaussianMixture.random(dim=4, components=3, seed=5)
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, generator=g, dtype=torch.float64)
    sigma_y = 0.2
    post = gmm.posterior(A.numpy(), y.numpy(), sigma_y)  # arrays are accepted too
    log_w = []
    for k in range(3):
        prec = torch.diag(gmm.stds[k] ** -2)
        cov = torch.linalg.inv(prec + A.T @ A / sigma_y**2)
        torch.testing.assert_close(post.covariances[k], cov, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(post.means[k], cov @ (prec @ gmm.means[k] + A.T @ y / sigma_y**2), rtol=1e-9,
                                   atol=1e-12)
        evidence_cov = A @ torch.diag(gmm.stds[k] ** 2) @ A.T + sigma_y**2 * torch.eye(3, dtype=torch.float64)
        log_w.append(math.log(gmm.weights[k]) + torch.distributions.MultivariateNormal(
            A @ gmm.means[k], evidence_cov).log_prob(y))
    torch.testing.assert_close(post.weights, torch.softmax(torch.stack(log_w), 0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", ["ring", "random5"])
def test_noiseless_inpainting_posterior_is_coordinate_conditioning(case):
    """sigma_y = 0 and A selecting coordinates: each diagonal component keeps its unobserved coordinates, the observed
    ones are fixed to y, and the weights are w_k prod_obs N(y_j; mu_kj, s_kj^2)."""
    gmm = GaussianMixture.ring2d() if case == "ring" else GaussianMixture.random(dim=5, components=6, seed=3)
    observed = [0] if case == "ring" else [1, 3]
    d = gmm.dim
    A = torch.eye(d, dtype=torch.float64)[observed]
    y = gmm.sample(1, torch.Generator().manual_seed(4))[0][observed]
    post = gmm.posterior(A, y, 0.0)

    means = gmm.means.clone()
    means[:, observed] = y
    var = gmm.stds.clone() ** 2
    var[:, observed] = 0
    mu_o, s_o = gmm.means[:, observed], gmm.stds[:, observed]
    log_lik = (-0.5 * ((y - mu_o) / s_o) ** 2 - torch.log(s_o) - 0.5 * math.log(2 * math.pi)).sum(1)
    weights = gmm.weights * torch.exp(log_lik - log_lik.max())
    torch.testing.assert_close(post.weights, weights / weights.sum(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(post.means, means, rtol=0, atol=1e-12)
    torch.testing.assert_close(post.covariances, torch.diag_embed(var), rtol=0, atol=1e-12)

    x = post.sample(2000, torch.Generator().manual_seed(0))
    assert float((x[:, observed] - y).abs().max()) < 1e-12  # the observed coordinates are hit exactly
    assert bool(torch.isfinite(x).all())
    with pytest.raises(ValueError, match="singular"):
        post.log_prob(x[:5])


def test_posterior_tends_to_the_prior_for_a_useless_measurement():
    gmm = GaussianMixture.random(dim=5, components=4, seed=6)
    A = torch.randn(2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    post = gmm.posterior(A, torch.tensor([0.3, -0.2]), 1e4)
    torch.testing.assert_close(post.weights, gmm.weights, rtol=1e-6, atol=0)
    torch.testing.assert_close(post.means, gmm.means, rtol=0, atol=1e-6)
    torch.testing.assert_close(post.covariances, torch.diag_embed(gmm.stds**2), rtol=0, atol=1e-6)
    torch.testing.assert_close(post.mean(), gmm.mean(), rtol=0, atol=1e-6)


def test_posterior_samples_match_its_moments():
    gmm = GaussianMixture.random(dim=5, components=6, seed=2)
    g = torch.Generator().manual_seed(11)
    A = torch.randn(2, 5, generator=g, dtype=torch.float64)
    post = gmm.posterior(A, torch.tensor([0.5, -1.0]), 0.1)
    n = 200_000
    x = post.sample(n, g)
    assert x.shape == (n, 5) and x.dtype == torch.float64
    se = x.std(0) / math.sqrt(n)
    assert bool(((x.mean(0) - post.mean()).abs() < 5 * se).all())
    exact_cov = _mixture_covariance(post.weights, post.means, post.covariances)
    centred = x - post.mean()
    outer = (centred[:, :, None] * centred[:, None, :]).reshape(n, -1)
    se = outer.std(0) / math.sqrt(n)
    assert bool(((outer.mean(0) - exact_cov.reshape(-1)).abs() < 5 * se).all())
    assert post.dim == 5 and post.num_components == 6


def test_posterior_log_prob_is_bayes_rule():
    """log p(x | y) - log p(x' | y) = [log p(x) + log N(y; A x, sigma_y^2)] - [same at x'], and in 2-D the density
    integrates to one on a grid."""
    gmm = GaussianMixture.ring2d()
    A = torch.tensor([[0.8, 0.6]], dtype=torch.float64)
    y, sigma_y = torch.tensor([0.4], dtype=torch.float64), 0.3
    post = gmm.posterior(A, y, sigma_y)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unnormalised = gmm.log_prob(x) - 0.5 * ((x @ A.T - y) ** 2).sum(1) / sigma_y**2
    diff = post.log_prob(x) - unnormalised
    torch.testing.assert_close(diff, diff[:1].expand(50), rtol=0, atol=1e-9)
    h = 0.005
    axis = torch.arange(-1.5, 1.5, h, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    assert abs(float(post.log_prob(grid).exp().sum()) * h * h - 1) < 1e-4


def test_posterior_rejects_a_rank_deficient_noiseless_measurement():
    gmm = GaussianMixture.random(dim=3, components=2, seed=0)
    A = torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]])
    with pytest.raises(ValueError, match="rank"):
        gmm.posterior(A, torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="rank"):
        gmm.posterior(torch.randn(4, 3), torch.zeros(4), 0.0)  # more rows than dimensions
    post = gmm.posterior(A, torch.zeros(2), 0.1)  # with noise the repeated row is just a second reading
    assert bool(torch.isfinite(post.means).all())
    with pytest.raises(ValueError, match="shape"):
        gmm.posterior(A, torch.zeros(3), 0.1)


def test_mixture_posterior_validates_shapes():
    with pytest.raises(ValueError):
        MixturePosterior(torch.ones(2), torch.zeros(2, 3), torch.zeros(2, 3, 2))
