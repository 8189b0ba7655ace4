"""Guidance wrappers against closed forms: Gaussian targets with exact denoisers, counted network calls."""

import math

import pytest
import torch

from diffusekit import derived
from diffusekit.guidance import (
    GuidanceSettings,
    apply_guidance,
    autoguidance,
    classifier_free,
    drop_conditions,
    dynamic_threshold,
    epsilon_scaling,
    increasing,
    limited_interval,
    null_condition,
    oscillating,
    static_threshold,
)
from diffusekit.sampling import sample, timesteps
from diffusekit.schedules import Cosine, RectifiedFlow
from diffusekit.targets import GaussianMixture

NULL = 1  # class 0 is the condition, 1 the null class


def conditional_gaussians(mu_cond, mu_null, std, dim=2):
    """Exact denoiser of p(x | c) = N(mu_cond, std^2) (label 0) and of the null model N(mu_null, std^2) (label 1),
    with a log of the batch sizes it was called with."""
    cond_target = GaussianMixture([[mu_cond] * dim], [std])
    null_target = GaussianMixture([[mu_null] * dim], [std])
    calls = []

    def denoiser_for(schedule):
        exact = (cond_target.denoiser(schedule), null_target.denoiser(schedule))

        def denoise(x, t, cond=None):
            calls.append(x.shape[0])
            labels = cond["labels"] if cond else torch.zeros(x.shape[0], dtype=torch.long)
            out = torch.empty_like(x)
            for k in (0, 1):
                rows = labels == k
                if rows.any():
                    out[rows] = exact[k](x[rows], t[rows])
            return out
        return denoise
    return cond_target, null_target, denoiser_for, calls


@pytest.mark.parametrize("schedule", [RectifiedFlow(), Cosine()], ids=["rf", "cosine"])
def test_guiding_x0_equals_guiding_eps_velocity_and_score(schedule):
    cond_t, null_t, denoiser_for, calls = conditional_gaussians(0.8, -0.3, 0.4)
    guided = classifier_free(denoiser_for(schedule), 3.0, null_condition(NULL))
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    t = torch.full((6,), 0.6)
    at = schedule(t)
    x0 = guided(x, t, {"labels": torch.zeros(6, dtype=torch.long)})
    assert calls == [12]  # one batched forward: the conditional and null halves together
    alpha, sigma = at.alpha, at.sigma
    score = 3.0 * cond_t.score(x, alpha, sigma) - 2.0 * null_t.score(x, alpha, sigma)
    torch.testing.assert_close(derived.score_from_x0(x0, x, at), score)
    eps = [derived.eps_from_x0(target.x0_hat(x, alpha, sigma), x, at) for target in (cond_t, null_t)]
    torch.testing.assert_close(derived.eps_from_x0(x0, x, at), 3.0 * eps[0] - 2.0 * eps[1])
    u = [derived.velocity_from_x0(target.x0_hat(x, alpha, sigma), x, at) for target in (cond_t, null_t)]
    torch.testing.assert_close(derived.velocity_from_x0(x0, x, at), 3.0 * u[0] - 2.0 * u[1])


def test_cfg_on_equal_variance_gaussians_samples_the_extrapolated_gaussian():
    # With p(x|c) = N(mu_c, s^2) and p(x) = N(mu_0, s^2), w s_c + (1 - w) s_0 is the score of
    # N(w mu_c + (1 - w) mu_0, s^2) at every noise level, so the guided PF-ODE samples exactly that.
    schedule = RectifiedFlow()
    _, _, denoiser_for, _ = conditional_gaussians(0.5, -0.5, 0.3, dim=1)
    w = 2.5
    guided = classifier_free(denoiser_for(schedule), w, null_condition(NULL))
    noise = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = timesteps(schedule, 40, "uniform")
    x = sample(guided, noise, ts, schedule, "heun", cond={"labels": torch.zeros(4000, dtype=torch.long)})
    assert abs(x.mean().item() - (w * 0.5 + (1 - w) * -0.5)) < 4 * 0.3 / math.sqrt(4000)
    assert abs(x.std().item() - 0.3) < 0.02


def test_weight_one_is_one_plain_call_and_no_condition_runs_unguided():
    _, _, denoiser_for, calls = conditional_gaussians(0.8, -0.3, 0.4)
    plain = denoiser_for(RectifiedFlow())
    x, t, c = torch.randn(3, 2), torch.full((3,), 0.5), {"labels": torch.zeros(3, dtype=torch.long)}
    torch.testing.assert_close(classifier_free(plain, 1.0, null_condition(NULL))(x, t, c), plain(x, t, c))
    torch.testing.assert_close(classifier_free(plain, 4.0, null_condition(NULL))(x, t, None), plain(x, t, None))
    assert calls == [3, 3, 3, 3]


def test_null_condition_drops_labels_and_text_and_cfg_pairs_them():
    labels, text = torch.tensor([0, 2]), torch.randn(2, 4, 8)
    null = null_condition(3)
    torch.testing.assert_close(null({"labels": labels})["labels"], torch.tensor([3, 3]))
    cond = {"labels": labels, "text": text, "text_mask": torch.ones(2, 4, dtype=torch.bool),
            "image": torch.randn(2, 1, 4, 4)}
    dropped = null(cond)
    torch.testing.assert_close(dropped["labels"], torch.tensor([3, 3]))
    assert dropped["text_null"].dtype == torch.bool and bool(dropped["text_null"].all())
    assert dropped["text"] is text and dropped["image"] is cond["image"] and "text_null" not in cond
    assert "text_null" not in null({"labels": labels}) and "labels" not in null({"text": text})
    assert null_condition(3)(cond).keys() == dropped.keys()  # null_condition is the same map
    seen = []

    def denoise(x, t, c):
        seen.append(c)
        return x * (1 + c["text_null"].to(x.dtype))[:, None]  # the null text doubles the output

    x, t = torch.randn(2, 3), torch.full((2,), 0.5)
    out = classifier_free(denoise, 3.0, null)(x, t, cond)
    torch.testing.assert_close(seen[0]["text_null"], torch.tensor([False, False, True, True]))
    torch.testing.assert_close(seen[0]["labels"], torch.tensor([0, 2, 3, 3]))
    torch.testing.assert_close(out, 3.0 * x + (1 - 3.0) * 2 * x)


def test_autoguidance_combines_two_models_under_the_same_condition():
    schedule = RectifiedFlow()
    main_t, guide_t = GaussianMixture([[0.5, 0.5]], [0.2]), GaussianMixture([[0.4, 0.6]], [0.5])
    seen = []

    def recording(target):
        exact = target.denoiser(schedule)

        def denoise(x, t, cond=None):
            seen.append(cond)
            return exact(x, t)
        return denoise
    x, t, c = torch.randn(5, 2), torch.full((5,), 0.3), {"labels": torch.arange(5)}
    out = autoguidance(recording(main_t), recording(guide_t), 2.0)(x, t, c)
    at = schedule(t)
    a, s = at.alpha, at.sigma
    torch.testing.assert_close(out, 2.0 * main_t.x0_hat(x, a, s) - guide_t.x0_hat(x, a, s))
    assert len(seen) == 2 and all(torch.equal(cond["labels"], c["labels"]) for cond in seen)  # the real condition
    same = recording(main_t)
    torch.testing.assert_close(autoguidance(same, same, 5.0)(x, t, c), same(x, t, c))


def test_rescale_matches_the_conditional_std_at_phi_one_and_mixes_linearly():
    _, _, denoiser_for, _ = conditional_gaussians(0.8, -0.3, 0.4, dim=16)
    plain = denoiser_for(Cosine())
    x, t, c = torch.randn(4, 16), torch.full((4,), 0.4), {"labels": torch.zeros(4, dtype=torch.long)}
    cfg = classifier_free(plain, 6.0, null_condition(NULL))(x, t, c)
    full = classifier_free(plain, 6.0, null_condition(NULL), rescale=1.0)(x, t, c)
    half = classifier_free(plain, 6.0, null_condition(NULL), rescale=0.5)(x, t, c)
    torch.testing.assert_close(full.std(dim=1), plain(x, t, c).std(dim=1))
    torch.testing.assert_close(half, 0.5 * full + 0.5 * cfg)
    torch.testing.assert_close(classifier_free(plain, 6.0, null_condition(NULL), rescale=0.0)(x, t, c), cfg)


@pytest.mark.parametrize("lam", [0.97, 1.02])
def test_epsilon_scaling_moves_x0_to_the_scaled_noise_and_keeps_pure_noise(lam):
    schedule, target = Cosine(), GaussianMixture([[0.3, -0.2]], [0.5])
    exact = target.denoiser(schedule)
    plain = lambda x, t, cond=None: exact(x, t)  # noqa: E731
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=torch.float64)  # alpha(1) = 6e-17 on the cosine schedule
    at = schedule(t)
    scaled = epsilon_scaling(plain, lam, schedule)(x, t)
    eps = derived.eps_from_x0(plain(x, t), x, at)
    # the implied noise is the scaled one (x_t unchanged), by the exact conversion, except at pure noise
    torch.testing.assert_close(derived.eps_from_x0(scaled, x, at)[:3], eps[:3] / lam)
    torch.testing.assert_close(scaled[:3], ((x - at.sigma[:, None] * eps / lam) / at.alpha[:, None])[:3])
    torch.testing.assert_close(scaled[3], plain(x, t)[3])
    assert torch.isfinite(scaled).all()
    assert epsilon_scaling(plain, 1.0, schedule) is plain


def test_epsilon_scaled_pf_ode_on_a_gaussian_matches_its_closed_form():
    # data N(0, s^2): in ve_sigma coordinates the scaled PF-ODE is dx/dsigma = eps_hat / lambda with
    # eps_hat = x sigma / (s^2 + sigma^2), so x(0) = x(sigma_max) (s^2 / (s^2 + sigma_max^2))^(1 / (2 lambda)):
    # the sampler (high-order, many steps) must reproduce that linear map for every lambda.
    schedule, s, lam = RectifiedFlow(), 0.5, 0.97
    denoise = GaussianMixture([[0.0]], [s]).denoiser(schedule)
    ts = timesteps(schedule, 200, "uniform", t_max=0.9)
    at0 = schedule(ts[:1])
    start = torch.tensor([[-1.0], [0.3], [2.0]], dtype=torch.float64)
    scaled = epsilon_scaling(lambda x, t, cond=None: denoise(x, t), lam, schedule)
    out = sample(scaled, start / at0.sigma, ts, schedule, "heun")  # sample() starts at sigma(ts[0]) * noise
    sigma_max = float(at0.sigma / at0.alpha)
    ratio = (s**2 / (s**2 + sigma_max**2)) ** (1 / (2 * lam)) / float(at0.alpha)
    torch.testing.assert_close(out, start * ratio, rtol=1e-4, atol=1e-6)
    unscaled = sample(lambda x, t, cond=None: denoise(x, t), start / at0.sigma, ts, schedule, "heun")
    assert not torch.allclose(out, unscaled, rtol=1e-2)  # lambda = 0.97 is far from the plain ODE


def test_thresholds():
    x0 = torch.tensor([[-3.0, -0.5, 0.2, 1.5, 0.9], [0.1, -0.2, 0.3, 0.4, -0.5]])
    fixed = lambda x, t, cond=None: x0  # noqa: E731
    torch.testing.assert_close(static_threshold(fixed)(None, None), x0.clamp(-1, 1))
    out = dynamic_threshold(fixed, percentile=0.8)(None, None)
    s = torch.quantile(x0[0].abs(), 0.8)  # 1.5 + 0.2 * (3 - 1.5) = 1.8 (linear interpolation)
    torch.testing.assert_close(out[0], x0[0].clamp(-s, s) / s)
    torch.testing.assert_close(out[1], x0[1])  # |x0| <= 1: s = 1, nothing changes
    assert out.abs().max() <= 1.0


def test_weight_schedules_on_the_grid():
    ts = timesteps(RectifiedFlow(), 5, "uniform")
    grid = ts[:-1].float()
    assert increasing(3.0, ts)(grid).tolist() == [1.0, 1.5, 2.0, 2.5, 3.0]
    ts7 = timesteps(RectifiedFlow(), 7, "uniform")
    assert oscillating(5.0, 1.0, 2, ts7)(ts7[:-1].float()).tolist() == [5, 5, 5, 1, 5, 1, 5]
    assert oscillating(5.0, 1.0, 0, ts7)(ts7[:-1].float()).tolist() == [5, 1, 5, 1, 5, 1, 5]


# t = 2/3 must give ve_sigma = 2, the interval's edge: float32 rounds 2/3 up, past the edge
@pytest.mark.usefixtures("float64")
def test_guidance_interval_guides_only_inside_and_saves_network_calls():
    schedule = RectifiedFlow()  # ve_sigma = t / (1 - t)
    _, _, denoiser_for, calls = conditional_gaussians(0.8, -0.3, 0.4)
    plain = denoiser_for(schedule)
    limited = limited_interval(lambda t: torch.full_like(t, 3.0), schedule, 0.5, 2.0)
    t = torch.tensor([0.2, 1 / 3 + 1e-6, 0.5, 2 / 3, 0.9])  # ve_sigma 0.25, 0.5+, 1, 2, 9
    assert limited(t).tolist() == [1.0, 3.0, 3.0, 3.0, 1.0]
    guided = classifier_free(plain, limited, null_condition(NULL))
    x, c = torch.randn(2, 2), {"labels": torch.zeros(2, dtype=torch.long)}
    calls.clear()
    torch.testing.assert_close(guided(x, torch.full((2,), 0.9), c), plain(x, torch.full((2,), 0.9), c))
    assert calls == [2, 2]  # outside: the conditional model alone (then the reference call)
    settings = GuidanceSettings(scale=3.0, interval=(0.5, 2.0))
    ts = timesteps(schedule, 10, "uniform")
    calls.clear()
    sample(apply_guidance(plain, settings, ts=ts, schedule=schedule, null=null_condition(NULL)), torch.randn(2, 2), ts,
           schedule, "euler", cond={"labels": torch.zeros(2, dtype=torch.long)})
    inside = int(((ts[:-1] / (1 - ts[:-1]) > 0.5) & (ts[:-1] / (1 - ts[:-1]) <= 2.0)).sum())
    assert sum(calls) == 2 * (10 + inside)  # 2 images; 2 evaluations per image at guided steps


def test_condition_dropout_rate_and_reproducibility():
    labels = torch.arange(20_000) % 10
    dropped = drop_conditions(labels, 0.1, 10, torch.Generator().manual_seed(0))
    fraction = (dropped == 10).float().mean().item()
    assert abs(fraction - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 20_000)
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])
    assert torch.equal(dropped, drop_conditions(labels, 0.1, 10, torch.Generator().manual_seed(0)))
    assert torch.equal(drop_conditions(labels, 0.0, 10, None), labels)


@pytest.mark.parametrize("kwargs, message", [
    ({"weight_schedule": "cosine"}, "unknown guidance schedule 'cosine'"),
    ({"threshold": "soft"}, "unknown threshold 'soft'"),
    ({"interval": (2.0, 1.0)}, "0 <= lo < hi"),
    ({"interval": (1.0,)}, "two ve_sigma values"),
    ({"rescale": 1.5}, "rescale phi must be in [0, 1]"),
    ({"percentile": 0.0}, "percentile must be in (0, 1]"),
    ({"warmup": -1}, "warmup >= 0"),
    ({"eps_scale": 0.0}, "eps_scale (epsilon scaling's lambda) must be > 0"),
    ({"eps_scale": float("nan")}, "must be > 0, got nan"),
])
def test_settings_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        GuidanceSettings(**kwargs)


def test_settings_from_a_sample_section_and_apply_errors():
    from diffusekit.config import ConfigError, resolve

    sample = resolve("mnist", overrides=["sample.guidance=4", "sample.guidance_interval=[0.3, 5]",
                                      "sample.threshold=dynamic", "sample.eps_scale=1"]).sample
    settings = GuidanceSettings.from_sample(sample, rescale=0.7)
    assert (settings.scale, settings.interval) == (4.0, (0.3, 5.0))
    assert (settings.threshold, settings.rescale) == ("dynamic", 0.7)
    assert settings.describe() == {"scale": 4.0, "rescale": 0.7, "interval": (0.3, 5.0), "threshold": "dynamic"}
    assert settings.unguided().scale == 1.0 and settings.unguided().threshold == "dynamic"
    with pytest.raises(ConfigError, match="sample: unknown guidance schedule"):
        resolve("mnist", overrides=["sample.guidance_schedule=wavy"])
    with pytest.raises(ConfigError, match="sample: eps_scale"):
        resolve("mnist", overrides=["sample.eps_scale=-1"])
    assert GuidanceSettings.from_sample(resolve("mnist", overrides=["sample.eps_scale=0.98"]).sample).eps_scale == 0.98
    ts = timesteps(RectifiedFlow(), 4, "uniform")
    with pytest.raises(ValueError, match="needs a conditional model"):
        apply_guidance(lambda x, t, cond=None: x, GuidanceSettings(scale=2.0), ts=ts, schedule=RectifiedFlow())
    with pytest.raises(ValueError, match="guiding model"):
        apply_guidance(lambda x, t, cond=None: x, GuidanceSettings(scale=2.0, autoguide="x"), ts=ts,
                       schedule=RectifiedFlow())
