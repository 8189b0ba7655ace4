import math

import pytest
import torch

from diffusekit import parameterizations, schedules, time_sampling, weighting
from diffusekit.learned_schedule import LearnedVP, endpoint_terms
from diffusekit.loss import DiffusionLoss
from diffusekit.sampling import SAMPLERS, reference_solve, sample, timesteps
from diffusekit.targets import GaussianMixture


def _schedule(seed=0, hidden=32, **options):
    schedule = schedules.get("learned", hidden=hidden, seed=seed, **options)
    with torch.no_grad():  # a clearly non-linear shape: steeper, off-centre sigmoids
        schedule.module.w2.mul_(3).add_(2)
        schedule.module.b2.copy_(-torch.nn.functional.softplus(schedule.module.w2) * 0.3)
        schedule.module.w3.add_(4)
    return schedule


def _softplus(x):
    return math.log1p(math.exp(x))


def test_value_by_hand_with_one_hidden_unit():
    schedule = schedules.get("learned", hidden=1, gamma_min=-10.0, gamma_max=6.0)
    m = schedule.module
    with torch.no_grad():
        m.w1.fill_(0.25), m.b1.fill_(0.125), m.w2.fill_(1.5), m.b2.fill_(-2.0), m.w3.fill_(-0.375)
    w1, w2, w3 = _softplus(0.25), _softplus(1.5), _softplus(-0.375)

    def g(t):
        u = w1 * t + 0.125
        return u + w3 / (1 + math.exp(-(w2 * u - 2.0)))

    t = 0.3
    gamma = -10.0 + 16.0 * (g(t) - g(0)) / (g(1) - g(0))
    at = schedule(torch.tensor([t], dtype=torch.float64))
    assert float(-at.logsnr) == pytest.approx(gamma, rel=1e-12)
    assert float(at.alpha) ** 2 == pytest.approx(1 / (1 + math.exp(gamma)), rel=1e-12)
    h = 1e-6
    d_gamma = 16.0 * (g(t + h) - g(t - h)) / (2 * h) / (g(1) - g(0))
    sigma2 = 1 / (1 + math.exp(-gamma))
    assert float(at.d_sigma) == pytest.approx(0.5 * math.sqrt(sigma2) * (1 - sigma2) * d_gamma, rel=1e-8)


def test_derivatives_match_autograd_and_finite_differences_in_float64():
    schedule = _schedule()
    t = torch.linspace(0.0, 1.0, 201, dtype=torch.float64).requires_grad_(True)
    at = schedule(t)
    assert at.alpha.dtype == torch.float64
    (d_alpha,) = torch.autograd.grad(at.alpha.sum(), t, retain_graph=True)
    (d_sigma,) = torch.autograd.grad(at.sigma.sum(), t)
    torch.testing.assert_close(at.d_alpha.detach(), d_alpha, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(at.d_sigma.detach(), d_sigma, rtol=1e-10, atol=1e-14)
    inner = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    h = 1e-6
    fd = (schedule(inner + h).alpha - schedule(inner - h).alpha) / (2 * h)
    torch.testing.assert_close(schedule(inner).d_alpha, fd, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(at.alpha**2 + at.sigma**2, torch.ones_like(t), rtol=0, atol=1e-15)


def test_endpoints_and_inverse():
    schedule = _schedule(gamma_min=-13.3, gamma_max=5.0)
    ends = schedule(torch.tensor([0.0, 1.0], dtype=torch.float64))
    stored = torch.tensor(schedule.gamma_range, dtype=torch.float64)  # -13.3 as a float32 parameter
    assert float(stored[0]) == pytest.approx(-13.3, rel=1e-7)
    torch.testing.assert_close(-ends.logsnr, stored, rtol=1e-12, atol=1e-12)
    assert float(ends.alpha[1]) == pytest.approx(math.sqrt(1 / (1 + math.exp(5.0))), rel=1e-12)  # alpha(1) > 0
    t = torch.rand(500, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert float((schedule.t_from_logsnr(schedule.logsnr(t)) - t).abs().max()) < 1e-6
    assert float(schedule.t_from_logsnr(torch.tensor(math.inf))) == 0.0
    assert float(schedule.t_from_logsnr(torch.tensor(-math.inf))) == 1.0
    logsnr = schedule.logsnr(torch.linspace(0, 1, 1001, dtype=torch.float64))
    assert bool((logsnr[1:] < logsnr[:-1]).all())


def test_bad_options_are_one_line_errors():
    for options, match in [({"gamma_min": 1.0, "gamma_max": 0.0}, "gamma_min < gamma_max"),
                           ({"hidden": 0}, "hidden width"), ({"lr_scale": 0}, "lr_scale"),
                           ({"zero_terminal_snr": True}, "zero_terminal_snr")]:
        with pytest.raises(ValueError, match=match):
            schedules.get("learned", **options)


@pytest.mark.parametrize("name", ["x0", "eps", "v", "velocity", "score", "edm"])
def test_every_parameterization_round_trips(name):
    schedule, param = _schedule(), parameterizations.get(name)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(16, 3, dtype=torch.float64, generator=g)
    noise = torch.randn(16, 3, dtype=torch.float64, generator=g)
    at = schedule(torch.linspace(0.0, 1.0, 16, dtype=torch.float64))
    x_t = at.alpha[:, None] * x0 + at.sigma[:, None] * noise
    torch.testing.assert_close(param.to_x0(param.training_target(x0, noise, at), x_t, at), x0, rtol=1e-9, atol=1e-9)


def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def test_samplers_reach_the_reference_solution():
    """The exact mixture denoiser on the learned schedule: second-order solvers land on the PF-ODE's reference from
    t = 1 down to the schedule's last noise level (z_0 carries sigma(0) = 1.3e-3 of noise: t = 0 is not clean)."""
    schedule = _schedule()
    gmm = GaussianMixture.random(3, 4, seed=2, mean_std=1.0)
    n = torch.randn(24, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ve_end = float(schedule(0.0).ve_sigma)
    reference = reference_solve(gmm.denoiser(schedule), n, schedule, 1.0, ve_sigma_end=ve_end, rtol=1e-8, atol=1e-8)
    ts = timesteps(schedule, 48, "karras")
    for sampler in ("heun", "dpmpp_2m", "multistep"):
        assert _rms(sample(gmm.denoiser(schedule), n, ts, schedule, sampler), reference) < 5e-3, sampler
    for sampler in SAMPLERS:  # every sampler runs on it and lands near the data
        out = sample(gmm.denoiser(schedule), n, timesteps(schedule, 16, "karras"), schedule, sampler,
                     generator=torch.Generator().manual_seed(0))
        assert bool(torch.isfinite(out).all()) and float(out.abs().max()) < 10, sampler


def _wrong_model(target, schedule, param):
    model = GaussianMixture(target.means + 0.2, target.stds * 1.3, target.weights)

    def network_fn(x_t, t, cond):
        at = schedule(t.to(torch.float64))
        c_skip, c_out = param.coefficients(at)
        return (model.x0_hat(x_t, at.alpha, at.sigma) - c_skip[:, None] * x_t) / c_out[:, None]

    return network_fn


def test_one_backward_gives_the_variance_gradient_to_the_shape_and_the_bound_to_the_endpoints():
    schedule, param = _schedule(hidden=8), parameterizations.get("eps")
    target = GaussianMixture.random(3, 2, seed=5)
    net = _wrong_model(target, schedule, param)
    g = torch.Generator().manual_seed(0)
    x0 = target.sample(6, g)
    t = torch.rand(6, dtype=torch.float64, generator=g) * 0.98 + 0.01
    noise = torch.randn(x0.shape, dtype=torch.float64, generator=g)
    loss = DiffusionLoss(schedule, param, time_sampling.get("uniform"), weighting.get("elbo"))
    loss(net, x0, noise=noise, t=t).loss.mean().backward()
    trick = {name: p.grad.clone() for name, p in schedule.module.named_parameters()}

    # the reference: L_i = 1/2 gamma'(t) ||eps - eps_hat||^2 / D written out, differentiated by plain autograd
    with schedule.tape():
        at = schedule(t)
        d_gamma = -2 * (at.d_alpha / at.alpha - at.d_sigma / at.sigma)  # -lambda'
        eps_hat = net(at.alpha[:, None] * x0 + at.sigma[:, None] * noise, t, None)
        losses = 0.5 * d_gamma * (noise - eps_hat).pow(2).mean(1)
    shape = dict(schedule.module.named_parameters())
    names = ["w1", "b1", "w2", "b2", "w3"]
    grads = torch.autograd.grad(losses.pow(2).mean(), [shape[n] for n in names], retain_graph=True)
    for name, grad in zip(names, grads, strict=True):
        torch.testing.assert_close(trick[name], grad, rtol=1e-6, atol=1e-10)
    ends = torch.autograd.grad(losses.mean(), [shape["gamma_min"], shape["gamma_max"]])
    torch.testing.assert_close(trick["gamma_min"], ends[0], rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(trick["gamma_max"], ends[1], rtol=1e-6, atol=1e-10)
    assert float(trick["w2"].abs().sum()) > 0


def test_the_bound_does_not_depend_on_the_shape():
    """int_0^1 L(t) dt = int f(gamma) dgamma for a model of the noise level: two shapes, one value (midpoint rule
    over t at fixed data and noise)."""
    target = GaussianMixture.random(3, 2, seed=5)
    g = torch.Generator().manual_seed(0)
    x0, noise = target.sample(1, g), torch.randn(1, 3, dtype=torch.float64, generator=g)
    t = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    values = []
    for schedule in (schedules.get("learned", hidden=8), _schedule(seed=3, hidden=8)):
        param = parameterizations.get("eps")
        loss = DiffusionLoss(schedule, param, time_sampling.get("uniform"), weighting.get("elbo"))
        with torch.no_grad():
            out = loss(_wrong_model(target, schedule, param), x0.expand(len(t), 3), noise=noise.expand(len(t), 3), t=t)
        values.append(float(out.loss.mean()))
    shape_a, shape_b = (schedules.get("learned", hidden=8), _schedule(seed=3, hidden=8))
    mid = torch.tensor([0.5], dtype=torch.float64)
    assert abs(float(shape_a.logsnr(mid) - shape_b.logsnr(mid))) > 1.0  # the shapes do differ
    assert values[0] == pytest.approx(values[1], rel=1e-4)


def test_endpoint_terms_by_hand():
    schedule = schedules.get("learned", hidden=4, gamma_min=-6.0, gamma_max=2.0)
    x0 = torch.tensor([[1.0, -1.0 + 2 / 255]])  # two 8-bit levels, 255 and 1
    noise = torch.tensor([[0.5, -2.0]])
    r = math.exp(-3.0)
    levels = [-1 + 2 * k / 255 for k in range(256)]

    def reconstruction(x, e):
        z = x + r * e
        logits = [-(z - v) ** 2 / (2 * r * r) for v in levels]
        top = max(logits)
        return -(-(z - x) ** 2 / (2 * r * r) - (top + math.log(sum(math.exp(a - top) for a in logits))))

    prior = 0.5 * math.exp(-2.0) * (1.0 + (1 - 2 / 255) ** 2) / 2
    expected = prior + (reconstruction(1.0, 0.5) + reconstruction(-1 + 2 / 255, -2.0)) / 2
    assert float(endpoint_terms(schedule, x0, noise).detach()) == pytest.approx(expected, rel=1e-5)


def test_parameters_and_state():
    fixed = schedules.get("learned", hidden=4, learn_endpoints=False)
    assert len(fixed.parameters()) == 5
    learned = schedules.get("learned", hidden=4)
    assert len(learned.parameters()) == 7
    other = schedules.get("learned", hidden=4, seed=9)
    other.load_state_dict(_schedule(hidden=4).state_dict())
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    torch.testing.assert_close(other.logsnr(t), _schedule(hidden=4).logsnr(t))
    with pytest.raises(ValueError, match="hidden 8"):
        schedules.get("learned", hidden=8).load_state_dict(learned.state_dict())
    assert isinstance(learned, LearnedVP) and not learned.logsnr(t).requires_grad
