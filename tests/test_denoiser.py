import warnings

import pytest
import torch
from torch import nn

from diffusekit import parameterizations, schedules
from diffusekit.denoiser import Denoiser
from diffusekit.targets import GaussianMixture


class ExactNetwork(nn.Module):
    """A 'network' that returns the F reproducing the exact GMM denoiser, undoing c_in and c_noise."""

    def __init__(self, gmm, schedule, param, sigma_data):
        super().__init__()
        self.gmm, self.schedule, self.param, self.sigma_data = gmm, schedule, param, sigma_data

    def forward(self, x_scaled, noise_code, cond=None):
        logsnr = -8 * noise_code.to(torch.float64)
        t = self.schedule.t_from_logsnr(logsnr)
        at = self.schedule(t)
        x_t = x_scaled * torch.sqrt(at.sigma**2 + self.sigma_data**2 * at.alpha**2)[:, None]
        c_skip, c_out = self.param.coefficients(at)
        return (self.gmm.x0_hat(x_t, at.alpha, at.sigma) - c_skip[:, None] * x_t) / c_out[:, None]


@pytest.mark.filterwarnings("ignore:.*zero SNR")
@pytest.mark.parametrize("param_name", parameterizations.NAMES)
@pytest.mark.parametrize("schedule_name", ["cosine", "rectified_flow", "edm"])
@pytest.mark.usefixtures("float64")  # exact to 1e-7
def test_denoiser_is_exact_with_the_exact_network(param_name, schedule_name):
    gmm = GaussianMixture.ring2d()
    schedule, param = schedules.get(schedule_name), parameterizations.get(param_name)
    denoiser = Denoiser(ExactNetwork(gmm, schedule, param, 0.5), schedule, param)
    t = torch.linspace(0.02, 0.98, 64)
    at = schedule(t)
    x_t = at.alpha[:, None] * gmm.sample(64, torch.Generator().manual_seed(0)) + at.sigma[:, None] * torch.randn(64, 2)
    torch.testing.assert_close(denoiser(x_t, t), gmm.x0_hat(x_t, at.alpha, at.sigma), rtol=1e-7, atol=1e-7)


def test_input_scaling_gives_unit_variance():
    schedule = schedules.get("linear_vp")
    seen = {}

    def network(x, noise_code, cond=None):
        seen["x"] = x
        return torch.zeros_like(x)

    class Wrap(nn.Module):
        def forward(self, x, noise_code, cond=None):
            return network(x, noise_code, cond)

    denoiser = Denoiser(Wrap(), schedule, parameterizations.get("eps"), sigma_data=0.5)
    for t in (0.01, 0.3, 0.9):
        at = schedule(t)
        x0 = 0.5 * torch.randn(20_000, 4)
        x_t = at.alpha * x0 + at.sigma * torch.randn_like(x0)
        denoiser.network_output(x_t, torch.full((20_000,), t))
        assert abs(float(seen["x"].std()) - 1.0) < 0.02


def test_noise_codes():
    edm = schedules.get("edm")
    codes = {}

    class Record(nn.Module):
        def forward(self, x, noise_code, cond=None):
            codes["c"] = noise_code
            return x

    t = torch.tensor([0.01, 0.5, 1.0])
    Denoiser(Record(), edm, parameterizations.get("edm")).network_output(torch.zeros(3, 2), t)
    torch.testing.assert_close(codes["c"], torch.log(80 * t) / 4)  # EDM's c_noise = ln(sigma) / 4
    rf = schedules.get("rectified_flow")
    ends = torch.tensor([0.0, 1.0])
    Denoiser(Record(), rf, parameterizations.get("velocity")).network_output(torch.zeros(2, 2), ends)
    assert bool(torch.isfinite(codes["c"]).all())  # clamped at both endpoints
    discrete = schedules.get("linear_vp", discrete=True)
    Denoiser(Record(), discrete, parameterizations.get("eps"), noise_conditioning="timestep").network_output(
        torch.zeros(2, 2), torch.tensor([0.001, 1.0]))
    torch.testing.assert_close(codes["c"], torch.tensor([0.0, 999.0]))
    Denoiser(Record(), edm, parameterizations.get("edm")).network_output(torch.zeros(3, 2, dtype=torch.bfloat16), t)
    assert codes["c"].dtype == torch.float32


def test_bad_configuration():
    net, rf = nn.Identity(), schedules.get("rectified_flow")
    with pytest.raises(ValueError, match="unknown noise_conditioning"):
        Denoiser(net, rf, parameterizations.get("v"), noise_conditioning="sigma")
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        Denoiser(net, rf, parameterizations.get("v"), noise_conditioning="timestep")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Denoiser(net, rf, parameterizations.get("eps"))
    assert any("zero SNR" in str(w.message) for w in caught)
