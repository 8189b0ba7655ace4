import math

import pytest
import torch

from diffusekit import schedules
from diffusekit.sampling import DEPRECATED_SAMPLERS, SAMPLERS, nfe, sample, sampler_name, timesteps
from diffusekit.schedules import DiscreteVP
from diffusekit.targets import GaussianMixture, sliced_wasserstein

from .helpers import noise, rms, smooth_gmm

EDM = schedules.get("edm")


def test_edm_without_churn_is_heun():
    gmm = smooth_gmm()
    n = noise(64, 3)
    ts = timesteps(EDM, 12)
    heun = sample(gmm.denoiser(EDM), n, ts, EDM, "heun")
    churn0 = sample(gmm.denoiser(EDM), n, ts, EDM, "edm_churn", S_churn=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(churn0, heun, rtol=0, atol=0)


def test_edm_churn_is_algorithm_2_on_ve():
    """EDM Algorithm 2 written from the paper (sigma(t) = t, s(t) = 1), same noise draws."""
    gmm = smooth_gmm()
    n = noise(32, 3)
    ts = timesteps(EDM, 10)
    sigmas = (80 * ts).tolist()
    S_churn, S_tmin, S_tmax, S_noise = 30.0, 0.05, 50.0, 1.003
    g = torch.Generator().manual_seed(7)
    D = lambda x, s: gmm.x0_hat(x, 1.0, s)  # noqa: E731
    x = sigmas[0] * n
    N = len(sigmas) - 1
    for i in range(N):
        t_i, t_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_tmin <= t_i <= S_tmax else 0.0  # line 4
        t_hat = t_i + gamma * t_i  # line 6
        if gamma > 0:
            eps = torch.randn(x.shape, generator=g, dtype=x.dtype) * S_noise  # line 5
            x = x + math.sqrt(t_hat**2 - t_i**2) * eps  # line 7
        d = (x - D(x, t_hat)) / t_hat  # line 8
        x_next = x + (t_next - t_hat) * d  # line 9
        if t_next != 0:  # line 10
            d_prime = (x_next - D(x_next, t_next)) / t_next  # line 11
            x_next = x + (t_next - t_hat) * (0.5 * d + 0.5 * d_prime)  # line 12
        x = x_next
    ours = sample(gmm.denoiser(EDM), n, ts, EDM, "edm_churn", generator=torch.Generator().manual_seed(7),
                  S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax, S_noise=S_noise)
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)


def test_edm_is_a_deprecated_alias_of_edm_churn():
    gmm = smooth_gmm()
    n, ts = noise(32, 3), timesteps(EDM, 10)
    churn = dict(S_churn=30.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003)
    new = sample(gmm.denoiser(EDM), n, ts, EDM, "edm_churn", generator=torch.Generator().manual_seed(7), **churn)
    with pytest.warns(DeprecationWarning, match="'edm' is now called 'edm_churn'"):
        old = sample(gmm.denoiser(EDM), n, ts, EDM, "edm", generator=torch.Generator().manual_seed(7), **churn)
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    assert "edm" not in SAMPLERS and DEPRECATED_SAMPLERS == {"edm": "edm_churn"}
    with pytest.warns(DeprecationWarning, match="edm_churn"):
        assert sampler_name("edm") == "edm_churn" and nfe("edm", 10) == 19  # Heun's 2N - 1, as edm_churn
    assert nfe("edm_churn", 10) == 19


def test_ddim_eta0_is_euler_in_x_over_alpha():
    gmm = smooth_gmm()
    schedule = schedules.get("cosine")
    n = noise(64, 3)
    ts = timesteps(schedule, 15, "karras")
    at = schedule(ts)
    ve = at.ve_sigma.tolist()
    x_hat = ve[0] * n  # x_t / alpha at the start
    for i in range(len(ve) - 1):
        d = gmm.x0_hat(x_hat, 1.0, ve[i])  # the denoiser sees the same noise level in x_hat
        x_hat = x_hat + (ve[i + 1] - ve[i]) * (x_hat - d) / ve[i]
    ours = sample(gmm.denoiser(schedule), n, ts, schedule, "ddim", eta=0.0)
    torch.testing.assert_close(ours, x_hat, rtol=1e-9, atol=1e-9)


@pytest.mark.usefixtures("float64")  # the same arithmetic as the paper's algorithm, to 1e-9
def test_ddpm_is_ho_et_al_algorithm_2():
    schedule = DiscreteVP.linear(1e-3, 0.1, T=100)
    betas = torch.linspace(1e-3, 0.1, 100)
    alphas, abar = 1 - betas, torch.cumprod(1 - betas, 0)
    gmm = smooth_gmm()
    n = noise(32, 3)
    g = torch.Generator().manual_seed(3)
    x = n.clone()
    for k in range(99, -1, -1):  # integer timestep k <-> t = (k + 1) / T
        eps = (x - abar[k].sqrt() * gmm.x0_hat(x, abar[k].sqrt(), (1 - abar[k]).sqrt())) / (1 - abar[k]).sqrt()
        mean = (x - betas[k] / (1 - abar[k]).sqrt() * eps) / alphas[k].sqrt()
        if k > 0:
            var = (1 - abar[k - 1]) / (1 - abar[k]) * betas[k]  # beta tilde
            x = mean + var.sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype)
        else:
            x = mean
    ts = timesteps(schedule, 100, "trailing")
    start_sigma = float(schedule(ts[:1]).sigma)
    ours = sample(gmm.denoiser(schedule), n / start_sigma, ts, schedule, "ddpm",
                  generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)


FROM_ONE = {
    "rectified_flow": schedules.get("rectified_flow"),
    "cosine": schedules.get("cosine"),
    "linear_vp_ztsnr": schedules.get("linear_vp", zero_terminal_snr=True),
    "discrete_ztsnr": schedules.get("linear_vp", discrete=True, zero_terminal_snr=True),
    "linear_vp": schedules.get("linear_vp"),
    "edm": EDM,
    "rf_shift3": schedules.get("rectified_flow", shift=3.0),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("name", list(FROM_ONE))
def test_every_sampler_runs_from_t_equals_one(sampler, name):
    schedule = FROM_ONE[name]
    gmm = GaussianMixture.ring2d()
    for spacing in ("uniform", "trailing"):
        ts = timesteps(schedule, 8, spacing)
        assert float(ts[0]) == 1.0
        x = sample(gmm.denoiser(schedule), noise(256, 2), ts, schedule, sampler,
                   generator=torch.Generator().manual_seed(0))
        assert bool(torch.isfinite(x).all()), (sampler, name, spacing)
        assert float(x.abs().max()) < 10


def test_euler_maruyama_options():
    gmm = smooth_gmm()
    schedule = schedules.get("cosine")
    ts = timesteps(schedule, 20, "uniform")
    n = noise(64, 3)
    # g = 0 is the probability-flow ODE with Euler steps (its last step is a denoising step)
    ode = sample(gmm.denoiser(schedule), n, ts, schedule, "euler_maruyama", g=0.0)
    assert rms(ode, sample(gmm.denoiser(schedule), n, ts, schedule, "euler_maruyama", g=lambda t: 0.0)) == 0.0
    with pytest.raises(ValueError, match="g must be"):
        sample(gmm.denoiser(schedule), n, ts, schedule, "euler_maruyama", g="backward")


def test_sample_validates_its_input():
    gmm = smooth_gmm()
    ts = timesteps(EDM, 5)
    d = gmm.denoiser(EDM)
    with pytest.raises(ValueError, match="unknown sampler 'lms'"):
        sample(d, noise(4, 3), ts, EDM, "lms")
    with pytest.raises(TypeError, match="unknown option.*S_churn.*its options: none"):
        sample(d, noise(4, 3), ts, EDM, "heun", S_churn=1.0)
    with pytest.raises(ValueError, match="end in exactly 0"):
        sample(d, noise(4, 3), ts[:-1], EDM, "heun")
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(d, noise(4, 3), ts.flip(0), EDM, "heun")


def test_callback_and_conditions():
    seen, labels = [], []

    def denoise(x, t, cond):
        labels.append(int(cond["label"]))
        return torch.zeros_like(x)

    sample(denoise, noise(4, 3), timesteps(EDM, 6), EDM, "dpmpp_2m", cond={"label": torch.tensor(5)},
           callback=lambda info: seen.append(info["i"]))
    assert seen == list(range(6)) and set(labels) == {5}


def _two_sample_floor(gmm, n, seed):
    g = torch.Generator().manual_seed(seed)
    return sliced_wasserstein(gmm.sample(n, g), gmm.sample(n, g))


STOCHASTIC = [
    ("ddpm", schedules.get("cosine"), "uniform", 200, {}),
    ("edm_churn", EDM, "karras", 32, {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}),
    ("euler_maruyama", schedules.get("linear_vp"), "uniform", 400, {}),
    ("euler_maruyama", schedules.get("rectified_flow"), "uniform", 400, {}),
]


@pytest.mark.slow
@pytest.mark.parametrize("sampler,schedule,spacing,steps,options", STOCHASTIC,
                         ids=[f"{s[0]}-{s[1]!r}" for s in STOCHASTIC])
@pytest.mark.parametrize("target", ["ring2d", "random16d"])
def test_stochastic_samplers_reproduce_the_target(sampler, schedule, spacing, steps, options, target):
    """1e4 samples; sliced W2 to fresh exact samples within 1.5x the two-sample floor (measured: 0.6-1.1x;
    an EDM sampler with S_noise = 1.3 gives 3.8x in 16-D, 8 Euler steps 5.9x)."""
    gmm = GaussianMixture.ring2d() if target == "ring2d" else GaussianMixture.random(16, 8, seed=4)
    n = 10_000
    floor = _two_sample_floor(gmm, n, seed=11)
    x = sample(gmm.denoiser(schedule), noise(n, gmm.dim, seed=5), timesteps(schedule, steps, spacing), schedule,
               sampler, generator=torch.Generator().manual_seed(6), **options)
    swd = sliced_wasserstein(x, gmm.sample(n, torch.Generator().manual_seed(12)))
    assert swd < 1.5 * floor, (swd, floor)
