import math

import pytest
import torch

from diffusekit import schedules
from diffusekit.likelihood import endpoint_std, ode_nll
from diffusekit.targets import GaussianMixture

TOL = 1e-6


def _data(gmm, n, seed=1):
    return gmm.sample(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gmm", [GaussianMixture.ring2d(), GaussianMixture.random(16, 8)], ids=["ring2d", "random16"])
def test_nll_equals_the_mixture_density(gmm):
    """With the exact denoiser, ode_nll is -log p_0(x) of the mixture to solver tolerance: about tol * |delta|.
    Rectified flow and cosine end at alpha = 0, where N(0, sigma^2 I) is p_T exactly; for EDM the integrated
    divergence is checked against the exact p_T (the mixture blurred by sigma_max), since the reported nll uses
    N(0, sigma_max^2 I) in its place."""
    x = _data(gmm, 6)
    exact = -gmm.log_prob(x)
    for name in ("rectified_flow", "cosine", "edm"):
        schedule = schedules.get(name)
        result = ode_nll(gmm.denoiser(schedule), schedule, x, rtol=TOL, atol=TOL, t_min=0.0, method="dp54")
        bound = 10 * TOL * (1 + result.delta.abs())
        torch.testing.assert_close(result.nll, result.prior - result.delta, rtol=0, atol=1e-12)
        if name == "edm":
            true_prior = -gmm.log_prob(result.endpoint, 1.0, 80.0)
            assert bool(((true_prior - result.delta - exact).abs() < bound).all()), name
        else:
            assert bool(((result.nll - exact).abs() < bound).all()), (name, (result.nll - exact).abs().max())
        assert result.nfe > 0 and result.accepted > 0


def test_error_falls_with_the_tolerance():
    gmm = GaussianMixture.ring2d()
    x = _data(gmm, 6, seed=2)
    schedule = schedules.get("rectified_flow")
    errors, nfes = [], []
    for tol in (1e-4, 1e-7):
        result = ode_nll(gmm.denoiser(schedule), schedule, x, rtol=tol, atol=tol, t_min=0.0, method="dp54")
        errors.append(float((result.nll + gmm.log_prob(x)).abs().max()))
        nfes.append(result.nfe)
    assert errors[1] < errors[0] / 100 and nfes[1] > nfes[0]


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    """Every row draws its own probes, so one row repeated 400 times gives 400 independent estimates: their mean
    lies within 3 standard errors of the exact-divergence NLL."""
    gmm = GaussianMixture.random(16, 8)
    schedule = schedules.get("cosine")
    x = _data(gmm, 1, seed=3).expand(400, -1)
    denoise = gmm.denoiser(schedule)
    exact = ode_nll(denoise, schedule, x[:1], rtol=1e-5, atol=1e-5, t_min=0.0, method="dp54").nll
    estimates = ode_nll(denoise, schedule, x, rtol=1e-5, atol=1e-5, t_min=0.0, method="dp54",
                        divergence="hutchinson", probe=probe, generator=torch.Generator().manual_seed(4)).nll
    standard_error = float(estimates.std()) / math.sqrt(len(estimates))
    assert standard_error > 0
    assert abs(float(estimates.mean() - exact)) < 3 * standard_error
    # several probes per row average: the spread shrinks about as 1 / sqrt(probes)
    four = ode_nll(denoise, schedule, x[:100], rtol=1e-5, atol=1e-5, t_min=0.0, method="dp54",
                   divergence="hutchinson", probes=4, probe=probe, generator=torch.Generator().manual_seed(5)).nll
    assert float(four.std()) < 0.75 * float(estimates.std())


def test_linear_vp_at_t_1_is_accepted_and_a_truncated_vp_is_refused():
    linear = schedules.get("linear_vp")
    assert endpoint_std(linear, 1.0) == pytest.approx(1.0, abs=1e-4)
    assert endpoint_std(schedules.get("edm"), 1.0) == 80.0
    with pytest.raises(ValueError, match=r"LinearVP.*SNR alpha\^2/sigma\^2 = .* at t_max = 0.5") as info:
        ode_nll(GaussianMixture.ring2d().denoiser(linear), linear, torch.zeros(2, 2), t_max=0.5)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"rtol": 0.0}, "rtol must be a finite number > 0"), ({"atol": -1.0}, "atol must be a finite number > 0"),
    ({"divergence": "trace"}, "unknown divergence 'trace'"), ({"probes": 0}, "probes must be an integer >= 1"),
    ({"probe": "uniform"}, "unknown probe 'uniform'"), ({"t_min": 1.0}, "need 0 <= t_min < t_max <= 1"),
])
def test_bad_input_is_a_one_line_error(kwargs, message):
    schedule = schedules.get("rectified_flow")
    with pytest.raises(ValueError, match=message) as info:
        ode_nll(GaussianMixture.ring2d().denoiser(schedule), schedule, torch.zeros(2, 2), **kwargs)
    assert "\n" not in str(info.value)
