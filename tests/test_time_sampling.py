import math

import pytest
import torch

from diffusekit import schedules, time_sampling

RF = schedules.get("rectified_flow")
EDM = schedules.get("edm")


def test_lognormal_gives_edm_sigma_distribution_on_any_schedule():
    """EDM: ln(ve_sigma) ~ N(-1.2, 1.2^2); the same levels on a VP schedule."""
    sampler = time_sampling.get("lognormal")
    g = torch.Generator().manual_seed(0)
    for schedule in (EDM, schedules.get("cosine"), RF):
        draw = sampler(200_000, schedule, generator=g)
        log_sigma = torch.log(schedule(draw.t).ve_sigma)
        assert abs(float(log_sigma.mean()) + 1.2) < 0.01
        assert abs(float(log_sigma.std()) - 1.2) < 0.01


def test_logit_normal_is_sd3_on_rectified_flow():
    sampler = time_sampling.get("logit_normal", mean=0.3, std=0.8)
    draw = sampler(200_000, RF, generator=torch.Generator().manual_seed(0))
    logit = torch.log(draw.t / (1 - draw.t))
    assert abs(float(logit.mean()) - 0.3) < 0.01 and abs(float(logit.std()) - 0.8) < 0.01


def test_uniform_range():
    draw = time_sampling.get("uniform", t_min=0.2, t_max=0.6)(10_000, RF, torch.Generator().manual_seed(0))
    assert 0.2 <= float(draw.t.min()) and float(draw.t.max()) <= 0.6
    assert abs(float(draw.t.mean()) - 0.4) < 0.01


@pytest.mark.parametrize("mode", ["stratified", "low_discrepancy"])
def test_one_stratum_per_example(mode):
    sampler = time_sampling.get("uniform", mode)
    n = 64
    u, w = sampler.draw_u(n, torch.Generator().manual_seed(0))
    strata = torch.sort((u * n).floor().long()).values
    assert strata.tolist() == list(range(n))
    assert bool((w == 1).all())


def test_stratified_marginal_is_uniform():
    sampler = time_sampling.get("uniform", "stratified")
    g = torch.Generator().manual_seed(1)
    u = torch.cat([sampler.draw_u(7, g)[0] for _ in range(20_000)])
    hist = torch.histc(u, bins=10, min=0, max=1) / len(u)
    assert float((hist - 0.1).abs().max()) < 0.005


def test_importance_sampling_is_unbiased_and_follows_second_moments():
    sampler = time_sampling.get("uniform", "importance", bins=8, uniform_mix=0.2, warmup=2)
    g = torch.Generator().manual_seed(0)
    loss_fn = lambda u: (1 + 10 * u) ** 2  # noqa: E731 - loss grows with u
    assert not sampler.warmed_up
    for _ in range(50):
        u, w = sampler.draw_u(256, g)
        sampler.update(u, loss_fn(u))
    assert sampler.warmed_up
    p = sampler.bin_probabilities()
    assert float(p[-1]) > 5 * float(p[0])  # heavier bins drawn more
    assert float(p.min()) >= 0.2 / 8 - 1e-12  # uniform mixing keeps every bin alive
    # unbiased: E[w L(u)] under importance = E[L(u)] under uniform = int_0^1 (1+10u)^2 du
    exact = (11**3 - 1) / 30
    estimates = []
    for _ in range(400):
        u, w = sampler.draw_u(256, g)
        estimates.append(float((w * loss_fn(u)).mean()))
    est = torch.tensor(estimates)
    assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / math.sqrt(len(est))


def test_state_dict_round_trip():
    a = time_sampling.get("uniform", "importance", bins=4, warmup=1)
    a.update(torch.tensor([0.1, 0.4, 0.6, 0.9]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    b = time_sampling.get("uniform", "importance", bins=4, warmup=1)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.bin_probabilities(), b.bin_probabilities())


def test_times_stay_off_the_endpoints():
    for name in ("uniform", "lognormal", "logit_normal"):
        draw = time_sampling.get(name)(100_000, RF, torch.Generator().manual_seed(0))
        assert 0 < float(draw.t.min()) and float(draw.t.max()) < 1


def test_bad_input():
    with pytest.raises(ValueError, match="unknown time distribution 'normal'"):
        time_sampling.get("normal")
    with pytest.raises(ValueError, match="unknown time-sampling mode 'sobol'"):
        time_sampling.get("uniform", "sobol")
    with pytest.raises(TypeError, match="bad options for time distribution 'lognormal'"):
        time_sampling.get("lognormal", mean=1.0)
    with pytest.raises(ValueError, match="t_min < t_max"):
        time_sampling.get("uniform", t_min=0.5, t_max=0.2)
