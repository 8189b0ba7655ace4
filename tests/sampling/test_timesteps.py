import pytest
import torch

from diffusekit import schedules
from diffusekit.sampling import timesteps

SCHEDULES = [schedules.get(n) for n in ("rectified_flow", "cosine", "linear_vp", "edm")] + [
    schedules.get("linear_vp", discrete=True, zero_terminal_snr=True)]


@pytest.mark.parametrize("spacing", ["karras", "logsnr", "uniform", "trailing"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_grid_shape(spacing, schedule):
    ts = timesteps(schedule, 10, spacing)
    assert ts.shape == (11,) and ts.dtype == torch.float64
    assert float(ts[-1]) == 0.0 and bool((ts[1:] < ts[:-1]).all()) and float(ts[0]) <= 1.0


def test_karras_is_edm_eq_5():
    schedule = schedules.get("edm")
    n, smin, smax, rho = 18, 0.002, 80.0, 7.0
    i = torch.arange(n, dtype=torch.float64)
    expected = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    ts = timesteps(schedule, n, "karras")
    torch.testing.assert_close(schedule(ts[:-1]).ve_sigma, expected, rtol=1e-12, atol=0)
    # on a VP schedule the same noise levels are reached
    vp = schedules.get("cosine")
    torch.testing.assert_close(vp(timesteps(vp, n, "karras")[:-1]).ve_sigma, expected, rtol=1e-9, atol=0)


def test_logsnr_spacing_is_uniform_in_logsnr():
    schedule = schedules.get("linear_vp")
    ts = timesteps(schedule, 12, "logsnr", sigma_min=0.01, sigma_max=50.0)
    lam = schedule(ts[:-1]).logsnr
    torch.testing.assert_close(lam[1:] - lam[:-1], torch.full((11,), float(lam[1] - lam[0]), dtype=torch.float64),
                               rtol=1e-8, atol=0)


def test_trailing_starts_at_one_on_integer_timesteps():
    schedule = schedules.get("linear_vp", discrete=True)
    ts = timesteps(schedule, 7, "trailing")
    assert float(ts[0]) == 1.0
    torch.testing.assert_close(ts * 1000, torch.round(ts * 1000))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown spacing 'linear'"):
        timesteps(schedules.get("edm"), 10, "linear")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        timesteps(schedules.get("edm"), 0)
    with pytest.raises(TypeError, match="bad options for spacing 'karras'"):
        timesteps(schedules.get("edm"), 10, "karras", sigma=3)
    with pytest.raises(ValueError, match="not strictly decreasing"):
        timesteps(schedules.get("edm"), 10, "karras", sigma_min=100.0, sigma_max=80.0)
