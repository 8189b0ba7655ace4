import pytest
import torch

from diffusekit import schedules
from diffusekit.sampling import reference_solve
from diffusekit.targets import GaussianMixture

from .helpers import noise


@pytest.mark.usefixtures("float64")  # to 1e-8
def test_reference_is_exact_for_a_gaussian():
    """For N(mu, diag(s^2)) the PF-ODE keeps (x_hat - mu) / sqrt(s^2 + ve_sigma^2) constant, so from pure
    noise it ends at mu + s * noise, and from ve_sigma_0 at mu + s (x_hat_0 - mu) / sqrt(s^2 + ve_sigma_0^2)."""
    mu, s = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[0.05, 0.5, 1.5]])
    gmm = GaussianMixture(mu, s)
    n = noise(16, 3)
    for name in ("rectified_flow", "cosine", "linear_vp"):
        schedule = schedules.get(name, zero_terminal_snr=name == "linear_vp")
        torch.testing.assert_close(reference_solve(gmm.denoiser(schedule), n, schedule, 1.0, ve_sigma_end=1e-6),
                                   mu + s * n, rtol=0, atol=1e-8)
    edm = schedules.get("edm")
    x_hat0 = 80.0 * n
    expected = mu + s * (x_hat0 - mu) / torch.sqrt(s**2 + 80.0**2)
    torch.testing.assert_close(reference_solve(gmm.denoiser(edm), n, edm, 1.0, ve_sigma_end=1e-6), expected,
                               rtol=0, atol=1e-8)
