"""DPM-Solver++(3M) SDE against its published update, k-diffusion's sampler, the 3M ODE and the target law."""

import importlib
import importlib.util
import math
import sys
import types

import pytest
import torch

from diffusekit import schedules
from diffusekit.sampling import nfe, sample, timesteps
from diffusekit.targets import GaussianMixture, sliced_wasserstein

from .helpers import noise, smooth_gmm

EDM = schedules.get("edm")  # VE: alpha = 1, sigma = 80 t


def _published_3m_sde_ve(D, sigmas, x, eta, s_noise, draw):
    """The DPM-Solver++(3M) SDE step written from Lu et al. 2022b's SDE-DPM-Solver++ in VE form (t = -log sigma),
    with the third-order differences of DPM-Solver++(3M)."""
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = D(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h = math.log(sigmas[i]) - math.log(sigmas[i + 1])
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x + (1 - math.exp(-h_eta)) * denoised
        phi_2 = 1 - (1 - math.exp(-h_eta)) / h_eta
        phi_3 = phi_2 / h_eta - 0.5
        if h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0, d1_1 = (denoised - denoised_1) / r0, (denoised_1 - denoised_2) / r1
            x = x + phi_2 * (d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)) - phi_3 * (d1_0 - d1_1) / (r0 + r1)
        elif h_1 is not None:
            x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
        if eta:
            x = x + draw() * sigmas[i + 1] * math.sqrt(1 - math.exp(-2 * h * eta)) * s_noise
        denoised_1, denoised_2, h_1, h_2 = denoised, denoised_1, h, h_1
    return x


@pytest.mark.parametrize("eta,s_noise", [(1.0, 1.0), (0.5, 1.003)])
def test_is_the_published_update_on_ve(eta, s_noise):
    gmm = smooth_gmm()
    n = noise(32, 3)
    ts = timesteps(EDM, 12)
    g = torch.Generator().manual_seed(3)
    expected = _published_3m_sde_ve(lambda x, s: gmm.x0_hat(x, 1.0, s), (80 * ts).tolist(), 80 * n, eta, s_noise,
                                    lambda: torch.randn(n.shape, generator=g, dtype=n.dtype))
    ours = sample(gmm.denoiser(EDM), n, ts, EDM, "dpmpp_3m_sde", generator=torch.Generator().manual_seed(3),
                  eta=eta, s_noise=s_noise)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    assert nfe("dpmpp_3m_sde", 12) == 12


def test_eta0_is_the_dpmpp_3m_ode_on_vp():
    """eta = 0 is DPM-Solver++(3M) (Lu et al. 2022b, multistep, data prediction) in its (alpha, sigma) form on a
    VP schedule, orders 1, 2, 3, 3, ...; it draws no noise."""
    gmm = smooth_gmm()
    schedule = schedules.get("cosine")
    n = noise(32, 3)
    ts = timesteps(schedule, 10, "logsnr")
    at = schedule(ts)
    alpha, sigma, lam = at.alpha.tolist(), at.sigma.tolist(), (0.5 * at.logsnr).tolist()
    x, ms = sigma[0] * n, []
    for i in range(len(ts) - 1):
        ms.insert(0, gmm.x0_hat(x, alpha[i], sigma[i]))
        if sigma[i + 1] == 0:
            x = ms[0]
            continue
        h = lam[i + 1] - lam[i]
        phi_1 = math.expm1(-h)
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * phi_1 * ms[0]
        if len(ms) >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = (ms[0] - ms[1]) / r0
            if len(ms) == 2:
                x = x + alpha[i + 1] * (phi_1 / h + 1) * d1_0
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_1 = (ms[1] - ms[2]) / r1
                D1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                D2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + alpha[i + 1] * (phi_1 / h + 1) * D1 - alpha[i + 1] * ((phi_1 + h) / h**2 - 0.5) * D2
    ours = sample(gmm.denoiser(schedule), n, ts, schedule, "dpmpp_3m_sde", eta=0.0)
    torch.testing.assert_close(ours, x, rtol=1e-10, atol=1e-10)
    seeded = sample(gmm.denoiser(schedule), n, ts, schedule, "dpmpp_3m_sde", eta=0.0,
                    generator=torch.Generator().manual_seed(9))
    assert torch.equal(ours, seeded)


def test_same_noise_levels_give_the_same_samples_on_every_schedule():
    """The update lives in (x / alpha, ve_sigma): a VP, a rectified-flow and the VE schedule evaluated at the same
    ve_sigma levels, with the same draws, end at the same x0 (alpha(0) = 1)."""
    gmm = smooth_gmm()
    n = noise(64, 3)
    ve = timesteps(EDM, 9) * 80  # 80 .. 0.002, 0
    runs = []
    for schedule in (EDM, schedules.get("cosine"), schedules.get("rectified_flow")):
        ts = schedule.t_from_ve_sigma(ve[:-1])
        ts = torch.cat([ts, torch.zeros(1, dtype=torch.float64)])
        x_start = n * float(schedule(ts[0]).ve_sigma)  # x_t / alpha = ve * noise at the start
        runs.append(sample(gmm.denoiser(schedule), x_start / float(schedule(ts[0]).ve_sigma), ts, schedule,
                           "dpmpp_3m_sde", generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(runs[2], runs[0], rtol=1e-8, atol=1e-8)


def test_rejects_bad_options():
    gmm = smooth_gmm()
    with pytest.raises(ValueError, match="eta and s_noise must be >= 0"):
        sample(gmm.denoiser(EDM), noise(4, 3), timesteps(EDM, 5), EDM, "dpmpp_3m_sde", eta=-1.0)


def test_reproduces_the_target_distribution():
    """4000 samples, 100 steps on a log-SNR grid: sliced W2 to fresh exact samples within 1.5x the two-sample
    floor (measured 1.27x; 20 steps give 1.65x, 8 steps 16x, s_noise = 1.3 at 60 steps 2.8x)."""
    gmm = GaussianMixture.ring2d()
    n = 4000
    g = torch.Generator().manual_seed(11)
    floor = sliced_wasserstein(gmm.sample(n, g), gmm.sample(n, g))
    ts = timesteps(EDM, 100, "logsnr")
    x = sample(gmm.denoiser(EDM), noise(n, 2, seed=5), ts, EDM, "dpmpp_3m_sde",
               generator=torch.Generator().manual_seed(6))
    swd = sliced_wasserstein(x, gmm.sample(n, torch.Generator().manual_seed(12)))
    assert swd < 1.5 * floor, (swd, floor)


def _k_diffusion_sampling():
    """k_diffusion.sampling without the package's __init__ (which needs its training stack); None when
    k-diffusion or what its sampling module imports is not installed."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or any(importlib.util.find_spec(m) is None for m in ("torchsde", "torchdiffeq", "tqdm")):
        return None
    stubs = [m for m in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
             if importlib.util.find_spec(m.split(".")[0]) is None]
    for name in stubs:  # imported at module level by k_diffusion.utils, never used by the samplers
        sys.modules[name] = types.ModuleType(name)
    if stubs:
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    try:
        sys.modules.setdefault("k_diffusion", importlib.util.module_from_spec(spec))
        return importlib.import_module("k_diffusion.sampling")
    except ImportError:
        return None
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_equals_k_diffusion_with_the_same_draws(eta):
    kd = _k_diffusion_sampling()
    if kd is None:
        pytest.skip("k-diffusion (and torchsde, torchdiffeq, tqdm) not installed: make bench-deps")
    gmm = GaussianMixture.random(8, 4, seed=3)
    n = noise(128, 8)
    ts = timesteps(EDM, 10)
    sigmas = 80 * ts
    g = torch.Generator().manual_seed(4)
    theirs = kd.sample_dpmpp_3m_sde(lambda x, s: gmm.x0_hat(x, torch.ones_like(s), s), n * sigmas[0], sigmas,
                                    disable=True, eta=eta,
                                    noise_sampler=lambda s, s_next: torch.randn(n.shape, generator=g, dtype=n.dtype))
    ours = sample(gmm.denoiser(EDM), n, ts, EDM, "dpmpp_3m_sde", generator=torch.Generator().manual_seed(4), eta=eta)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
