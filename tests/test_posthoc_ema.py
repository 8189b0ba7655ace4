"""The post-hoc EMA maths against closed forms, EDM2's published pairs and numerical integration."""

import math

import numpy as np
import pytest

from diffusekit.posthoc_ema import (
    SIGMA_REL_MAX,
    check_sigma_rel,
    discrete_sigma_rel,
    ema_sigma_rel,
    exponential_beta,
    gamma_of_sigma_rel,
    half_life_of_sigma_rel,
    mix_error,
    power_beta,
    profile_inner_products,
    profile_values,
    sigma_rel_label,
    sigma_rel_of_gamma,
    solve_mix,
)


def test_sigma_rel_of_gamma_closed_form_and_edm2_pairs():
    assert sigma_rel_of_gamma(0) == pytest.approx(1 / math.sqrt(12))  # the uniform average
    assert sigma_rel_of_gamma(1) == pytest.approx(math.sqrt(2) / (3 * 2))  # sqrt(2) / (3 sqrt(4))
    # EDM2, section 3: sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> 6.94
    assert gamma_of_sigma_rel(0.05) == pytest.approx(16.97, abs=0.005)
    assert gamma_of_sigma_rel(0.10) == pytest.approx(6.94, abs=0.005)
    assert gamma_of_sigma_rel(SIGMA_REL_MAX) == 0.0


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0, 6.94, 16.97, 100.0, 5000.0])
def test_both_directions_round_trip(gamma):
    assert gamma_of_sigma_rel(sigma_rel_of_gamma(gamma)) == pytest.approx(gamma, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("sigma_rel", [0.001, 0.02, 0.05, 0.13, 0.25, 0.2886])
def test_the_inverse_solves_the_defining_equation(sigma_rel):
    gamma = gamma_of_sigma_rel(sigma_rel)
    assert gamma >= 0
    assert math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3)) == pytest.approx(sigma_rel, rel=1e-10)


@pytest.mark.parametrize("bad", [0, -0.1, 0.2887, 0.5, float("nan"), True, "0.1"])
def test_lengths_outside_the_range_are_one_line_errors(bad):
    with pytest.raises(ValueError, match=r"--sigma-rel: .* must lie in \(0, 1/sqrt\(12\)") as error:
        check_sigma_rel(bad, "--sigma-rel")
    assert "\n" not in str(error.value)


def test_labels_have_no_dots():
    assert sigma_rel_label(0.05) == "0p050"
    assert sigma_rel_label(0.1) == "0p100"
    assert sigma_rel_label(0.0125) == "0p0125"


def test_power_beta_unrolls_to_the_power_profile():
    """beta_1 = 0, and the weight of step s after T steps is (s^(g+1) - (s-1)^(g+1)) / T^(g+1)."""
    gamma, steps = 2.5, 12
    assert power_beta(gamma, 1) == 0.0
    weights = np.zeros(steps)
    for t in range(1, steps + 1):
        weights *= power_beta(gamma, t)
        weights[t - 1] += 1 - power_beta(gamma, t)
    s = np.arange(1, steps + 1)
    np.testing.assert_allclose(weights, (s ** (gamma + 1) - (s - 1) ** (gamma + 1)) / steps ** (gamma + 1),
                               rtol=1e-12)


def test_exponential_beta_halves_in_a_half_life_and_ramps_up():
    assert exponential_beta(1000, 10**9, 1000, None) == pytest.approx(0.5)
    assert exponential_beta(1e6, 1000, 100, 0.05) == pytest.approx(0.5 ** (100 / 50))


def test_inner_products_by_hand_and_by_quadrature():
    # uniform on [0, 1] against uniform on [0, 2]: 1 * 1/2 over [0, 1]
    assert profile_inner_products([0], [1], [0], [2])[0, 0] == pytest.approx(0.5)
    # p = 2 tau on [0, 1] with itself: integral of 4 tau^2
    assert profile_inner_products([1], [1], [1], [1])[0, 0] == pytest.approx(4 / 3)
    gammas, times = [3.0, 10.0, 0.5], [50.0, 120.0, 80.0]
    tau = np.linspace(0, 130, 1_300_001)
    p = profile_values(gammas, times, tau)
    numeric = np.trapezoid(p[:, None] * p[None], tau, axis=-1)
    exact = profile_inner_products(gammas, times, gammas, times)
    np.testing.assert_allclose(exact, numeric, rtol=1e-4)
    np.testing.assert_allclose(exact, exact.T)
    assert np.trapezoid(p, tau, axis=-1) == pytest.approx([1, 1, 1], rel=1e-4)  # each profile integrates to 1


def _grid(sigma_rels=(0.05, 0.10), every=20, last=400):
    times = [t for t in range(every, last + 1, every) for _ in sigma_rels]
    gammas = [gamma_of_sigma_rel(s) for _ in range(every, last + 1, every) for s in sigma_rels]
    return gammas, times


def test_a_tracked_length_at_the_last_snapshot_is_that_snapshot():
    gammas, times = _grid()
    x = solve_mix(gammas, times, gamma_of_sigma_rel(0.10), 400)
    expected = np.zeros(len(x))
    expected[-1] = 1.0
    np.testing.assert_allclose(x, expected, atol=1e-9)
    assert mix_error(gammas, times, x, gamma_of_sigma_rel(0.10), 400) < 1e-6


def test_an_in_between_length_is_matched_in_l2():
    gammas, times = _grid()
    target = gamma_of_sigma_rel(0.07)
    x = solve_mix(gammas, times, target, 400)
    error = mix_error(gammas, times, x, target, 400)
    tau = np.linspace(0, 400, 400_001)
    mixed = x @ profile_values(gammas, times, tau)
    wanted = profile_values([target], [400], tau)[0]
    numeric = math.sqrt(np.trapezoid((mixed - wanted) ** 2, tau) / np.trapezoid(wanted ** 2, tau))
    assert numeric == pytest.approx(error, abs=1e-3)
    assert error < 0.02
    # one tracked average alone is far worse than the mix
    alone = np.zeros(len(x))
    alone[-1] = 1.0
    assert mix_error(gammas, times, alone, target, 400) > 10 * error


def test_discrete_profiles_match_the_closed_forms():
    # a power EMA's step weights spread evenly over each step: sigma_rel of the continuous profile, up to O(1/T^2)
    gamma, steps = 6.94, 1000
    assert discrete_sigma_rel([power_beta(gamma, t) for t in range(1, steps + 1)]) == pytest.approx(
        sigma_rel_of_gamma(gamma), rel=1e-5)
    # a constant beta, far from the start: geometric weights (variance beta/(1-beta)^2) plus 1/12 within a step
    beta, steps = 0.99, 20_000
    assert discrete_sigma_rel([beta] * steps) == pytest.approx(
        math.sqrt(beta / (1 - beta) ** 2 + 1 / 12) / steps, rel=1e-9)


def test_the_equivalent_half_life_gives_the_same_length():
    total, batch = 256_000, 128
    for sigma_rel in (0.03, 0.05, 0.1):
        half_life = half_life_of_sigma_rel(sigma_rel, total)
        assert half_life == pytest.approx(sigma_rel * total * math.log(2))
        assert ema_sigma_rel(half_life, total, batch, rampup=None) == pytest.approx(sigma_rel, rel=0.01)
    # EDM's ramp-up shortens an EMA whose half-life exceeds rampup * images: a long one ends shorter than asked
    long = half_life_of_sigma_rel(0.2, total)
    assert ema_sigma_rel(long, total, batch, rampup=0.05) < ema_sigma_rel(long, total, batch, rampup=None)
