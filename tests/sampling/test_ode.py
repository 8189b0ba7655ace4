import functools
import math

import pytest
import torch

from diffusekit import schedules
from diffusekit.sampling import reference_solve, sample, timesteps

from .helpers import fitted_order, noise, rms, smooth_gmm

EDM = schedules.get("edm")
RF = schedules.get("rectified_flow")


def _integrates_to_zero(sampler, options):
    """multistep in ve_sigma integrates its last step down to sigma = 0; the other samplers' last step from
    sigma_min is a denoising step."""
    return sampler == "multistep" and (options.get("variable", "sigma") == "sigma"
                                       or options.get("prediction", "data") != "data")


def _convergence(sampler, schedule, spacing, steps_list, **options):
    denoise = smooth_gmm().denoiser(schedule)
    n = noise(64, 3)
    errors = []
    to_zero = _integrates_to_zero(sampler, options)
    for steps in steps_list:
        ts = timesteps(schedule, steps, spacing)
        # a reference to sigma = 0 does not depend on the step count (every grid starts at the same time)
        reference = _reference(schedule, spacing, steps_list[0] if to_zero else steps, to_zero)
        errors.append(rms(sample(denoise, n, ts, schedule, sampler, **options), reference))
    return fitted_order(steps_list, errors), errors


@functools.cache  # the samplers of a case share their references (each a costly high-accuracy solve)
def _reference(schedule, spacing, steps, to_zero=False):
    ts = timesteps(schedule, steps, spacing)
    # the karras grid's last step jumps from sigma_min to 0 by one denoising step: end the reference
    # the same way, so that only the ODE integration error remains (unless the sampler integrates it)
    sigma_end = float(schedule(ts[-2]).ve_sigma) if spacing == "karras" and not to_zero else 1e-5
    denoise = smooth_gmm().denoiser(schedule)
    return reference_solve(denoise, noise(64, 3), schedule, float(ts[0]), ve_sigma_end=sigma_end)


CASES = [(sampler, options, expected, schedule, spacing)
         for sampler, options, expected in [("euler", {}, 1.0), ("heun", {}, 2.0)]
         for schedule, spacing in [(EDM, "karras"), (RF, "uniform")]]
# The multistep solvers' last step is a denoising step from the smallest noise level, O(sigma_min^2):
# on karras grids the reference ends the same way; a uniform-t grid would cap them at order 2.
CASES += [(sampler, options, expected, schedule, "karras")
          for sampler, options, expected in [("dpmpp_2m", {}, 2.0), ("multistep", {"order": 3}, 3.0),
                                             ("multistep", {"order": 3, "corrector": True}, 4.0)]
          for schedule in (EDM, RF)]
# multistep of order k is of order k, and k + 1 with the corrector (UniC), interpolating in ve_sigma (the
# default, with its last step integrated to sigma = 0) or in lambda
CASES += [("multistep", options, expected, EDM, "karras")
          for options, expected in [({"order": 1}, 1.0), ({"order": 2}, 2.0), ({"order": 1, "corrector": True}, 2.0),
                                    ({"order": 2, "corrector": True}, 3.0), ({"order": 4}, 4.0),
                                    ({"order": 3, "variable": "lambda"}, 3.0),
                                    ({"order": 3, "variable": "lambda", "corrector": True}, 4.0),
                                    ({"order": 3, "prediction": "noise"}, 3.0),
                                    ({"order": 3, "prediction": "switch", "corrector": True}, 4.0)]]
# Step counts in the asymptotic regime of every case: measured fitted orders 1.00 (Euler, multistep 1), 0.99
# (Euler, rectified flow), 2.03-2.16 (Heun, DPM-Solver++(2M), multistep 2, multistep 1 + corrector), 3.12-3.19
# (multistep 3, multistep 2 + corrector) and 4.14 (multistep 3 + corrector). From 16 steps on, orders 3 and 4
# read 3.7 and 4.6: still pre-asymptotic.
STEPS = [32, 48, 64, 96, 128]
# The band [p - 0.25, p + 0.25] stays clear of the midpoints p +- 0.5 to the neighbouring orders p - 1 and p + 1.
ORDER_TOLERANCE = 0.25


def _case_id(case):
    sampler, options, _, schedule, spacing = case
    variable = "-lambda" if options.get("variable") == "lambda" else ""
    variable += f"-{options['prediction']}" if "prediction" in options else ""
    return (f"{sampler}{options.get('order', '')}{'c' * bool(options.get('corrector'))}{variable}-{schedule!r}-"
            f"{spacing}")


# multistep in ve_sigma starts faster than its order (measured on karras, order 3: 3.6, 3.3, 3.1, 3.0 between
# successive doublings from 32 to 512 steps; order 4: 3.1, 3.6, 3.9, 4.1): fitted from 128 to 512 steps.
STEPS_SIGMA = [128, 256, 512]


@pytest.mark.parametrize("sampler,options,expected,schedule,spacing", CASES, ids=[_case_id(c) for c in CASES])
def test_convergence_order(sampler, options, expected, schedule, spacing):
    steps = STEPS_SIGMA if _integrates_to_zero(sampler, options) else STEPS
    order, errors = _convergence(sampler, schedule, spacing, steps, **options)
    assert abs(order - expected) < ORDER_TOLERANCE, (order, errors)


def test_multistep_order_4_beats_order_3():
    _, e3 = _convergence("multistep", EDM, "karras", [32, 64], order=3)
    _, e4 = _convergence("multistep", EDM, "karras", [32, 64], order=4)
    assert e4[-1] < e3[-1]


def linear_multistep(D, sigmas, x, order=4):
    """Adams-Bashforth on dx/dsigma = (x - D) / sigma in sigma, written from k-diffusion's ``sample_lms``
    (Karras et al. 2022, app. of k-diffusion): the step integrates the Lagrange polynomial through the last
    min(i + 1, order) derivatives over [sigma_i, sigma_{i+1}], each coefficient by scipy's adaptive quadrature."""
    from scipy import integrate  # lazy: only this reference uses scipy

    ds = []
    for i in range(len(sigmas) - 1):
        ds.insert(0, (x - D(x, sigmas[i])) / sigmas[i])
        ds = ds[:order]
        nodes = sigmas[i - len(ds) + 1:i + 1][::-1]  # sigma_i, sigma_{i-1}, ...

        def basis(tau, j, nodes=nodes):
            return math.prod((tau - nodes[k]) / (nodes[j] - nodes[k]) for k in range(len(nodes)) if k != j)

        coeffs = [integrate.quad(basis, sigmas[i], sigmas[i + 1], args=(j,), epsabs=1e-14, epsrel=1e-13)[0]
                  for j in range(len(ds))]
        x = x + sum(c * d for c, d in zip(coeffs, ds, strict=True))
    return x


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_multistep_noise_prediction_is_linear_multistep(steps):
    """multistep with noise prediction, order 4 and no lower-order final step is k-diffusion's LMS."""
    gmm = smooth_gmm()
    n = noise(64, 3)
    ts = timesteps(EDM, steps, "karras")
    sigmas = [float(EDM(t).ve_sigma) for t in ts]
    expected = linear_multistep(lambda x, s: gmm.x0_hat(x, 1.0, s), sigmas, sigmas[0] * n)
    ours = sample(gmm.denoiser(EDM), n, ts, EDM, "multistep", order=4, prediction="noise", lower_order_final=False)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


def test_multistep_switch_is_data_then_noise_prediction():
    """``switch``: the data-prediction steps while ve_sigma > 1, the noise-prediction ones from ve_sigma <= 1."""
    gmm = smooth_gmm()
    n = noise(16, 3)
    ts = timesteps(EDM, 12, "karras")
    ve = [float(EDM(t).ve_sigma) for t in ts]
    first_low = next(i for i, v in enumerate(ve) if v <= 1.0)
    seen = {}
    for prediction in ("data", "noise", "switch"):
        seen[prediction] = states = []
        sample(gmm.denoiser(EDM), n, ts, EDM, "multistep", prediction=prediction,
               callback=lambda step, states=states: states.append(step["x"]))
    for i in range(first_low + 1):  # up to the first point at or below unit noise: the data-prediction path
        torch.testing.assert_close(seen["switch"][i], seen["data"][i], rtol=0, atol=0)
    assert not torch.allclose(seen["switch"][first_low + 1], seen["data"][first_low + 1])
    assert not torch.allclose(seen["switch"][first_low + 1], seen["noise"][first_low + 1])


def test_multistep_refuses_an_unknown_prediction():
    with pytest.raises(ValueError, match="prediction must be one of data, noise, switch, got 'eps'"):
        sample(smooth_gmm().denoiser(EDM), noise(4, 3), timesteps(EDM, 8, "karras"), EDM, "multistep",
               prediction="eps")


def edm_algorithm_1(D, sigmas, x):
    """EDM Algorithm 1 (Karras et al. 2022) for sigma(t) = t, s(t) = 1, written from the paper."""
    for i in range(len(sigmas) - 1):
        t_i, t_next = sigmas[i], sigmas[i + 1]
        d_i = (x - D(x, t_i)) / t_i  # line 4
        x_next = x + (t_next - t_i) * d_i  # line 5
        if t_next != 0:  # line 6
            d_prime = (x_next - D(x_next, t_next)) / t_next  # line 7
            x_next = x + (t_next - t_i) * (0.5 * d_i + 0.5 * d_prime)  # line 8
        x = x_next
    return x


def test_heun_on_edm_karras_is_edm_algorithm_1():
    gmm = smooth_gmm()
    n = noise(128, 3)
    sigmas = [(80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(18)] + [0.0]
    expected = edm_algorithm_1(lambda x, s: gmm.x0_hat(x, 1.0, s), sigmas, sigmas[0] * n)
    ts = timesteps(EDM, 18, "karras")
    ours = sample(gmm.denoiser(EDM), n, ts, EDM, "heun")
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_dpmpp_2m_is_the_published_algorithm():
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) in ve_sigma with lambda = -log sigma."""
    gmm = smooth_gmm()
    n = noise(64, 3)
    sigmas = timesteps(EDM, 10, "karras").tolist()
    sigmas = [80 * s for s in sigmas]
    x, old, h_last = sigmas[0] * n, None, None
    for i in range(len(sigmas) - 1):
        d = gmm.x0_hat(x, 1.0, sigmas[i])
        if sigmas[i + 1] == 0:
            x = d
            break
        h = math.log(sigmas[i]) - math.log(sigmas[i + 1])
        dd = d if old is None else (1 + 1 / (2 * h_last / h)) * d - (1 / (2 * h_last / h)) * old
        x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * dd
        old, h_last = d, h
    ours = sample(gmm.denoiser(EDM), n, timesteps(EDM, 10, "karras"), EDM, "dpmpp_2m")
    torch.testing.assert_close(ours, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["cosine", "linear_vp", "rectified_flow"])
def test_ode_samplers_agree_across_schedules(name):
    """The PF-ODE depends only on the noise level: 2nd-order solvers on any schedule land close to the
    same reference from the same start level."""
    gmm = smooth_gmm()
    schedule = schedules.get(name)
    n = noise(64, 3)
    ts = timesteps(schedule, 64, "karras")
    ref = reference_solve(gmm.denoiser(schedule), n, schedule, float(ts[0]), ve_sigma_end=0.002)
    for sampler in ("heun", "dpmpp_2m", "multistep"):
        assert rms(sample(gmm.denoiser(schedule), n, ts, schedule, sampler), ref) < 5e-3
