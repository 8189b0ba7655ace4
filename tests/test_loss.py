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

    def network_fn(x_t, t):
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
    out = loss(lambda x_t, t: torch.zeros_like(x_t), x0, noise=noise, t=t)
    snr = schedule(t).logsnr.exp()
    expected = (snr.clamp(max=5) / snr) * noise.pow(2).mean((1, 2, 3))
    torch.testing.assert_close(out.loss, expected)


def test_loss_passes_conditions_and_updates_importance_sampler():
    sampler = time_sampling.get("uniform", "importance", bins=4, warmup=1)
    loss = DiffusionLoss(SCHEDULES["rectified_flow"], parameterizations.get("velocity"), sampler,
                         weighting.get("unit"))
    seen = {}

    def network_fn(x_t, t, label):
        seen["label"] = label
        return torch.zeros_like(x_t)

    loss(network_fn, torch.randn(64, 2), cond={"label": 3}, generator=torch.Generator().manual_seed(0))
    assert seen["label"] == 3 and sampler.warmed_up


def test_loss_by_logsnr_bins():
    losses = torch.tensor([1.0, 2.0, 3.0, 10.0])
    logsnr = torch.tensor([-5.0, -4.0, 0.5, 9.0])
    means, counts = loss_by_logsnr_bins(losses, logsnr, torch.tensor([-6.0, 0.0, 4.0, 8.0]))
    assert counts.tolist() == [2, 1, 1]  # 9.0 is clipped into the last bin
    torch.testing.assert_close(means, torch.tensor([1.5, 3.0, 10.0]))
    means, counts = loss_by_logsnr_bins(losses[:1], logsnr[:1], torch.tensor([-6.0, 0.0, 4.0]))
    assert counts.tolist() == [1, 0] and torch.isnan(means[1])
