import pytest
import torch

from diffusekit import parameterizations, schedules, time_sampling, weighting
from diffusekit.loss import DiffusionLoss, loss_by_logsnr_bins
from diffusekit.targets import GaussianMixture

SCHEDULES = {"rectified_flow": schedules.get("rectified_flow"), "cosine": schedules.get("cosine"),
             "edm": schedules.get("edm")}


def exact_network(gmm, schedule, param, perturb=None):
    """The F that reproduces the exact denoiser, F = (x0_hat - c_skip x_t) / c_out, optionally with
    x0_hat perturbed."""

    def network_fn(x_t, t, cond):
        at = schedule(t)
        c_skip, c_out = param.coefficients(at)
        x0_hat = gmm.x0_hat(x_t, at.alpha, at.sigma)
        if perturb is not None:
            x0_hat = perturb(x0_hat, x_t)
        return (x0_hat - c_skip[:, None] * x_t) / c_out[:, None]

    return network_fn


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("param_name", parameterizations.NAMES)
def test_exact_denoiser_minimises_every_objective(schedule_name, param_name):
    schedule, param = SCHEDULES[schedule_name], parameterizations.get(param_name)
    gmm = GaussianMixture.ring2d()
    loss = DiffusionLoss(schedule, param, time_sampling.get("uniform", t_min=0.02, t_max=0.98),
                         weighting.get("unit"))
    g = torch.Generator().manual_seed(0)
    x0 = gmm.sample(20_000, g)
    noise = torch.randn(x0.shape, generator=g)
    t = loss.time_sampler(len(x0), schedule, generator=g).t
    at_exact = loss(exact_network(gmm, schedule, param), x0, noise=noise, t=t).loss.mean()
    perturbations = [
        lambda x0_hat, x: x0_hat + 0.1,
        lambda x0_hat, x: x0_hat * 1.1,
        lambda x0_hat, x: x0_hat + 0.1 * torch.tanh(x),
    ]
    for perturb in perturbations:
        # common random numbers: same x0, noise and t, so the gap is the excess risk
        perturbed = loss(exact_network(gmm, schedule, param, perturb), x0, noise=noise, t=t).loss.mean()
        assert float(perturbed) > float(at_exact)


def test_loss_is_weighted_mse_to_the_target():
    schedule, param = SCHEDULES["cosine"], parameterizations.get("eps")
    loss = DiffusionLoss(schedule, param, time_sampling.get(), weighting.get("min_snr"))
    x0 = torch.randn(16, 3, 4, 4)
    noise, t = torch.randn_like(x0), torch.rand(16) * 0.9 + 0.05
    out = loss(lambda x_t, t, cond: torch.zeros_like(x_t), x0, noise=noise, t=t)
    snr = schedule(t).logsnr.exp()
    expected = (snr.clamp(max=5) / snr) * noise.pow(2).mean((1, 2, 3))
    torch.testing.assert_close(out.loss, expected)


def test_loss_passes_conditions_and_updates_importance_sampler():
    sampler = time_sampling.get("uniform", "importance", bins=4, warmup=1)
    loss = DiffusionLoss(SCHEDULES["rectified_flow"], parameterizations.get("velocity"), sampler,
                         weighting.get("unit"))
    seen = {}

    def network_fn(x_t, t, cond):
        seen["label"] = cond["label"]
        return torch.zeros_like(x_t)

    loss(network_fn, torch.randn(64, 2), cond={"label": torch.tensor(3)}, generator=torch.Generator().manual_seed(0))
    assert seen["label"] == 3 and sampler.warmed_up


def test_loss_by_logsnr_bins():
    losses = torch.tensor([1.0, 2.0, 3.0, 10.0])
    logsnr = torch.tensor([-5.0, -4.0, 0.5, 9.0])
    means, counts = loss_by_logsnr_bins(losses, logsnr, torch.tensor([-6.0, 0.0, 4.0, 8.0]))
    assert counts.tolist() == [2, 1, 1]  # 9.0 is clipped into the last bin
    torch.testing.assert_close(means, torch.tensor([1.5, 3.0, 10.0], dtype=torch.float64))  # averaged in float64
    means, counts = loss_by_logsnr_bins(losses[:1], logsnr[:1], torch.tensor([-6.0, 0.0, 4.0]))
    assert counts.tolist() == [1, 0] and torch.isnan(means[1])


def test_input_perturbation_trains_toward_the_denoiser_of_the_inflated_noise_level():
    """DDPM-IP (Ning et al. 2023): the input is alpha x0 + sigma (noise + gamma xi), the target the clean one.
    For x0 ~ N(0, s^2) the least-squares linear x0-predictor of that input is exactly the posterior mean at noise
    sigma sqrt(1 + gamma^2): a = alpha s^2 / (alpha^2 s^2 + sigma^2 (1 + gamma^2))."""
    schedule, param = SCHEDULES["rectified_flow"], parameterizations.get("x0")
    gamma, s, n = 0.5, 0.5, 400_000
    loss = DiffusionLoss(schedule, param, time_sampling.get(), weighting.get("unit"), input_perturbation=gamma)
    g = torch.Generator().manual_seed(0)
    x0 = s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    xi = loss.draw_perturbation((n, 1), generator=g, dtype=torch.float64)
    t = torch.full((n,), 0.4, dtype=torch.float64)
    seen = {}

    def network_fn(x_t, t, cond):
        seen["x"] = x_t
        return torch.zeros_like(x_t)

    loss(network_fn, x0, noise=noise, t=t, perturbation=xi)
    y = seen["x"]
    alpha, sigma = 0.6, 0.4  # rectified flow at t = 0.4
    torch.testing.assert_close(y, alpha * x0 + sigma * (noise + gamma * xi))
    fitted = float((x0 * y).sum() / (y * y).sum())
    expected = alpha * s**2 / (alpha**2 * s**2 + sigma**2 * (1 + gamma**2))
    plain = alpha * s**2 / (alpha**2 * s**2 + sigma**2)
    assert abs(fitted - expected) < 0.005 and abs(expected - plain) > 0.05


def test_input_perturbation_off_changes_nothing():
    schedule, param = SCHEDULES["cosine"], parameterizations.get("eps")
    plain = DiffusionLoss(schedule, param, time_sampling.get(), weighting.get("unit"))
    g = torch.Generator().manual_seed(1)
    assert plain.draw_perturbation((4, 2), generator=g) is None
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=torch.Generator().manual_seed(1)))
    x0, noise, t = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8) * 0.9 + 0.05
    fn = lambda x_t, t, cond: x_t * 0.5  # noqa: E731
    a = plain(fn, x0, noise=noise, t=t).loss
    b = plain(fn, x0, noise=noise, t=t, perturbation=torch.randn(8, 2)).loss  # gamma 0: xi is ignored
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="input_perturbation"):
        DiffusionLoss(schedule, param, time_sampling.get(), weighting.get("unit"), input_perturbation=1.5)


def test_mask_averages_the_squared_error_over_the_counted_frames_only():
    schedule, param = SCHEDULES["cosine"], parameterizations.get("eps")
    loss = DiffusionLoss(schedule, param, time_sampling.get(), weighting.get("unit"))
    x0 = torch.randn(3, 1, 4, 2, 2)  # [B, C, F, H, W] clips
    noise, t = torch.randn_like(x0), torch.tensor([0.2, 0.5, 0.8])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)[:, None, :, None, None]
    out = loss(lambda x_t, t, cond: torch.zeros_like(x_t), x0, noise=noise, t=t, mask=mask)
    # the eps target is the noise and the output is 0: the loss is the mean of noise^2 over the counted frames
    expected = torch.stack([noise[0].pow(2).mean(), noise[1, :, 2:].pow(2).mean(), torch.tensor(0.0)])
    torch.testing.assert_close(out.loss, expected)
