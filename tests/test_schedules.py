import math

import pytest
import torch

from diffusekit import schedules

CONTINUOUS = {
    "rectified_flow": schedules.get("rectified_flow"),
    "cosine": schedules.get("cosine"),
    "linear_vp": schedules.get("linear_vp"),
    "linear_vp_ztsnr": schedules.get("linear_vp", zero_terminal_snr=True),
    "edm": schedules.get("edm"),
    "rf_shift3": schedules.get("rectified_flow", shift=3.0),
    "cosine_shift0.5": schedules.get("cosine", shift=0.5),
    "edm_shift2": schedules.get("edm", shift=2.0),
    "linear_vp_ztsnr_shift2": schedules.get("linear_vp", zero_terminal_snr=True, shift=2.0),
}
DISCRETE = {
    "linear_vp_discrete": schedules.get("linear_vp", discrete=True),
    "linear_vp_discrete_ztsnr": schedules.get("linear_vp", discrete=True, zero_terminal_snr=True),
}
ALL = {**CONTINUOUS, **DISCRETE}


def _times(n=101, lo=0.003, hi=0.997):
    return torch.linspace(lo, hi, n, dtype=torch.float64)


@pytest.mark.parametrize("name", list(ALL))
def test_derivatives_match_autograd(name):
    schedule = ALL[name]
    t = _times()
    if name in DISCRETE:  # stay off the kinks of the piecewise-linear table
        t = (torch.floor(t * 1000) + 0.37) / 1000
    t.requires_grad_(True)
    at = schedule(t)
    (d_alpha,) = torch.autograd.grad((at.alpha + 0 * t).sum(), t, retain_graph=True)  # constant alpha has no graph
    (d_sigma,) = torch.autograd.grad((at.sigma + 0 * t).sum(), t)
    torch.testing.assert_close(at.d_alpha.detach(), d_alpha, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(at.d_sigma.detach(), d_sigma, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", list(ALL))
def test_t_from_logsnr_inverts_logsnr(name):
    schedule = ALL[name]
    t = _times()
    torch.testing.assert_close(schedule.t_from_logsnr(schedule.logsnr(t)), t, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", list(ALL))
# the inverse at logsnr = inf is exactly t = 0 in float64 (8e-7 for the cosine schedules in float32)
@pytest.mark.usefixtures("float64")
def test_logsnr_decreasing_and_endpoints(name):
    schedule = ALL[name]
    at = schedule(torch.linspace(0, 1, 1001, dtype=torch.float64))
    assert bool((at.logsnr[1:] < at.logsnr[:-1]).all())
    assert float(at.sigma[0]) == 0.0 and float(at.alpha[0]) == 1.0
    assert schedule.t_from_logsnr(torch.tensor(math.inf)) == 0.0


@pytest.mark.parametrize("name", ["cosine", "linear_vp_ztsnr", "linear_vp_discrete_ztsnr", "rectified_flow",
                                  "linear_vp_ztsnr_shift2", "rf_shift3"])
def test_zero_terminal_snr_is_exact(name):
    at = ALL[name](torch.tensor(1.0, dtype=torch.float64))
    assert float(at.alpha) == 0.0
    assert float(at.logsnr) == -math.inf
    assert math.isfinite(float(at.d_alpha)) and math.isfinite(float(at.d_sigma))


def test_ztsnr_matches_lin_et_al_algorithm_1():
    # Lin et al. 2023, Algorithm 1, written from the paper on the DDPM betas.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar_sqrt = torch.cumprod(1 - betas, 0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    expected = (abar_sqrt - last) * first / (first - last)
    schedule = DISCRETE["linear_vp_discrete_ztsnr"]
    torch.testing.assert_close(schedule.alphas, expected, rtol=1e-12, atol=0.0)
    n = torch.arange(1, 1001, dtype=torch.float64)
    torch.testing.assert_close(schedule(n / 1000).alpha, expected, rtol=1e-12, atol=1e-15)


def test_discrete_table_is_ddpm_alphas_cumprod():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    schedule = DISCRETE["linear_vp_discrete"]
    at = schedule(torch.arange(1, 1001, dtype=torch.float64) / 1000)
    torch.testing.assert_close(at.alpha**2, abar, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(at.sigma**2, 1 - abar, rtol=1e-10, atol=1e-15)


def test_continuous_linear_vp_is_song_vp_sde():
    # Song et al. 2021, eq. 33: log of the mean coefficient = -t^2 (b1 - b0)/4 - t b0/2, b0 = 0.1, b1 = 20
    t = _times()
    expected = torch.exp(-0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1)
    torch.testing.assert_close(CONTINUOUS["linear_vp"](t).alpha, expected, rtol=1e-13, atol=0.0)
    # and it tracks the discrete table closely at t = n / T
    n = torch.arange(1, 1001, dtype=torch.float64)
    diff = CONTINUOUS["linear_vp"](n / 1000).alpha - DISCRETE["linear_vp_discrete"](n / 1000).alpha
    assert float(diff.abs().max()) < 2e-3


def test_cosine_matches_iddpm_formula():
    t = _times()
    s = 0.008
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    torch.testing.assert_close(CONTINUOUS["cosine"](t).alpha ** 2, f / f0, rtol=1e-12, atol=1e-15)


def test_variance_preserving_schedules():
    for name in ("cosine", "linear_vp", "linear_vp_ztsnr", "cosine_shift0.5", "linear_vp_discrete"):
        at = ALL[name](_times())
        torch.testing.assert_close(at.alpha**2 + at.sigma**2, torch.ones_like(at.t), rtol=1e-12, atol=1e-12)


def test_edm_schedule():
    t = _times()
    at = CONTINUOUS["edm"](t)
    torch.testing.assert_close(at.ve_sigma, 80 * t)
    assert float(schedules.get("edm", sigma_max=10.0)(torch.tensor(1.0)).sigma) == 10.0


def test_shift_on_rectified_flow_is_sd3_formula():
    t = _times()
    s = 3.0
    expected = s * t / (1 + (s - 1) * t)  # Esser et al. 2024, eq. 23
    at = CONTINUOUS["rf_shift3"](t)
    torch.testing.assert_close(at.sigma, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(at.d_sigma, s / (1 + (s - 1) * t) ** 2, rtol=1e-10, atol=1e-12)
    # endpoints stay exact and the derivative is finite there
    ends = CONTINUOUS["rf_shift3"](torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends.d_sigma, torch.tensor([s, 1 / s], dtype=torch.float64))


def test_shift_moves_logsnr_by_constant():
    t = _times()
    for base, shifted, s in [("cosine", "cosine_shift0.5", 0.5), ("edm", "edm_shift2", 2.0)]:
        diff = ALL[shifted](t).logsnr - ALL[base](t).logsnr
        torch.testing.assert_close(diff, torch.full_like(t, -2 * math.log(s)), rtol=0, atol=1e-9)


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="unknown schedule 'vp'.*rectified_flow"):
        schedules.get("vp")
    with pytest.raises(ValueError, match="variance-preserving"):
        schedules.get("edm", zero_terminal_snr=True)
    with pytest.raises(TypeError, match="bad options for schedule 'cosine'"):
        schedules.get("cosine", beta=3)
    with pytest.raises(ValueError, match="shift must be > 0"):
        schedules.get("rectified_flow", shift=-1.0)


def test_python_numbers_are_evaluated_in_float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        at = schedules.get("cosine")(0.3)
    finally:
        torch.set_default_dtype(previous)
    assert at.alpha.dtype == torch.float64
    assert schedules.get("edm")(torch.tensor(0.5, dtype=torch.float32)).sigma.dtype == torch.float32
