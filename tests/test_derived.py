import pytest
import torch

from diffusekit import derived, schedules

# closed forms to torch's float64 tolerances; a central difference with h = 1e-6 needs float64
pytestmark = pytest.mark.usefixtures("float64")


def test_derived_quantities_from_true_x0():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g)
    t = torch.linspace(0.01, 0.99, 64)
    for name in ("rectified_flow", "cosine", "edm", "linear_vp"):
        at = schedules.get(name)(t)
        a, s, da, ds = (v[:, None] for v in (at.alpha, at.sigma, at.d_alpha, at.d_sigma))
        x_t = a * x0 + s * noise
        torch.testing.assert_close(derived.eps_from_x0(x0, x_t, at), noise)
        torch.testing.assert_close(derived.v_from_x0(x0, x_t, at), a * noise - s * x0)
        torch.testing.assert_close(derived.velocity_from_x0(x0, x_t, at), da * x0 + ds * noise)
        torch.testing.assert_close(derived.score_from_x0(x0, x_t, at), -noise / s)


def test_velocity_is_time_derivative_of_the_path():
    """d/dt (alpha(t) x0 + sigma(t) noise) by finite differences equals velocity_from_x0."""
    x0, noise = torch.randn(10, 2), torch.randn(10, 2)
    schedule = schedules.get("cosine", shift=2.0)
    t, h = torch.full((10,), 0.4), 1e-6
    path = lambda tt: schedule(tt).alpha[:, None] * x0 + schedule(tt).sigma[:, None] * noise  # noqa: E731
    fd = (path(t + h) - path(t - h)) / (2 * h)
    torch.testing.assert_close(derived.velocity_from_x0(x0, path(t), schedule(t)), fd, rtol=1e-7, atol=1e-7)
