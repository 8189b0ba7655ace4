import pytest
import torch

from diffusekit import parameterizations, schedules, weighting

T = torch.linspace(0.01, 0.99, 50)


def test_unit_is_plain_mse_and_snr_is_eps_mse():
    at = schedules.get("cosine")(T)
    ones = torch.ones_like(T)
    torch.testing.assert_close(weighting.get("unit")(at, parameterizations.get("v")), ones)
    # SNR-weighted x0 error == eps MSE: the F-space weight of 'snr' under eps is 1
    torch.testing.assert_close(weighting.get("snr")(at, parameterizations.get("eps")), ones)


def test_edm_weight_is_unit_for_edm_parameterization():
    for name in ("edm", "cosine", "rectified_flow"):
        at = schedules.get(name)(T)
        w = weighting.get("edm", sigma_data=0.5)(at, parameterizations.get("edm", sigma_data=0.5))
        torch.testing.assert_close(w, torch.ones_like(T))


def test_edm_lambda_formula():
    at = schedules.get("edm")(T)
    lam = weighting.get("edm").x0_weight(at)
    s = at.ve_sigma
    torch.testing.assert_close(lam, (s**2 + 0.25) / (s * 0.5) ** 2)  # Karras et al. 2022, Table 1


def test_min_snr_gamma():
    """Hang et al. 2023: on eps the weight is min(SNR, gamma) / SNR; on v, min(SNR, gamma) / (SNR + 1)."""
    at = schedules.get("linear_vp")(T)
    snr = (at.alpha / at.sigma) ** 2
    w = weighting.get("min_snr", gamma=5.0)
    torch.testing.assert_close(w(at, parameterizations.get("eps")), snr.clamp(max=5) / snr)
    torch.testing.assert_close(w(at, parameterizations.get("v")), snr.clamp(max=5) / (snr + 1))


def test_bad_names():
    with pytest.raises(ValueError, match="unknown loss weighting 'p2'"):
        weighting.get("p2")


def test_elbo_weight_is_minus_half_dlogsnr_on_eps():
    """VDM (Kingma et al. 2021, eq. 17): on the eps error the weight is -lambda'/2. Rectified flow:
    lambda = 2 log((1 - t) / t), so -lambda'/2 = 1 / (t (1 - t))."""
    t = T.to(torch.float64)
    at = schedules.get("rectified_flow")(t)
    torch.testing.assert_close(weighting.get("elbo")(at, parameterizations.get("eps")), 1 / (t * (1 - t)))
    # x0 space: SNR * 1 / (t (1 - t)) = (1 - t) / t^3
    torch.testing.assert_close(weighting.get("elbo").x0_weight(at), (1 - t) / t**3)
    # EDM's VE path: alpha = 1, sigma = 80 t, lambda = -2 log(80 t), -lambda'/2 SNR = 1 / (80^2 t^3)
    torch.testing.assert_close(weighting.get("elbo").x0_weight(schedules.get("edm")(t)), 1 / (80.0**2 * t**3))


def test_elbo_weight_is_zero_at_zero_terminal_snr():
    """Where alpha = 0 the SNR vanishes and so does the weight: exactly 0, not NaN."""
    for name in ("rectified_flow", "cosine"):
        at = schedules.get(name)(torch.tensor([1.0], dtype=torch.float64))
        assert float(weighting.get("elbo").x0_weight(at)) == 0.0
    # the VP-SDE: lambda' = -beta(t) / sigma^2 (Song et al. 2021), so -lambda'/2 SNR = beta alpha^2 / (2 sigma^4)
    t = T.to(torch.float64)
    at = schedules.get("linear_vp")(t)
    beta = 0.1 + (20.0 - 0.1) * t
    torch.testing.assert_close(weighting.get("elbo").x0_weight(at), beta * at.alpha**2 / (2 * at.sigma**4))
