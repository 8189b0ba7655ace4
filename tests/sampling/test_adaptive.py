import math

import pytest
import torch

from diffusekit import schedules
from diffusekit.sampling import nfe, reference_solve, sample
from diffusekit.sampling.adaptive import METHODS, integrate
from diffusekit.targets import GaussianMixture

from .helpers import fitted_order, noise

T_END = 2.0


def rhs(t, y):
    """y1' = -2 t y1, y2' = cos t: y1 = y1(0) exp(-t^2), y2 = y2(0) + sin t."""
    return torch.stack([-2 * t * y[:, 0], math.cos(t) * torch.ones_like(y[:, 1])], 1)


def exact(y0, t):
    return torch.stack([y0[:, 0] * math.exp(-t * t), y0[:, 1] + math.sin(t)], 1)


Y0 = torch.tensor([[1.0, 2.0], [-0.5, 0.0]], dtype=torch.float64)


@pytest.mark.parametrize("method", list(METHODS))
def test_tight_tolerance_meets_the_exact_solution_and_error_follows_the_tolerance(method):
    errors = []
    for tol in (1e-5, 1e-7, 1e-9, 1e-11):
        solution = integrate(rhs, Y0, 0.0, T_END, rtol=tol, atol=tol, method=method)
        errors.append(float(((solution.state - exact(Y0, T_END)) / exact(Y0, T_END)).abs().max()))
        # FSAL: the first stage and the starting-step probe, then (stages - 1) per attempted step
        stages = len(METHODS[method].c)
        assert solution.nfe == 2 + (stages - 1) * (solution.accepted + solution.rejected)
    assert errors[-1] < 1e-8
    slope = fitted_order([1e5, 1e7, 1e9, 1e11], errors)  # log error against log tolerance
    assert 0.8 < slope < 1.25, (errors, slope)


@pytest.mark.parametrize("method, order", [("bs32", 3), ("dp54", 5)])
def test_order_of_convergence_with_the_step_fixed(method, order):
    """With tolerances so loose that every step is accepted, max_step fixes the step: the global error falls as
    h^order (Bogacki-Shampine: 3, Dormand-Prince: 5)."""
    steps, errors = [6, 12, 24], []
    for n in steps:
        solution = integrate(rhs, Y0, 0.0, T_END, rtol=1e6, atol=1e6, method=method, max_step=T_END / n)
        assert solution.rejected == 0
        errors.append(float((solution.state - exact(Y0, T_END)).abs().max()))
    assert abs(fitted_order(steps, errors) - order) < 0.4, errors


def test_backwards_and_tuple_states():
    """Integrating down from T returns to y(0); a tuple state keeps its structure, and its error norm can be
    limited to the first component."""
    y_end = exact(Y0, T_END)
    back = integrate(rhs, y_end, T_END, 0.0, rtol=1e-10, atol=1e-14, method="dp54")
    torch.testing.assert_close(back.state, Y0, rtol=0, atol=1e-8)
    pair = integrate(lambda t, s: (rhs(t, s[0]), -2 * t * s[1]), (Y0, Y0[:, 0].clone()), 0.0, T_END, rtol=1e-9,
                     atol=1e-9, method="dp54")
    torch.testing.assert_close(pair.state[1], Y0[:, 0] * math.exp(-T_END**2), rtol=1e-6, atol=0)
    only_first = integrate(lambda t, s: (rhs(t, s[0]), -2 * t * s[1]), (Y0, Y0[:, 0].clone()), 0.0, T_END,
                           rtol=1e-9, atol=1e-9, method="dp54", norm_components=1)
    assert isinstance(only_first.state, tuple) and only_first.nfe <= pair.nfe


@pytest.mark.parametrize("kwargs, message", [({"rtol": 0.0}, "rtol must be"), ({"atol": -1e-3}, "atol must be"),
                                             ({"method": "rk4"}, "unknown method 'rk4'")])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        integrate(rhs, Y0, 0.0, 1.0, **kwargs)
    assert "\n" not in str(info.value)
    schedule = schedules.get("rectified_flow")
    with pytest.raises(ValueError, match=message):
        sample(GaussianMixture.ring2d().denoiser(schedule), Y0, torch.tensor([1.0, 0.0]), schedule, "adaptive",
               **kwargs)


def test_sampler_follows_the_reference_pf_ode_and_reports_its_nfe():
    """The adaptive sampler at rtol = atol = 1e-5 against the high-accuracy PF-ODE solution on a 16-D mixture,
    on schedules that reach alpha = 0 (from t = 1) and one that does not; tighter tolerance, smaller error."""
    gmm = GaussianMixture.random(16, 8)
    start = noise(64, 16, seed=3)
    for name in ("rectified_flow", "linear_vp", "edm"):
        schedule = schedules.get(name)
        denoise = gmm.denoiser(schedule)
        ts = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)  # only the endpoints matter
        reference = reference_solve(denoise, start, schedule, 1.0, ve_sigma_end=1e-6)
        errors, counts = [], []
        for tol in (1e-3, 1e-5):
            calls = []
            x = sample(denoise, start, ts, schedule, "adaptive", rtol=tol, atol=tol,
                       callback=lambda info, calls=calls: calls.append(info["nfe"]))
            errors.append((x - reference).pow(2).mean(1).sqrt())
            counts.append(calls[-1])
            assert calls == list(range(1, len(calls) + 1))
        assert float(errors[1].median()) < 2e-5 and float(errors[1].max()) < 2e-4, name
        assert float(errors[1].median()) < float(errors[0].median()) / 20 and counts[1] > counts[0]
    with pytest.raises(ValueError, match="not known before it runs"):
        nfe("adaptive", 10)
