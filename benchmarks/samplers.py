"""Side-by-side sampler benchmark on exact Gaussian-mixture targets.

Every sampler, ours and the peers' (k-diffusion, diffusers), integrates the same analytic denoiser
E[x0 | x_t] of a known Gaussian mixture from the same N(0, I) noise, so what differs between rows is the
sampler alone. Deterministic samplers are scored against the exact probability-flow ODE solution from the
same noise and the same starting noise level (``diffusekit.sampling.reference_solve``, computed once per
distinct start and kept in memory); every sampler is also scored against fresh exact data.

Problems: ``mog2d`` (``GaussianMixture.ring2d()``, 4096 samples) and ``mog64``
(``GaussianMixture.random(64, 16)``, 2048 samples). Sampler state is float32; the denoiser computes in
float64 and returns float32.

Metrics per (problem, configuration, NFE budget):

- ``rmse``: root mean square over all coordinates of (sample - reference);
- ``median``: median over samples of the per-sample RMS error against the reference;
- ``flip``: fraction of samples whose most likely mixture component differs from the reference's;
- ``swd``: sliced 2-Wasserstein distance (256 fixed random directions) to fresh exact data; the floor
  SWD(data, independent data) is printed once per problem;
- ``tv``: total-variation distance between the component histogram and the true weights;
- ``wall_ms``: wall time of one batch (min of ``--repeats``, one thread), and ``overhead_ms``: wall time
  minus the time spent inside the analytic denoiser.

Stochastic samplers (``*`` in the error tables) are not meant to follow the ODE; their distance to it is
reported for completeness, but only swd and tv measure them.

Heun-type samplers (two evaluations per step but the last) run ceil((B + 1) / 2) steps at budget B, so
their NFE is 2 * steps - 1; a cell shows the actual NFE in brackets where it differs from B.

The denoiser is the library's own: ``GaussianMixture.denoiser(schedule)`` for diffusekit,
``x0_hat(x, 1, sigma)`` for k-diffusion (its VE convention), and for diffusers an eps (or, for flow
matching, a velocity) model built from ``x0_hat`` at the scheduler's own alpha and sigma. Each is wrapped
by a timer. Only ``component()``, which scores every run, is recomputed here with matrix products (and
checked against ``GaussianMixture.component`` at start-up).

Usage::

    python benchmarks/samplers.py              # full run -> benchmarks/results/samplers.json
    python benchmarks/samplers.py --quick      # smoke run (mog2d, NFE 5/10/20, 1024 samples)
    python benchmarks/samplers.py --nfe 10,20 --problems mog64 --no-search

Peers come from ``make bench-deps``; without them only diffusekit's samplers run (the output says so).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import math
import platform
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy
import torch
from torch import Tensor

import diffusekit
from diffusekit import schedules
from diffusekit.sampling import reference_solve, sample, timesteps
from diffusekit.targets import GaussianMixture

RESULTS = Path(__file__).resolve().parent / "results"
NOISE_SEED, DATA_SEED, FLOOR_SEED, DIRECTION_SEED, SDE_SEED = 1234, 2345, 3456, 4567, 5678
NUM_DIRECTIONS = 256
# Harness self-check: ours vs k-diffusion for euler / heun on edm + karras, same noise and denoiser. In
# float64 (state, sigmas and denoiser) the two must agree to rounding; in float32, as benchmarked, Heun's
# last correction divides by sigma = 0.002 and so magnifies float32 rounding of the grid (k-diffusion keeps
# float32 sigmas, ours float64 times) by up to ~1e3, so that bound is looser.
SELF_CHECK_TOLERANCE = {"float64": 1e-9, "float32": 1e-3}
CHURN = {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}
DDPM_T = 1000  # diffusers' discrete DDPM schedule: linear betas 1e-4 .. 0.02 over 1000 steps


# -- the exact denoiser ------------------------------------------------------------------------------
class Components:
    """``GaussianMixture.component`` (the most likely component of clean samples), with the per-component
    quadratic forms sum_d (x_d - mu_kd)^2 / s_kd^2 as [N, D] x [D, K] products instead of an [N, K, D]
    temporary: it scores every run, so it must be cheap. Checked against the library at start-up."""

    def __init__(self, gmm: GaussianMixture):
        var = gmm.stds**2  # [K, D]
        self.inv, self.mean_inv = 1.0 / var, gmm.means / var
        log_norm = torch.log(2 * math.pi * var).sum(1) + (gmm.means * self.mean_inv).sum(1)
        self.const = torch.log(gmm.weights) - 0.5 * log_norm  # [K]

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(torch.float64)
        return (self.const - 0.5 * ((x * x) @ self.inv.T) + x @ self.mean_inv.T).argmax(-1)


def kd_model(gmm: GaussianMixture) -> Callable:
    """k-diffusion's VE denoiser ``model(x, sigma) = x0_hat(x, alpha=1, sigma)``, with alpha given per sample
    like sigma: with a scalar alpha, GaussianMixture.x0_hat (as of commit c286e4f) takes its shared-noise-level
    path and applies sigma[0] to every sample even when the sigmas differ."""
    return lambda x, sigma: gmm.x0_hat(x, torch.ones_like(sigma, dtype=torch.float64), sigma)


class Clock:
    """Wraps a model function and accumulates the time spent inside it."""

    def __init__(self):
        self.seconds, self.calls = 0.0, 0

    def reset(self):
        self.seconds, self.calls = 0.0, 0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return out

        return timed


def check_components(gmm: GaussianMixture, components: Components, data: Tensor) -> float:
    """Agreement of the fast component() with GaussianMixture.component on data and on perturbed data."""
    g = torch.Generator().manual_seed(99)
    x = torch.cat([data, data + 0.3 * torch.randn(data.shape, generator=g, dtype=torch.float64)])
    return float((components(x) == gmm.component(x)).double().mean())


# -- problems ---------------------------------------------------------------------------------------
@dataclass
class Problem:
    name: str
    gmm: GaussianMixture
    n: int
    component: Components = field(init=False)
    noise: Tensor = field(init=False)
    data: Tensor = field(init=False)
    directions: Tensor = field(init=False)
    data_sorted: Tensor = field(init=False)  # projections of data on directions, sorted per direction
    swd_floor: float = field(init=False)
    references: dict = field(default_factory=dict)
    reference_log: list = field(default_factory=list)

    def __post_init__(self):
        self.component = Components(self.gmm)
        dim = self.gmm.dim
        self.noise = torch.randn(self.n, dim, generator=torch.Generator().manual_seed(NOISE_SEED))
        self.data = self.gmm.sample(self.n, torch.Generator().manual_seed(DATA_SEED))
        other = self.gmm.sample(self.n, torch.Generator().manual_seed(FLOOR_SEED))
        d = torch.randn(dim, NUM_DIRECTIONS, generator=torch.Generator().manual_seed(DIRECTION_SEED),
                        dtype=torch.float64)
        self.directions = d / d.norm(dim=0, keepdim=True)
        self.data_sorted = torch.sort(self.data @ self.directions, dim=0).values
        self.swd_floor = self.sliced_w2(other)

    def sliced_w2(self, x: Tensor) -> float:
        proj = torch.sort(x.to(torch.float64) @ self.directions, dim=0).values
        return float(((proj - self.data_sorted) ** 2).mean().sqrt())

    def reference(self, ve_start: float, y_scale: float) -> tuple[Tensor, Tensor]:
        """Exact PF-ODE x0 from x / sigma = y_scale * noise at noise level ve_sigma = ve_start (cached)."""
        key = ("inf" if math.isinf(ve_start) else f"{ve_start:.6e}", f"{y_scale:.6e}")
        if key not in self.references:
            if math.isinf(ve_start):  # alpha = 0: start at t = 1 of a zero-terminal-SNR schedule
                schedule = schedules.get("rectified_flow")
            else:  # any schedule gives the same PF-ODE; this one puts the start at t = 1 exactly
                schedule = schedules.get("edm", sigma_max=ve_start)
            y = self.noise.to(torch.float64) * y_scale
            clock = Clock()
            start = time.perf_counter()
            x0 = reference_solve(clock.wrap(self.gmm.denoiser(schedule)), y, schedule, 1.0)
            seconds = time.perf_counter() - start
            self.references[key] = (x0, self.component(x0))
            self.reference_log.append({"ve_sigma_start": ve_start, "y_scale": y_scale, "seconds": seconds,
                                       "denoiser_calls": clock.calls})
        return self.references[key]


def make_problems(args) -> list[Problem]:
    n2d, n64 = (1024, 2048) if args.quick else (4096, 2048)
    if args.samples:
        n2d = n64 = args.samples
    table = {"mog2d": lambda: Problem("mog2d", GaussianMixture.ring2d(), n2d),
             "mog64": lambda: Problem("mog64", GaussianMixture.random(64, 16), n64)}
    return [table[name]() for name in args.problems]


# -- configurations ---------------------------------------------------------------------------------
@dataclass
class Config:
    """One sampler setting. ``setup(problem, steps, clock) -> (run, ve_sigma_start, y_scale)``: ``run()``
    returns the float32 samples, starting from x / sigma = y_scale * noise at noise level ve_sigma_start."""

    name: str
    family: str  # diffusekit | k-diffusion | diffusers
    setup: Callable
    heun_type: bool = False
    stochastic: bool = False
    search: bool = False
    meta: dict = field(default_factory=dict)

    def steps(self, budget: int) -> int:
        return math.ceil((budget + 1) / 2) if self.heun_type else budget


def ours(label: str, sampler: str, schedule_name: str, spacing: str, spacing_options: dict | None = None,
         options: dict | None = None, search: bool = False, name: str | None = None,
         schedule_options: dict | None = None) -> Config:
    spacing_options, options = dict(spacing_options or {}), dict(options or {})
    schedule_options = dict(schedule_options or {})

    def setup(problem: Problem, steps: int, clock: Clock):
        schedule = schedules.get(schedule_name, **schedule_options)
        ts = timesteps(schedule, steps, spacing, **spacing_options)
        at = schedule(ts[0])
        ve = math.inf if float(at.alpha) == 0.0 else float(at.sigma / at.alpha)
        denoise = clock.wrap(problem.gmm.denoiser(schedule))

        def run() -> Tensor:
            generator = torch.Generator().manual_seed(SDE_SEED)
            return sample(denoise, problem.noise, ts, schedule, sampler, generator=generator, **options)

        return run, ve, 1.0

    def float64_run(problem: Problem, steps: int) -> Tensor:
        schedule = schedules.get(schedule_name, **schedule_options)
        ts = timesteps(schedule, steps, spacing, **spacing_options)
        return sample(problem.gmm.denoiser(schedule), problem.noise.to(torch.float64), ts, schedule,
                      sampler, generator=torch.Generator().manual_seed(SDE_SEED), **options)

    return Config(name or f"{label} {schedule_name}+{spacing}", "diffusekit", setup,
                  heun_type=sampler in ("heun", "edm_churn"),
                  stochastic=sampler in ("edm_churn", "ddpm", "euler_maruyama"),
                  search=search, meta={"sampler": sampler, "schedule": schedule_name,
                                       "schedule_options": schedule_options, "spacing": spacing,
                                       "spacing_options": spacing_options, "options": options,
                                       "float64_run": float64_run})


DETERMINISTIC = [("euler", "euler", {}), ("heun", "heun", {}), ("dpmpp_2m", "dpmpp_2m", {}),
                 ("multistep3", "multistep", {"order": 3}), ("multistep2", "multistep", {"order": 2}),
                 ("ddim", "ddim", {})]
STOCHASTIC = [("edm_churn", "edm_churn", CHURN), ("ddpm", "ddpm", {}), ("euler_maruyama", "euler_maruyama", {})]
COMBOS = [("edm", "karras"), ("rectified_flow", "uniform"), ("edm", "logsnr")]


def ours_configs(search: bool) -> list[Config]:
    configs = [ours(label, sampler, sched, spacing, options=opts)
               for sched, spacing in COMBOS for label, sampler, opts in DETERMINISTIC + STOCHASTIC]
    if search:
        grids = [("edm", "karras", {"rho": rho, "sigma_min": smin}) for rho in (5.0, 7.0, 9.0)
                 for smin in (0.002, 0.005, 0.01, 0.02)]
        grids += [("edm", "logsnr", {"sigma_min": smin}) for smin in (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)]
        grids += [("rectified_flow", "uniform", {})]
        grids += [("rectified_flow", "uniform", {"shift": shift}) for shift in (0.5, 2.0, 3.0)]
        multistep = [("dpmpp_2m", "dpmpp_2m", {})]
        multistep += [(f"multistep{k}", "multistep", {"order": k}) for k in (2, 3, 4)]
        multistep += [(f"multistep{k}+corrector", "multistep", {"order": k, "corrector": True})
                      for k in (2, 3, 4)]
        defaults = ({"rho": 7.0, "sigma_min": 0.002}, {"sigma_min": 0.002}, {})
        for label, sampler, opts in multistep:
            for schedule_name, spacing, grid in grids:
                if label in ("dpmpp_2m", "multistep2", "multistep3") and grid in defaults:
                    continue  # one of the fixed configurations
                args = "(" + ",".join(f"{k}={v:g}" for k, v in grid.items()) + ")" if grid else ""
                shift = {"shift": grid["shift"]} if "shift" in grid else {}
                spacing_options = {k: v for k, v in grid.items() if k != "shift"}
                configs.append(ours(label, sampler, schedule_name, spacing, spacing_options, opts, search=True,
                                    name=f"{label} {schedule_name}+{spacing}{args}", schedule_options=shift))
    return configs


def import_k_diffusion():
    """``k_diffusion.sampling`` without the package's ``__init__`` (which imports its training and
    evaluation code: clip, clean-fid, torchvision). torchvision is stubbed only while importing: the
    sampling module's ``utils`` import names it for image helpers that the samplers never call."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        raise ImportError("k_diffusion is not installed (make bench-deps)")
    added = []
    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    try:
        if "k_diffusion" not in sys.modules:
            sys.modules["k_diffusion"] = importlib.util.module_from_spec(spec)  # a bare package, no __init__
        return importlib.import_module("k_diffusion.sampling")
    finally:
        for name in added:
            sys.modules.pop(name, None)


def kd_configs(kd) -> list[Config]:
    def make(label: str, fn_name: str, heun: bool = False) -> Config:
        def setup(problem: Problem, steps: int, clock: Clock):
            sigmas = kd.get_sigmas_karras(steps, 0.002, 80.0, rho=7.0)
            model = clock.wrap(kd_model(problem.gmm))
            fn = getattr(kd, fn_name)
            x_start = problem.noise * sigmas[0]

            def run() -> Tensor:
                return fn(model, x_start, sigmas, disable=True)

            return run, float(sigmas[0]), 1.0

        def float64_run(problem: Problem, steps: int) -> Tensor:
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)  # k-diffusion builds its sigmas in the default dtype
            try:
                sigmas = kd.get_sigmas_karras(steps, 0.002, 80.0, rho=7.0)
            finally:
                torch.set_default_dtype(default)
            model = kd_model(problem.gmm)
            x_start = problem.noise.to(torch.float64) * sigmas[0]
            return getattr(kd, fn_name)(model, x_start, sigmas, disable=True)

        return Config(f"kd {label}", "k-diffusion", setup, heun_type=heun,
                      meta={"function": fn_name, "sigmas": "karras(0.002, 80, rho=7)",
                            "float64_run": float64_run})

    return [make("euler", "sample_euler"), make("heun", "sample_heun", heun=True), make("lms", "sample_lms"),
            make("dpmpp_2m", "sample_dpmpp_2m")]


def diffusers_configs(diffusers) -> list[Config]:
    ddpm = {"num_train_timesteps": DDPM_T, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}

    def make(label: str, cls_name: str, kwargs: dict, kind: str, heun: bool = False) -> Config:
        """kind: 've' (the sample is x_t / alpha: Euler, Heun), 'vp' (the sample is x_t) or 'flow'
        (x_t = (1 - s) x0 + s noise with s = timestep / 1000)."""

        def setup(problem: Problem, steps: int, clock: Clock):
            scheduler = getattr(diffusers, cls_name)(**kwargs)
            scheduler.set_timesteps(steps)
            gmm = problem.gmm
            if kind == "flow":
                def model(x_in: Tensor, t: Tensor) -> Tensor:  # velocity d x / d s = (x - x0_hat) / s
                    s = float(t) / DDPM_T
                    x64 = x_in.to(torch.float64)
                    return ((x64 - gmm.x0_hat(x64, 1.0 - s, s)) / s).to(x_in.dtype)

                init = 1.0
                s0 = float(scheduler.sigmas[0])
                ve, y_scale = (math.inf if s0 >= 1.0 else s0 / (1.0 - s0)), 1.0 / s0
            else:
                # the scheduler's own table: sigma_VE(t) = sqrt((1 - abar_t) / abar_t), linear in t between
                # integer timesteps exactly as the sigma-based schedulers interpolate it; at an integer t the
                # model below uses alpha = sqrt(abar_t) and sigma = sqrt(1 - abar_t).
                abar = scheduler.alphas_cumprod.to(torch.float64).numpy()
                ve_table = np.sqrt((1 - abar) / abar)
                grid = np.arange(len(abar))

                def model(x_in: Tensor, t: Tensor) -> Tensor:  # eps = (x_t - alpha x0_hat) / sigma
                    ve_t = float(np.interp(float(t), grid, ve_table))
                    a = 1.0 / math.sqrt(1.0 + ve_t * ve_t)
                    s = ve_t * a
                    x64 = x_in.to(torch.float64)
                    return ((x64 - a * gmm.x0_hat(x64, a, s)) / s).to(x_in.dtype)

                init = float(getattr(scheduler, "init_noise_sigma", 1.0))
                if kind == "ve":
                    ve = float(scheduler.sigmas[0])
                    y_scale = init / ve
                else:
                    ve = float(np.interp(float(scheduler.timesteps[0]), grid, ve_table))
                    y_scale = init * math.sqrt(1.0 + ve * ve) / ve
            timed = clock.wrap(model)

            def run() -> Tensor:
                scheduler.set_timesteps(steps)
                x = problem.noise * init
                for t in scheduler.timesteps:
                    x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
                    x = scheduler.step(timed(x_in, t), t, x, return_dict=False)[0]
                return x

            return run, ve, y_scale

        return Config(f"hf {label}", "diffusers", setup, heun_type=heun,
                      meta={"scheduler": cls_name, "kwargs": kwargs, "kind": kind})

    return [
        make("Euler", "EulerDiscreteScheduler", ddpm, "ve"),
        make("Heun", "HeunDiscreteScheduler", ddpm, "ve", heun=True),
        make("DPM++2M", "DPMSolverMultistepScheduler",
             {**ddpm, "algorithm_type": "dpmsolver++", "solver_order": 2}, "vp"),
        make("DPM++2M karras", "DPMSolverMultistepScheduler",
             {**ddpm, "algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}, "vp"),
        make("UniPC", "UniPCMultistepScheduler", ddpm, "vp"),
        make("DDIM trailing", "DDIMScheduler",
             {**ddpm, "clip_sample": False, "timestep_spacing": "trailing", "set_alpha_to_one": True}, "vp"),
        make("FlowMatch Euler", "FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": DDPM_T}, "flow"),
    ]


# -- running and scoring ----------------------------------------------------------------------------
def evaluate(problem: Problem, config: Config, budget: int, repeats: int) -> tuple[dict, Tensor]:
    clock = Clock()
    run, ve_start, y_scale = config.setup(problem, config.steps(budget), clock)
    output, calls, best_wall, best_overhead = None, 0, math.inf, math.inf
    for _ in range(repeats):
        clock.reset()
        start = time.perf_counter()
        x = run()
        wall = time.perf_counter() - start
        if output is None:
            output, calls = x, clock.calls
        best_wall, best_overhead = min(best_wall, wall), min(best_overhead, wall - clock.seconds)
    ref, ref_component = problem.reference(ve_start, y_scale)
    result = {"nfe": calls, "ve_sigma_start": ve_start, "y_scale": y_scale,
              "wall_ms": 1e3 * best_wall, "overhead_ms": 1e3 * best_overhead}
    result.update(score(problem, output, ref, ref_component))
    return result, output


def score(problem: Problem, x: Tensor, ref: Tensor, ref_component: Tensor) -> dict:
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        nan = float("nan")
        return {"rmse": nan, "median": nan, "flip": nan, "swd": nan, "tv": nan,
                "nonfinite": int((~torch.isfinite(x)).any(1).sum())}
    err = x - ref
    component = problem.component(x)
    hist = torch.bincount(component, minlength=problem.gmm.num_components).to(torch.float64) / len(x)
    return {"rmse": float(err.pow(2).mean().sqrt()),
            "median": float(err.pow(2).mean(1).sqrt().median()),
            "flip": float((component != ref_component).double().mean()),
            "swd": problem.sliced_w2(x),
            "tv": float(0.5 * (hist - problem.gmm.weights).abs().sum())}


def accuracy_key(result: dict) -> tuple[float, float]:
    m, r = result["median"], result["rmse"]
    return (m if math.isfinite(m) else math.inf, r if math.isfinite(r) else math.inf)


def run_problem(problem: Problem, configs: list[Config], budgets: list[int], repeats: int, log) -> dict:
    results: dict[str, dict[int, dict]] = {}
    outputs: dict[tuple[str, int], Tensor] = {}
    for config in configs:
        results[config.name] = {}
        for budget in budgets:
            result, x = evaluate(problem, config, budget, 1 if config.search else repeats)
            results[config.name][budget] = result
            if config.name in SELF_CHECK_PAIRS or config.name in SELF_CHECK_PAIRS.values():
                outputs[config.name, budget] = x
        log(f"  {problem.name}: {config.name}")
    return {"results": results, "outputs": outputs}


SELF_CHECK_PAIRS = {"euler edm+karras": "kd euler", "heun edm+karras": "kd heun"}


# -- reporting --------------------------------------------------------------------------------------
def cell(config: Config, budget: int, result: dict, key: str) -> str:
    value = result[key]
    if key in ("rmse", "median"):
        text = f"{value:.2e}"
    elif key in ("flip", "tv"):
        text = f"{100 * value:.2f}%"
    elif key == "swd":
        text = f"{value:.4f}"
    else:
        text = f"{value:.1f}"
    if key in ("rmse", "median", "flip") and config.stochastic:
        text += "*"
    if result["nfe"] != budget:
        text += f" [{result['nfe']}]"
    return text


METRICS = [("rmse", "RMSE vs exact PF-ODE solution"),
           ("median", "median per-sample RMS error vs exact PF-ODE"),
           ("flip", "mode flips vs exact PF-ODE (fraction of samples)"),
           ("swd", "sliced W2 to exact data"), ("tv", "mode-weight TV distance"),
           ("wall_ms", "wall time per batch, ms"), ("overhead_ms", "overhead (wall minus denoiser), ms")]


def markdown_tables(problem: Problem, configs: list[Config], results: dict, best: dict,
                    budgets: list[int]) -> str:
    shown = [c for c in configs if not c.search]
    ours_rows = [c for c in shown if c.family == "diffusekit"]
    last_ours = ours_rows[-1] if ours_rows else None
    lines = []
    for key, title in METRICS:
        lines += ["", f"### {problem.name}: {title}", "",
                  "| config | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]
        for config in shown:
            row = [cell(config, b, results[config.name][b], key) for b in budgets]
            lines.append(f"| {config.name} | " + " | ".join(row) + " |")
            if config is last_ours:
                row = [cell(best[b]["config"], b, results[best[b]["config"].name][b], key) for b in budgets]
                lines.append("| **ours best** | " + " | ".join(row) + " |")
    return "\n".join(lines)


def summary_table(problem: Problem, configs: list[Config], results: dict, best: dict, budgets: list[int]):
    peers = [c for c in configs if c.family != "diffusekit" and not c.stochastic]
    rows, lines = [], ["", f"### {problem.name}: summary (best = lowest median error, tie-break RMSE)", ""]
    if peers:
        lines += ["| NFE | best peer | median | RMSE | ours best | median | RMSE | peer/ours median "
                  "| peer/ours RMSE |", "|---:|---|---:|---:|---|---:|---:|---:|---:|"]
    else:
        lines += ["| NFE | ours best | median | RMSE |", "|---:|---|---:|---:|"]
    for b in budgets:
        ours_cfg = best[b]["config"]
        o = results[ours_cfg.name][b]
        o_name = ours_cfg.name + (f" [{o['nfe']}]" if o["nfe"] != b else "")
        row = {"nfe": b, "ours_best": ours_cfg.name, "ours_nfe": o["nfe"], "ours_median": o["median"],
               "ours_rmse": o["rmse"]}
        if peers:
            peer = min(peers, key=lambda c: accuracy_key(results[c.name][b]))
            p = results[peer.name][b]
            p_name = peer.name + (f" [{p['nfe']}]" if p["nfe"] != b else "")
            ratio_m, ratio_r = p["median"] / o["median"], p["rmse"] / o["rmse"]
            row.update({"best_peer": peer.name, "peer_nfe": p["nfe"], "peer_median": p["median"],
                        "peer_rmse": p["rmse"], "ratio_median": ratio_m, "ratio_rmse": ratio_r})
            lines.append(f"| {b} | {p_name} | {p['median']:.2e} | {p['rmse']:.2e} | {o_name} | "
                         f"{o['median']:.2e} | {o['rmse']:.2e} | {ratio_m:.2f} | {ratio_r:.2f} |")
        else:
            lines.append(f"| {b} | {o_name} | {o['median']:.2e} | {o['rmse']:.2e} |")
        rows.append(row)
    return "\n".join(lines), rows


def per_metric_table(problem: Problem, configs: list[Config], results: dict, budgets: list[int]):
    """For each accuracy metric separately: the best peer against our best configuration for that metric."""
    deterministic = [c for c in configs if not c.stochastic]
    peers = [c for c in deterministic if c.family != "diffusekit"]
    ours_all = [c for c in deterministic if c.family == "diffusekit"]
    if not peers:
        return "", []
    lines = ["", f"### {problem.name}: best per metric (each metric's own winner; deterministic samplers)", "",
             "| NFE | metric | best peer | value | ours best | value | peer/ours |",
             "|---:|---|---|---:|---|---:|---:|"]
    rows = []
    for b in budgets:
        for key in ("median", "rmse", "flip", "swd"):

            def value(c, b=b, key=key):
                v = results[c.name][b][key]
                return v if math.isfinite(v) else math.inf

            peer, mine = min(peers, key=value), min(ours_all, key=value)
            ratio = value(peer) / value(mine) if value(mine) > 0 else (1.0 if value(peer) == 0 else math.inf)
            rows.append({"nfe": b, "metric": key, "best_peer": peer.name, "peer": value(peer),
                         "ours_best": mine.name, "ours": value(mine), "ratio": ratio})
            lines.append(f"| {b} | {key} | {peer.name} | {value(peer):.3g} | {mine.name} | {value(mine):.3g} | "
                         f"{ratio:.2f} |")
    lines += ["", "One configuration ahead of the best peer on both median error and RMSE:", "",
              "| NFE | ours | median | RMSE | best peer median | best peer RMSE |", "|---:|---|---:|---:|---:|---:|"]
    for b in budgets:
        peer_median = min(results[c.name][b]["median"] for c in peers)
        peer_rmse = min(results[c.name][b]["rmse"] for c in peers)
        both = [c for c in ours_all
                if results[c.name][b]["median"] <= peer_median and results[c.name][b]["rmse"] <= peer_rmse]
        if both:
            mine = min(both, key=lambda c, b=b: results[c.name][b]["median"] / peer_median
                       + results[c.name][b]["rmse"] / peer_rmse)
            r = results[mine.name][b]
            lines.append(f"| {b} | {mine.name} | {r['median']:.3g} | {r['rmse']:.3g} | {peer_median:.3g} | "
                         f"{peer_rmse:.3g} |")
        else:
            lines.append(f"| {b} | none | | | {peer_median:.3g} | {peer_rmse:.3g} |")
        rows.append({"nfe": b, "metric": "median+rmse", "ours_best": mine.name if both else None,
                     "peer_median": peer_median, "peer_rmse": peer_rmse})
    return "\n".join(lines), rows


def self_check(problem: Problem, configs: list[Config], outputs: dict, budgets: list[int]) -> dict:
    """max |ours - k-diffusion| per budget: float32 from the benchmark runs, float64 rerun here."""
    by_name = {c.name: c for c in configs}
    check = {}
    for mine, theirs in SELF_CHECK_PAIRS.items():
        if theirs not in by_name:
            continue
        entry = {"float32": {}, "float64": {}}
        for b in budgets:
            entry["float32"][b] = float((outputs[mine, b] - outputs[theirs, b]).abs().max())
            ours_x = by_name[mine].meta["float64_run"](problem, by_name[mine].steps(b))
            kd_x = by_name[theirs].meta["float64_run"](problem, by_name[theirs].steps(b))
            entry["float64"][b] = float((ours_x - kd_x).abs().max())
        check[f"{mine} vs {theirs}"] = entry
    return check


def versions(kd_ok: bool, hf_ok: bool) -> dict:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "diffusekit": diffusekit.__version__,
            "diffusers": version("diffusers") if hf_ok else None,
            "k-diffusion": version("k-diffusion") if kd_ok else None, "platform": platform.platform()}


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: mog2d, NFE 5,10,20, 1024 samples")
    parser.add_argument("--nfe", type=str, default=None, help="comma-separated NFE budgets")
    parser.add_argument("--problems", type=str, default=None, help="comma-separated: mog2d,mog64")
    parser.add_argument("--samples", type=int, default=None, help="samples per problem (overrides defaults)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (min is reported)")
    parser.add_argument("--no-search", action="store_true", help="skip the grid search for 'ours best'")
    parser.add_argument("--no-peers", action="store_true", help="run diffusekit's samplers only")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    args.budgets = [int(v) for v in args.nfe.split(",")] if args.nfe else \
        ([5, 10, 20] if args.quick else [5, 10, 20, 35, 50])
    if args.problems:
        args.problems = args.problems.split(",")
    else:
        args.problems = ["mog2d"] if args.quick else ["mog2d", "mog64"]
    unknown = set(args.problems) - {"mog2d", "mog64"}
    if unknown:
        parser.error(f"unknown problem(s) {sorted(unknown)}; choose from mog2d, mog64")
    if args.output is None:
        args.output = RESULTS / ("samplers_quick.json" if args.quick else "samplers.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()

    def log(message: str):
        print(f"[{time.perf_counter() - began:7.1f}s] {message}", file=sys.stderr, flush=True)

    peers_status: dict[str, str] = {}
    configs = ours_configs(search=not args.no_search)
    kd_ok = hf_ok = False
    if not args.no_peers:
        try:  # diffusers first: it probes for torchvision at import time, before any stub exists
            import diffusers

            diffusers.utils.logging.set_verbosity_error()
            configs += diffusers_configs(diffusers)
            hf_ok, peers_status["diffusers"] = True, "ok"
        except ImportError as e:
            peers_status["diffusers"] = f"not installed ({e}); run `make bench-deps`"
        try:
            configs += kd_configs(import_k_diffusion())
            kd_ok, peers_status["k-diffusion"] = True, "ok"
        except ImportError as e:
            peers_status["k-diffusion"] = f"not installed ({e}); run `make bench-deps`"
    else:
        peers_status = {"diffusers": "skipped (--no-peers)", "k-diffusion": "skipped (--no-peers)"}
    # peers between ours and the search rows, so that tables read: ours, ours best, peers
    configs = [c for c in configs if c.family == "diffusekit" and not c.search] + \
        [c for c in configs if c.family != "diffusekit"] + [c for c in configs if c.search]

    print("# Sampler benchmark on exact Gaussian mixtures")
    print()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, NFE budgets {args.budgets}, "
          f"repeats {args.repeats}")
    for peer, status in peers_status.items():
        print(f"- {peer}: {status}")
    if not (kd_ok or hf_ok):
        print("- peers unavailable: running diffusekit's samplers only")

    report = {"meta": {}, "problems": {}}
    failures = []
    for problem in make_problems(args):
        described = f"{problem.n} samples, dim {problem.gmm.dim}, {problem.gmm.num_components} components"
        log(f"{problem.name}: {described}")
        agreement = check_components(problem.gmm, problem.component, problem.data)
        if agreement < 0.999:
            failures.append(f"{problem.name}: fast component() agrees with GaussianMixture.component on "
                            f"only {100 * agreement:.2f}% of points")
        ran = run_problem(problem, configs, args.budgets, args.repeats, log)
        results = ran["results"]
        best = {}
        for b in args.budgets:
            candidates = [c for c in configs if c.family == "diffusekit" and not c.stochastic]
            winner = min(candidates, key=lambda c, b=b: accuracy_key(results[c.name][b]))
            best[b] = {"config": winner}
            if winner.search and args.repeats > 1:  # searched once, untimed: time the winner properly
                results[winner.name][b], _ = evaluate(problem, winner, b, args.repeats)
        checks = self_check(problem, configs, ran["outputs"], args.budgets)
        print()
        print(f"## {problem.name}: {described}")
        print()
        print(f"- component() check (fast vs GaussianMixture.component, data and perturbed data): "
              f"{100 * agreement:.2f}% agree")
        print(f"- SWD floor (exact data vs independent exact data): {problem.swd_floor:.4f}")
        for entry in problem.reference_log:
            print(f"- reference PF-ODE solve from ve_sigma={entry['ve_sigma_start']:.9g} "
                  f"(y = {entry['y_scale']:.8f} * noise): {entry['seconds']:.1f}s, "
                  f"{entry['denoiser_calls']} denoiser calls")
        if not checks:
            print("- self-check against k-diffusion skipped: k-diffusion is not available")
        for pair, entry in checks.items():
            for precision, diffs in entry.items():
                worst, tolerance = max(diffs.values()), SELF_CHECK_TOLERANCE[precision]
                status = "ok" if worst <= tolerance else "FAILED"
                print(f"- self-check {pair} ({precision}): max |diff| {worst:.1e} "
                      f"(by budget: {', '.join(f'{b}: {d:.1e}' for b, d in diffs.items())}; "
                      f"tolerance {tolerance:.0e}) -> {status}")
                if not worst <= tolerance:
                    failures.append(f"{problem.name}: self-check {pair} ({precision}): "
                                    f"max |diff| {worst:.2e} > {tolerance:.0e}")
        print(markdown_tables(problem, configs, results, best, args.budgets))
        text, summary = summary_table(problem, configs, results, best, args.budgets)
        metric_text, per_metric = per_metric_table(problem, configs, results, args.budgets)
        text += "\n" + metric_text
        print(text)
        sys.stdout.flush()
        report["problems"][problem.name] = {
            "samples": problem.n, "dim": problem.gmm.dim, "components": problem.gmm.num_components,
            "swd_floor": problem.swd_floor, "component_agreement": agreement,
            "references": problem.reference_log,
            "self_check": checks,
            "ours_best": {b: {"config": best[b]["config"].name, **results[best[b]["config"].name][b]}
                          for b in args.budgets},
            "summary": summary,
            "best_per_metric": per_metric,
            "configs": [{"name": c.name, "family": c.family, "stochastic": c.stochastic, "search": c.search,
                         "heun_type": c.heun_type, **{k: v for k, v in c.meta.items() if not callable(v)},
                         "results": results[c.name]} for c in configs],
        }
    runtime = time.perf_counter() - began
    report["meta"] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "versions": versions(kd_ok, hf_ok), "threads": torch.get_num_threads(),
                      "budgets": args.budgets, "repeats": args.repeats, "quick": args.quick,
                      "search": not args.no_search, "peers": peers_status, "runtime_s": runtime,
                      "seeds": {"noise": NOISE_SEED, "data": DATA_SEED, "floor": FLOOR_SEED,
                                "directions": DIRECTION_SEED, "sde": SDE_SEED},
                      "self_check_tolerance": SELF_CHECK_TOLERANCE, "failures": failures}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(jsonable(report), indent=1) + "\n")
    print()
    print(f"Wrote {args.output} ({runtime:.0f}s).")
    if failures:
        print("\n".join(["", "FAILED:"] + [f"- {f}" for f in failures]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
