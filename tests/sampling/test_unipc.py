"""UniPC (Zhao et al. 2023) against a transcription of the published updates, diffusers' scheduler, and its order."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from diffusekit import schedules
from diffusekit.sampling import reference_solve, sample, timesteps

from .helpers import fitted_order, noise, rms, smooth_gmm

EDM = schedules.get("edm")
RF = schedules.get("rectified_flow")


def phi(k, z):
    """phi_k(z) = (e^z - sum_{j<k} z^j / j!) / z^k (Hochbruck & Ostermann's phi-functions, closed form)."""
    return (math.exp(z) - sum(z**j / math.factorial(j) for j in range(k))) / z**k


def unipc_paper(D, sigmas, x, order, bh, use_corrector):
    """UniPC with data prediction (Zhao et al. 2023, Algorithms 1-3) in VE form (alpha = 1, lambda = -log sigma):
    UniP-p  x_t = (s_t / s_s) x_s + (1 - s_t / s_s) m_0 - B(h) sum_k a_k D_k, D_k = (m_k - m_0) / r_k,
    UniC-p  the same with m_t as the last difference (r = 1); a = R^{-1} g, R_nk = r_k^(n-1),
    g_n = hh n! phi_{n+1}(hh) / B(h), hh = -h, B = hh (bh1) or e^hh - 1 (bh2); a_1 = 1/2 for UniP-2 and UniC-1.
    The order ramps up and is capped at N - i (lower_order_final); the last step to sigma = 0 is x = m_0."""
    n_steps = len(sigmas) - 1
    lam = [-math.log(s) if s > 0 else math.inf for s in sigmas]

    def update(i, x_s, ms, m_new):
        h = lam[i + 1] - lam[i]
        hh = -h
        B = hh if bh == "bh1" else math.expm1(hh)
        rs = [(lam[i - k] - lam[i]) / h for k in range(1, len(ms))] + ([1.0] if m_new is not None else [])
        diffs = [(ms[k] - ms[0]) / rs[k - 1] for k in range(1, len(ms))]
        if m_new is not None:
            diffs.append(m_new - ms[0])
        p = len(diffs)
        x_t = (sigmas[i + 1] / sigmas[i]) * x_s + (1 - sigmas[i + 1] / sigmas[i]) * ms[0]
        if p == 0:
            return x_t
        if p == 1:
            a = [0.5]
        else:
            R = np.array([[r ** (n - 1) for r in rs] for n in range(1, p + 1)])
            g = np.array([hh * math.factorial(n) * phi(n + 1, hh) / B for n in range(1, p + 1)])
            a = np.linalg.solve(R, g)
        return x_t - B * sum(float(a_k) * d for a_k, d in zip(a, diffs, strict=True))

    ms, previous = [], None
    for i in range(n_steps):
        m = D(x, sigmas[i])
        if use_corrector and previous is not None and sigmas[i + 1] > 0:
            x_prev, p_prev = previous
            x = update(i - 1, x_prev, ms[:p_prev], m)
        ms = [m] + ms
        p = min(order, i + 1, n_steps - i)
        if sigmas[i + 1] == 0:
            return m
        previous = (x, p)
        x = update(i, x, ms[:p], None)
    return x


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("bh", ["bh1", "bh2"])
@pytest.mark.parametrize("use_corrector", [True, False])
def test_unipc_is_the_published_algorithm(order, bh, use_corrector):
    gmm = smooth_gmm()
    n = noise(16, 3)
    ts = timesteps(EDM, 7, "karras")
    sigmas = (80 * ts).tolist()
    expected = unipc_paper(lambda x, s: gmm.x0_hat(x, 1.0, s), sigmas, sigmas[0] * n, order, bh, use_corrector)
    ours = sample(gmm.denoiser(EDM), n, ts, EDM, "unipc", order=order, variant=bh, corrector=use_corrector)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers is not installed")
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("bh", ["bh1", "bh2"])
def test_unipc_equals_diffusers_on_the_same_grid(order, bh):
    """diffusers' UniPCMultistepScheduler on flow sigmas (as benchmarks/samplers.py builds it): the same samples
    to float32 rounding of its coefficients. For bh1 the comparison stops before its last step, which it turns
    into NaN (B(h) = -inf times 0 at sigma = 0), and checks our last step, x0_hat, at the same state."""
    import diffusers  # lazy: an optional peer, skipped when absent

    gmm = smooth_gmm()
    n = noise(64, 3)
    steps = 8
    flow = 80 * timesteps(EDM, steps, "karras")[:-1]
    for use_corrector in (True, False):
        scheduler = diffusers.UniPCMultistepScheduler(
            use_flow_sigmas=True, prediction_type="flow_prediction", solver_order=order, solver_type=bh,
            lower_order_final=True, disable_corrector=[] if use_corrector else list(range(steps)))
        scheduler.set_timesteps(sigmas=(flow / (1 + flow)).numpy())
        levels = scheduler.sigmas.to(torch.float64)
        x = n * levels[0]
        for i, t in enumerate(scheduler.timesteps):
            s = float(levels[i])
            x0_hat = gmm.x0_hat(x, 1 - s, s)
            if bh == "bh1" and i == steps - 1:
                x = x0_hat
                break
            x = scheduler.step((x - x0_hat) / s, t, x, return_dict=False)[0]
        ts = levels.clone()
        ts[-1] = 0.0
        ours = sample(gmm.denoiser(RF), n, ts, RF, "unipc", order=order, variant=bh, corrector=use_corrector)
        torch.testing.assert_close(ours, x, rtol=0, atol=2e-5)


@pytest.mark.parametrize("order,use_corrector,expected", [(1, False, 1.0), (2, False, 2.0), (2, True, 3.0),
                                                          (3, True, 4.0)])
def test_unipc_order(order, use_corrector, expected):
    """UniP-p is of order p, UniPC-p of order p + 1 (bh2), on EDM's Karras grid against a reference that ends
    with the same denoising step from sigma_min."""
    gmm = smooth_gmm()
    n = noise(64, 3)
    errors, steps_list = [], [64, 128, 256]
    for steps in steps_list:
        ts = timesteps(EDM, steps, "karras")
        ref = _reference(float(EDM(ts[-2]).ve_sigma))
        errors.append(rms(sample(gmm.denoiser(EDM), n, ts, EDM, "unipc", order=order, corrector=use_corrector), ref))
    assert abs(fitted_order(steps_list, errors) - expected) < 0.25, errors


_REFERENCES = {}


def _reference(sigma_end):
    if sigma_end not in _REFERENCES:
        gmm = smooth_gmm()
        _REFERENCES[sigma_end] = reference_solve(gmm.denoiser(EDM), noise(64, 3), EDM, 1.0, ve_sigma_end=sigma_end)
    return _REFERENCES[sigma_end]


@pytest.mark.parametrize("options,message", [({"order": 4}, "order"), ({"variant": "bh3"}, "variant")])
def test_unipc_rejects_bad_options(options, message):
    gmm = smooth_gmm()
    with pytest.raises(ValueError, match=message):
        sample(gmm.denoiser(EDM), noise(4, 3), timesteps(EDM, 4), EDM, "unipc", **options)
