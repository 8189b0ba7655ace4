"""The sampler benchmark's grids and their conversion into each library's noise-level convention.

Each grid is checked against its closed form (EDM eq. 5, log-SNR-uniform, uniform rectified-flow time
with SD3's shift), and each conversion by reading the library's own noise levels back.
"""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .assets import require_asset

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "sampler_grids.py"
_spec = importlib.util.spec_from_file_location("benchmark_sampler_grids", PATH)
grids = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = grids  # dataclasses look their module up while the class is built
_spec.loader.exec_module(grids)

STEPS = [1, 3, 10, 25]


def _closed_form(spec, steps: int) -> np.ndarray:
    i = np.arange(steps)
    if spec.family == "karras":  # EDM eq. 5 over the steps nonzero levels
        ramp = i / (steps - 1) if steps > 1 else np.zeros(1)
        inv_max, inv_min = 80.0 ** (1 / spec.rho), spec.sigma_min ** (1 / spec.rho)
        levels = (inv_max + ramp * (inv_min - inv_max)) ** spec.rho
    elif spec.family == "logsnr":  # geometric in ve_sigma = uniform in log-SNR
        ramp = i / (steps - 1) if steps > 1 else np.zeros(1)
        levels = 80.0 * (spec.sigma_min / 80.0) ** ramp
    else:  # uniform in flow time u from u_max, ve = shift * u / (1 - u)
        u_max = 80.0 / (80.0 + spec.shift)
        u = u_max * (1 - i / steps)
        levels = spec.shift * u / (1 - u)
    return np.append(levels, 0.0)


@pytest.mark.parametrize("spec", grids.search_grids(), ids=lambda s: s.name)
@pytest.mark.parametrize("steps", STEPS)
def test_grid_matches_its_closed_form_and_starts_at_80(spec, steps):
    ve = spec.ve(steps)
    assert ve.dtype == torch.float64 and len(ve) == steps + 1
    assert float(ve[0]) == 80.0 and float(ve[-1]) == 0.0
    assert bool((ve[1:] < ve[:-1]).all())
    np.testing.assert_allclose(ve.numpy(), _closed_form(spec, steps), rtol=1e-12, atol=0)


@pytest.mark.parametrize("spec", grids.IDENTICAL_GRIDS, ids=lambda s: s.name)
@pytest.mark.parametrize("steps", STEPS)
def test_diffusekit_conversion_maps_back(spec, steps):
    ve = spec.ve(steps)
    schedule, ts = grids.ours_grid(ve)
    assert float(ts[0]) == 1.0 and float(ts[-1]) == 0.0
    at = schedule(ts[:-1])
    assert float(at.ve_sigma[0]) == 80.0
    np.testing.assert_allclose(at.ve_sigma.numpy(), ve[:-1].numpy(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("steps", STEPS)
def test_flow_sigmas_are_the_flow_times_of_the_levels(steps):
    ve = grids.FLOW_UNIFORM.ve(steps)
    s = grids.flow_sigmas(ve)
    assert len(s) == steps
    np.testing.assert_allclose(s / (1 - s), ve[:-1].numpy(), rtol=1e-13, atol=0)
    u_max = 80.0 / 81.0  # shift 1: the grid is uniform in flow time from u_max
    np.testing.assert_allclose(s, u_max * (1 - np.arange(steps) / steps), rtol=1e-13, atol=0)


@pytest.mark.parametrize("steps", [2, 3, 10, 25])
def test_table_holds_the_grid_levels_at_its_timesteps(steps):
    ve = grids.KARRAS_DEFAULT.ve(steps)
    betas, index = grids.table_for(ve, T=1000)
    assert len(betas) == 1000 and bool((betas > 0).all()) and bool((betas < 1).all())
    assert index[0] == 999 and list(index) == sorted(index, reverse=True) and len(set(index)) == steps
    abar = np.cumprod(1 - betas)  # in float64: the table is exact before any float32 rounding
    np.testing.assert_allclose(np.sqrt((1 - abar[index]) / abar[index]), ve[:-1].numpy(), rtol=1e-9, atol=0)


def test_table_needs_two_levels():
    with pytest.raises(ValueError, match="holds 2..1000 nonzero levels, the grid has 1"):
        grids.table_for(grids.KARRAS_DEFAULT.ve(1))


def test_readback_error_is_relative_to_the_grid():
    ve = torch.tensor([80.0, 1.0, 0.01, 0.0], dtype=torch.float64)
    err = grids.readback_error([80.0 * (1 + 1e-6), 1.0, 0.01 * (1 - 1e-3)], ve)
    assert err["first"] == pytest.approx(1e-6, rel=1e-6)
    assert err["last"] == pytest.approx(1e-3, rel=1e-6)
    assert err["max"] == pytest.approx(1e-3, rel=1e-6)


# -- diffusers: the scheduler's own levels, read back ------------------------------------------------
@pytest.fixture(scope="module")
def diffusers():
    # a peer of the benchmark only (`make bench-deps`), not installed by `make test`: a skip, on CI too
    require_asset("diffusers", importlib.util.find_spec("diffusers") is not None, "make bench-deps installs it",
                  installed_by_project=False)
    import diffusers

    return diffusers


DDPM = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
F32 = float(np.finfo(np.float32).eps)


def test_euler_discrete_sigmas_are_the_grid_in_float32(diffusers):
    ve = grids.KARRAS_DEFAULT.ve(10)
    scheduler = diffusers.EulerDiscreteScheduler(**DDPM)
    scheduler.set_timesteps(sigmas=ve.tolist())
    assert scheduler.sigmas.tolist() == ve.to(torch.float32).tolist()


@pytest.mark.parametrize("name, options", [
    ("FlowMatchEulerDiscreteScheduler", {}),
    ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
])
def test_flow_schedulers_hold_the_grid(diffusers, name, options):
    ve = grids.FLOW_UNIFORM.ve(10)
    scheduler = getattr(diffusers, name)(**options)
    scheduler.set_timesteps(sigmas=grids.flow_sigmas(ve))
    s = scheduler.sigmas.to(torch.float64)
    assert len(s) == 11 and float(s[-1]) == 0.0
    err = grids.readback_error(s[:-1] / (1 - s[:-1]), ve)
    assert err["max"] < 30 * F32  # float32 flow times, divided by 1 - s ~ 1/81 at the start


def test_heun_float_timesteps_read_back_to_float32(diffusers):
    ve = grids.KARRAS_DEFAULT.ve(10)
    betas, _ = grids.table_for(ve)
    scheduler = diffusers.HeunDiscreteScheduler(trained_betas=betas, num_train_timesteps=len(betas))
    scheduler.set_timesteps(timesteps=grids.float_timesteps(scheduler, ve))
    levels = scheduler.sigmas[:-1][::2].to(torch.float64)  # Heun repeats every level but the first
    err = grids.readback_error(levels, ve)
    assert err["first"] < 10 * F32 and err["last"] < 10 * F32 and err["max"] < 10 * F32


def test_dpm_solver_integer_timesteps_read_back_within_float32_table_precision(diffusers):
    ve = grids.KARRAS_DEFAULT.ve(10)
    betas, index = grids.table_for(ve)
    scheduler = diffusers.DPMSolverMultistepScheduler(trained_betas=betas, num_train_timesteps=len(betas))
    scheduler.set_timesteps(timesteps=index.tolist())
    assert scheduler.timesteps.tolist() == index.tolist()
    err = grids.readback_error(scheduler.sigmas[:-1].to(torch.float64), ve)
    assert err["first"] < 1e-4
    # 1 - alphas_cumprod ~ ve^2 = 4e-6 at the last level is stored next to 1 in float32 (spacing 6e-8)
    bound = 0.5 * 2 ** -23 / (0.002**2) * 10
    assert err["last"] < bound and math.isfinite(err["max"])


@pytest.mark.parametrize("steps", STEPS)
def test_karras_default_is_diffusekits_default_grid(steps):
    from diffusekit import schedules
    from diffusekit.sampling import timesteps

    ve = timesteps(schedules.get("edm"), steps) * 80.0  # EDM's schedule: ve_sigma = 80 t
    np.testing.assert_allclose(ve.numpy(), grids.KARRAS_DEFAULT.ve(steps).numpy(), rtol=1e-14, atol=0)
