"""The variational bound against closed forms for Gaussian data, and its identity with the training loss."""

import math

import pytest
import torch
from scipy import integrate

from diffusekit import parameterizations, schedules, time_sampling, weighting
from diffusekit.likelihood import elbo, elbo_integrand
from diffusekit.loss import DiffusionLoss
from diffusekit.targets import GaussianMixture

M, S = 0.3, 0.5  # data N(M, S^2) in every dimension
X = torch.tensor([[0.1, -0.7], [1.2, 0.4], [0.3, 0.3]], dtype=torch.float64)
GAUSSIAN = GaussianMixture(torch.full((1, 2), M), [S])


def cubature_noise(rows: int, dims: int) -> torch.Tensor:
    """eps = +-sqrt(D) e_i (2D draws): mean 0 and second moment I, so the mean over the draws of a quadratic in eps
    is its exact expectation under N(0, I) (the exact denoiser of Gaussian data is affine in x_t)."""
    basis = math.sqrt(dims) * torch.eye(dims, dtype=torch.float64)
    draws = torch.stack([basis, -basis], 1).reshape(2 * dims, dims)
    return draws[:, None, :].expand(2 * dims, rows, dims).contiguous()


def expected_squared_error(at, x) -> float:
    """E_eps ||x - x0_hat||^2 for the exact denoiser of N(M, S^2): per dimension
    (x - M)^2 sigma^4 / v^2 + alpha^2 sigma^2 S^4 / v^2, v = alpha^2 S^2 + sigma^2 (from x0_hat = M + alpha S^2 / v
    (x_t - alpha M) and x_t = alpha x + sigma eps)."""
    a, s = float(at.alpha), float(at.sigma)
    v = a * a * S * S + s * s
    return sum(((xi - M) ** 2 * s**4 + a * a * s * s * S**4) / v**2 for xi in x.tolist())


def diffusion_by_quad(schedule, x, t_min, t_max) -> float:
    """int_{t_min}^{t_max} -1/2 lambda'(t) SNR(t) E||x - x0_hat||^2 dt by scipy, lambda' = 2 (alpha'/alpha -
    sigma'/sigma) written out by hand (finite where alpha = 0 because SNR vanishes faster)."""

    def integrand(t):
        at = schedule(torch.tensor(t, dtype=torch.float64))
        a, s, da, ds = (float(v) for v in (at.alpha, at.sigma, at.d_alpha, at.d_sigma))
        w = 0.0 if a == 0 else -0.5 * 2 * (da / a - ds / s) * (a / s) ** 2
        return w * expected_squared_error(at, x)

    # the integrand grows like 1 / t near t_min on these schedules: integrate in log t
    value, _ = integrate.quad(lambda lt: math.exp(lt) * integrand(math.exp(lt)), math.log(t_min), math.log(t_max),
                              epsabs=1e-11, epsrel=1e-11, limit=500)
    return value


@pytest.mark.parametrize("name", ["rectified_flow", "cosine", "linear_vp", "edm"])
def test_quadrature_matches_the_closed_form_integral(name):
    schedule = schedules.get(name)
    t_min = 1e-3
    result = elbo(GAUSSIAN.denoiser(schedule), schedule, X, t_min=t_min, time="quadrature", samples=4,
                  noise=cubature_noise(len(X), 2))
    expected = torch.tensor([diffusion_by_quad(schedule, x, t_min, 1.0) for x in X], dtype=torch.float64)
    torch.testing.assert_close(result.diffusion, expected, rtol=1e-6, atol=0)
    assert result.nfe == 4 * 128


@pytest.mark.parametrize("time", ["uniform", "low_discrepancy"])
def test_monte_carlo_within_three_standard_errors(time):
    schedule = schedules.get("cosine")
    t_min = 1e-2
    result = elbo(GAUSSIAN.denoiser(schedule), schedule, X, t_min=t_min, time=time, samples=2000,
                  generator=torch.Generator().manual_seed(0))
    expected = torch.tensor([diffusion_by_quad(schedule, x, t_min, 1.0) for x in X], dtype=torch.float64)
    assert bool(((result.diffusion - expected).abs() < 3 * result.stderr).all()), (result.diffusion, expected)
    assert result.nfe == 2000


def posterior_gap(x, r) -> torch.Tensor:
    """E_z[log q(x | z) - log N(x; z / alpha, r^2)] per row for data N(M, S^2): with y = z / alpha ~ N(x, r^2) the
    posterior is N(c y + (1 - c) M, c r^2), c = S^2 / (S^2 + r^2), so per dimension
    -1/2 log c - (1 - c)^2 (x - M)^2 / (2 c r^2) - c / 2 + 1 / 2; its mean over x ~ N(M, S^2) is
    1/2 log(1 + r^2 / S^2)."""
    c = S**2 / (S**2 + r**2)
    per_dim = -0.5 * math.log(c) - (1 - c) ** 2 * (x - M) ** 2 / (2 * c * r**2) - c / 2 + 0.5
    return per_dim.sum(1)


@pytest.mark.parametrize("name", ["rectified_flow", "cosine"])
def test_bound_gap_on_zero_snr_schedules(name):
    """Zero terminal SNR and t_max = 1: prior KL = 0, the path terms are exact for the exact denoiser, and
    -ELBO(x) + log p(x) is the decoder's mismatch with the true posterior (docstring of diffusekit.likelihood.elbo):
    exactly ``posterior_gap`` per x, >= 0 on average, shrinking like r^2 / (2 S^2) per dimension as t_min -> 0."""
    schedule = schedules.get(name)
    x = GAUSSIAN.sample(64, generator=torch.Generator().manual_seed(1))
    log_p = GAUSSIAN.log_prob(x)
    mean_gaps = []
    for r in (0.3, 0.05):
        t_min = float(schedule.t_from_ve_sigma(r))
        result = elbo(GAUSSIAN.denoiser(schedule), schedule, x, t_min=t_min, samples=4, time="quadrature",
                      noise=cubature_noise(len(x), 2))
        assert float(result.prior.abs().max()) == 0.0
        gap = result.total + log_p
        torch.testing.assert_close(gap, posterior_gap(x, r), rtol=0, atol=1e-6)
        assert float(gap.mean()) > 0
        mean_gaps.append(float(gap.mean()))
    # the data-average gap is D/2 log(1 + r^2/S^2): 0.307 at r = 0.3, 0.00995 at r = 0.05 (64 draws: within 30 %)
    assert mean_gaps[0] == pytest.approx(math.log(1 + 0.09 / 0.25), rel=0.3)
    assert mean_gaps[1] == pytest.approx(math.log(1 + 0.0025 / 0.25), rel=0.3)


def test_prior_and_reconstruction_closed_forms():
    """Prior KL on EDM's VE path at t_max = 1: ||x||^2 / (2 * 80^2). Reconstruction: D/2 (log(2 pi r^2) + 1)."""
    schedule = schedules.get("edm")
    result = elbo(GAUSSIAN.denoiser(schedule), schedule, X, t_min=1e-4, samples=2, nodes=8,
                  generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.prior, (X**2).sum(1) / (2 * 80.0**2))
    r = 80.0 * 1e-4
    expected = torch.full((3,), math.log(2 * math.pi * r * r) + 1, dtype=torch.float64)  # D = 2: D/2 = 1
    torch.testing.assert_close(result.reconstruction, expected)
    torch.testing.assert_close(result.total, result.prior + result.reconstruction + result.diffusion)


CASES = [("eps", "cosine"), ("x0", "rectified_flow"), ("velocity", "rectified_flow"), ("v", "cosine"),
         ("v", "linear_vp"), ("eps", "edm"), ("velocity", "cosine")]


@pytest.mark.parametrize("parameterization,name", CASES)
def test_identity_with_the_training_loss(parameterization, name):
    """D (t_max - t_min) DiffusionLoss(weighting="elbo", t ~ U(t_min, t_max)) = the bound's diffusion estimate,
    for the same t and noise, whatever the parameterization the network's output F is expressed in."""
    schedule, param = schedules.get(name), parameterizations.get(parameterization)
    denoise = GAUSSIAN.denoiser(schedule)
    x = GAUSSIAN.sample(5, generator=torch.Generator().manual_seed(2))
    t_min, t_max = 1e-3, 0.999
    noise = torch.randn(1, *x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    bound = elbo(denoise, schedule, x, t_min=t_min, t_max=t_max, samples=1, time="uniform", noise=noise,
                 generator=torch.Generator().manual_seed(4))
    t = t_min + (t_max - t_min) * torch.rand(1, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)[0]

    def network(x_t, t, cond):  # the F whose x0 is the exact denoiser's
        c_skip, c_out = param.coefficients(schedule(t))
        return (denoise(x_t, t) - c_skip[:, None] * x_t) / c_out[:, None]

    loss = DiffusionLoss(schedule, param, time_sampling.get("uniform", t_min=t_min, t_max=t_max),
                         weighting.get("elbo"))
    out = loss(network, x, noise=noise[0], t=t)
    torch.testing.assert_close(2 * (t_max - t_min) * out.loss, bound.diffusion, rtol=1e-10, atol=0)
    torch.testing.assert_close(2 * out.loss, elbo_integrand(denoise, schedule, x, t, noise[0]), rtol=1e-10, atol=0)


def test_bad_arguments():
    schedule = schedules.get("cosine")
    denoise = GAUSSIAN.denoiser(schedule)
    with pytest.raises(ValueError, match="unknown time mode 'sobol'"):
        elbo(denoise, schedule, X, time="sobol")
    with pytest.raises(ValueError, match="need 0 <= t_min < t_max <= 1"):
        elbo(denoise, schedule, X, t_min=0.5, t_max=0.4)
    with pytest.raises(ValueError, match="noiseless there"):
        elbo(denoise, schedule, X, t_min=0.0)
    with pytest.raises(ValueError, match="multiple of 8"):
        elbo(denoise, schedule, X, nodes=12)
    with pytest.raises(ValueError, match="noise must be"):
        elbo(denoise, schedule, X, samples=2, noise=torch.zeros(3, 3, 2))


def test_a_schedule_noisier_than_the_default_start_at_t_0_starts_there():
    """VDM's learned schedule has sigma / alpha = e^(gamma_min / 2) ~ 1.3e-3 > 1e-3 at t = 0: the default window
    then begins at t = 0, whose reconstruction term is finite."""
    schedule = schedules.get("learned")
    bound = elbo(GAUSSIAN.denoiser(schedule), schedule, X, samples=2, generator=torch.Generator().manual_seed(0))
    assert bound.t_min == 0.0 and torch.isfinite(bound.total).all()
