import torch

from diffusekit import schedules
from diffusekit.targets import GaussianMixture, sliced_wasserstein


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
