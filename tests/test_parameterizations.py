import pytest
import torch

from diffusekit import parameterizations, schedules

# inverses and closed forms checked to 1e-10, beyond float32's 1e-7
pytestmark = pytest.mark.usefixtures("float64")

SCHEDULES = {
    "rectified_flow": schedules.get("rectified_flow"),
    "cosine": schedules.get("cosine"),
    "linear_vp": schedules.get("linear_vp"),
    "linear_vp_discrete": schedules.get("linear_vp", discrete=True),
    "linear_vp_ztsnr": schedules.get("linear_vp", zero_terminal_snr=True),
    "edm": schedules.get("edm"),
    "rf_shift3": schedules.get("rectified_flow", shift=3.0),
}
PARAMS = {name: parameterizations.get(name) for name in parameterizations.NAMES}


def _batch(n=257, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g)
    noise = torch.randn(n, d, generator=g)
    t = torch.linspace(1e-3, 1 - 1e-3, n)
    return x0, noise, t


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("param_name", list(PARAMS))
def test_to_x0_inverts_training_target(schedule_name, param_name):
    schedule, param = SCHEDULES[schedule_name], PARAMS[param_name]
    x0, noise, t = _batch()
    at = schedule(t)
    x_t = at.alpha[:, None] * x0 + at.sigma[:, None] * noise
    target = param.training_target(x0, noise, at)
    torch.testing.assert_close(param.to_x0(target, x_t, at), x0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("param_name", ["x0", "v", "velocity", "edm"])
@pytest.mark.parametrize("schedule_name", ["rectified_flow", "linear_vp_ztsnr"])
def test_finite_at_zero_snr(schedule_name, param_name):
    """At t = 1 with alpha = 0 these parameterizations still express x0 (Lin et al. 2023)."""
    schedule, param = SCHEDULES[schedule_name], PARAMS[param_name]
    x0, noise, _ = _batch(8)
    at = schedule(torch.ones(8))
    x_t = at.sigma[:, None] * noise
    target = param.training_target(x0, noise, at)
    assert bool(torch.isfinite(target).all())
    torch.testing.assert_close(param.to_x0(target, x_t, at), x0, rtol=0, atol=1e-10)


def test_targets_are_the_named_quantities():
    x0, noise, t = _batch()
    for schedule in SCHEDULES.values():
        at = schedule(t)
        a, s, da, ds = (v[:, None] for v in (at.alpha, at.sigma, at.d_alpha, at.d_sigma))
        expected = {
            "x0": x0,
            "eps": noise,
            "v": a * noise - s * x0,  # Salimans & Ho 2022
            "velocity": da * x0 + ds * noise,  # d x_t / dt
            "score": -noise / s,
        }
        for name, value in expected.items():
            torch.testing.assert_close(PARAMS[name].training_target(x0, noise, at), value, rtol=1e-9, atol=1e-9)


def test_velocity_on_rectified_flow_is_noise_minus_data():
    """Seed 000's u = x0 - x1 (x1 = noise) is -velocity here; see the module docstring."""
    x0, noise, t = _batch()
    at = SCHEDULES["rectified_flow"](t)
    torch.testing.assert_close(PARAMS["velocity"].training_target(x0, noise, at), noise - x0)


def test_edm_matches_karras_table_1_on_ve():
    at = SCHEDULES["edm"](torch.linspace(1e-3, 1, 50))
    sd = 0.5
    sig = at.ve_sigma
    c_skip, c_out = PARAMS["edm"].coefficients(at)
    torch.testing.assert_close(c_skip, sd**2 / (sig**2 + sd**2))
    torch.testing.assert_close(c_out, sig * sd / (sig**2 + sd**2).sqrt())


def test_edm_on_vp_is_edm_applied_to_x_over_alpha():
    at = SCHEDULES["cosine"](torch.linspace(1e-3, 0.99, 50))
    sd = 0.7
    param = parameterizations.get("edm", sigma_data=sd)
    sig = at.ve_sigma
    c_skip, c_out = param.coefficients(at)
    # D(x_t / alpha) = c_skip_edm * x_t / alpha + c_out_edm * F
    torch.testing.assert_close(c_skip, sd**2 / (sig**2 + sd**2) / at.alpha)
    torch.testing.assert_close(c_out, sig * sd / (sig**2 + sd**2).sqrt())


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown parameterization 'epsilon'.*eps"):
        parameterizations.get("epsilon")
    with pytest.raises(ValueError, match="sigma_data"):
        parameterizations.get("edm", sigma_data=0)
