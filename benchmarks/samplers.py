"""Side-by-side sampler benchmark on exact Gaussian-mixture targets: diffusekit against k-diffusion and
diffusers, every sampler given the same noise-level grids, the same search and the same noise.

Every sampler integrates the same analytic denoiser E[x0 | x_t] of a known Gaussian mixture from the same
N(0, I) noise, so what differs between rows is the sampler alone. Deterministic samplers are scored
against the exact probability-flow ODE solution from the same starting state
(``diffusekit.sampling.reference_solve``); every sampler is also scored against fresh exact data.

Grids (``sampler_grids.py``): 14 ve_sigma sequences from 80 to 0 (Karras rho in {5, 7, 9} x sigma_min
in {0.002, 0.01}; log-SNR-uniform with sigma_min in {0.002, 0.01, 0.05, 0.1}; uniform in rectified-flow
time with shift in {0.5, 1, 2, 3}), converted exactly into each library's convention
(k-diffusion's VE sigmas, diffusers' sigmas, flow sigmas or ``alphas_cumprod`` timesteps) and read back.
Every sampler that accepts a custom grid (ours; every k-diffusion sampler taking ``sigmas``; the
diffusers schedulers whose ``set_timesteps`` takes ``sigmas=`` or ``timesteps=`` for a general model) is
run on every grid at every NFE budget.

Splits: the grid (and, per library, the sampler) is selected on a VALIDATION draw of noise, data and SDE
noise, and reported on a disjoint TEST draw (other seeds); each split has its own SWD floor.

Three tables per problem:

1. defaults: each library's default grid and options per sampler (diffusekit: ``timesteps()``'s Karras
   grid, 0.002 .. 80, rho = 7; k-diffusion: the same grid, which its EDM configurations use; diffusers:
   its default DDPM table and timestep spacing, started from ``init_noise_sigma``), on the test split;
2. search: per sampler, and per library, the best (sampler, grid) on validation (deterministic: lowest
   median error, tie-break RMSE; stochastic: lowest sliced W2), reported on test;
3. identical grids: every sampler on the Karras rho = 7 grid and the uniform flow grid (test split), and
   each of our samplers against its counterparts: the largest sample difference, which is float rounding
   where the algorithms are the same.

Problems: ``mog2d`` (``GaussianMixture.ring2d()``, 4096 test samples) and ``mog64``
(``GaussianMixture.random(64, 16)``, 2048 test samples); the validation split has 1024.
Sampler state is float32; the denoiser computes in float64 and returns float32.

Metrics per (problem, sampler, grid, NFE budget, split): ``rmse`` (root mean square of sample minus
reference), ``median`` (median over samples of the per-sample RMS error), ``flip`` (fraction of samples
whose most likely mixture component differs from the reference's), ``swd`` (sliced 2-Wasserstein distance,
256 fixed random directions, to the split's exact data), ``tv`` (total variation between the component
histogram and the true weights); ``overhead_ratio``: the sampler's own time in one batch (wall time minus
the time inside the denoiser, one thread, the fastest of ``--repeats``, default 1) over the time inside
the denoiser in the same run, so that load on a shared machine cancels (speed is reported only this way).
Stochastic samplers (``*``) are not meant to follow the ODE: only swd and tv measure them.

Heun-type samplers (two evaluations per step but the last) run ceil((B + 1) / 2) steps at budget B, so
their NFE is 2 * steps - 1; a cell shows the actual NFE in brackets where it differs from B.

The denoiser is the library's own: ``GaussianMixture.denoiser(schedule)`` for diffusekit,
``x0_hat(x, 1, sigma)`` for k-diffusion (its VE convention), and for diffusers an eps (or, for flow
matching, a velocity) model built from ``x0_hat`` at the noise level the scheduler holds for that
evaluation (``scheduler.sigmas`` or ``alphas_cumprod``). Each is wrapped by a timer.

Usage::

    python benchmarks/samplers.py              # full run -> benchmarks/results/samplers.json
    python benchmarks/samplers.py --quick      # smoke run (mog2d, NFE 5/10/20, 1024 test samples, 3 grids)
    python benchmarks/samplers.py --nfe 10,20 --problems mog64 --no-search
    python benchmarks/samplers.py --adaptive   # adaptive step size only -> results/samplers_adaptive.json

``--adaptive``: our ``adaptive`` sampler (Bogacki-Shampine 3(2) and Dormand-Prince 5(4)) against k-diffusion's
``sample_dpm_adaptive`` (DPM-Solver-12 and -23, Lu et al. 2022) at the same rtol = atol, in float64, from
ve_sigma = 80 (EDM's start) on the test split: error against the exact PF-ODE and the NFE each used. The
tolerances are the same numbers but not the same norm: ours is per sample on x_t / sqrt(1 + ve_sigma^2),
k-diffusion's an RMS over the batch on x_t / alpha = x0 + ve_sigma noise; k-diffusion stops at sigma_min =
1e-5 (it needs sigma_min > 0), ours at ve_sigma = 1e-6 followed by a denoising step.

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
from diffusekit.sampling import nfe, reference_solve, sample
from diffusekit.targets import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_grids import (  # noqa: E402
    FLOW_UNIFORM,
    IDENTICAL_GRIDS,
    KARRAS_DEFAULT,
    GridSpec,
    float_timesteps,
    flow_sigmas,
    ours_grid,
    readback_error,
    search_grids,
    table_for,
)

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Seeds:
    noise: int
    data: int
    floor: int
    sde: int


SPLITS = {"validation": Seeds(noise=1234, data=2345, floor=3456, sde=5678),
          "test": Seeds(noise=11234, data=12345, floor=13456, sde=15678)}
DIRECTION_SEED = 4567
NUM_DIRECTIONS = 256
# EDM's churn settings (Karras et al. 2022, Table 5, ImageNet-64), used by ours and k-diffusion alike.
CHURN = {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}
EDM_CHURN = "edm_churn"  # EDM's Algorithm 2
# Same-algorithm pairs on an identical grid: float64 runs must agree to rounding (k-diffusion pairs). The
# largest difference over samples grows with the dimension and, for the ancestral pair, with the noise
# injected at every step (1.3e-9 measured on mog64), still seven orders below any algorithmic difference.
FLOAT64_TOLERANCE = 1e-8
REFERENCE_SHARE_RTOL = 1e-4


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


# -- problems and splits ----------------------------------------------------------------------------
@dataclass
class Split:
    """One draw of starting noise, exact data (for SWD) and SDE noise; references cached per start."""

    name: str
    seeds: Seeds
    gmm: GaussianMixture
    component: Components
    directions: Tensor
    n: int
    noise: Tensor = field(init=False)
    data_sorted: Tensor = field(init=False)
    swd_floor: float = field(init=False)
    references: dict = field(default_factory=dict)
    reference_log: list = field(default_factory=list)

    def __post_init__(self):
        dim = self.gmm.dim
        self.noise = torch.randn(self.n, dim, generator=torch.Generator().manual_seed(self.seeds.noise))
        data = self.gmm.sample(self.n, torch.Generator().manual_seed(self.seeds.data))
        other = self.gmm.sample(self.n, torch.Generator().manual_seed(self.seeds.floor))
        self.data_sorted = torch.sort(data @ self.directions, dim=0).values
        self.swd_floor = self.sliced_w2(other)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seeds.sde)

    def sliced_w2(self, x: Tensor) -> float:
        proj = torch.sort(x.to(torch.float64) @ self.directions, dim=0).values
        return float(((proj - self.data_sorted) ** 2).mean().sqrt())

    def _shared_key(self, ve_start: float, y_scale: float) -> tuple[float, float]:
        """A start within REFERENCE_SHARE_RTOL of a computed one (float32 rounding of a library's first level)
        shares its reference: from x_hat = ve * noise, moving the start level by a fraction eps moves the
        PF-ODE solution by about eps * |E[x0]| / ve (for ve = 80, eps = 1e-4: ~1e-6 |E[x0]|)."""
        for key in self.references:
            ve, scale = key
            if scale == y_scale and (ve == ve_start or abs(ve_start - ve) <= REFERENCE_SHARE_RTOL * ve):
                return key
        return (ve_start, y_scale)

    def reference(self, ve_start: float, y_scale: float) -> tuple[Tensor, Tensor]:
        """Exact PF-ODE x0 from x / sigma = y_scale * noise at noise level ve_sigma = ve_start (cached)."""
        key = self._shared_key(ve_start, y_scale)
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


@dataclass
class Problem:
    name: str
    gmm: GaussianMixture
    n: int
    component: Components = field(init=False)
    splits: dict = field(init=False)

    def __post_init__(self):
        self.component = Components(self.gmm)
        d = torch.randn(self.gmm.dim, NUM_DIRECTIONS, generator=torch.Generator().manual_seed(DIRECTION_SEED),
                        dtype=torch.float64)
        directions = d / d.norm(dim=0, keepdim=True)
        sizes = {"validation": min(self.n, 1024), "test": self.n}  # selection needs fewer samples
        self.splits = {name: Split(name, seeds, self.gmm, self.component, directions, sizes[name])
                       for name, seeds in SPLITS.items()}


def make_problems(args) -> list[Problem]:
    n2d, n64 = (1024, 2048) if args.quick else (4096, 2048)
    if args.samples:
        n2d = n64 = args.samples
    table = {"mog2d": lambda: Problem("mog2d", GaussianMixture.ring2d(), n2d),
             "mog64": lambda: Problem("mog64", GaussianMixture.random(64, 16), n64)}
    return [table[name]() for name in args.problems]


# -- samplers ---------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A sampler set up on one grid: ``run()`` returns the samples, started from x / sigma = y_scale * noise
    at noise level ve_start; ``readback`` is the conversion check of the grid (None for defaults)."""

    run: Callable[[], Tensor]
    ve_start: float
    y_scale: float = 1.0
    readback: dict | None = None


@dataclass
class Sampler:
    """``build(split, steps, grid, clock, dtype) -> Prepared``; ``grid=None`` means the library's default."""

    name: str
    family: str  # diffusekit | k-diffusion | diffusers
    build: Callable
    heun_type: bool = False
    stochastic: bool = False
    takes_grid: bool = True
    has_default: bool = True
    float64: bool = False  # can run in float64 (for the identical-grid check)
    meta: dict = field(default_factory=dict)

    def steps(self, budget: int) -> int:
        return math.ceil((budget + 1) / 2) if self.heun_type else budget


def ours(label: str, sampler_name: str, options: dict | None = None) -> Sampler:
    options = dict(options or {})

    def build(split: Split, steps: int, grid: GridSpec | None, clock: Clock, dtype=torch.float32) -> Prepared:
        ve = (grid or KARRAS_DEFAULT).ve(steps)
        schedule, ts = ours_grid(ve)
        readback = readback_error(schedule(ts[:-1]).ve_sigma, ve)
        denoise = clock.wrap(split.gmm.denoiser(schedule))
        noise = split.noise.to(dtype)

        def run() -> Tensor:
            return sample(denoise, noise, ts, schedule, sampler_name, generator=split.generator(), **options)

        return Prepared(run, float(schedule(ts[0]).ve_sigma), 1.0, readback)

    return Sampler(label, "diffusekit", build, heun_type=nfe(sampler_name, 3) == 5,
                   stochastic=sampler_name in (EDM_CHURN, "ddpm", "euler_maruyama", "dpmpp_3m_sde"), float64=True,
                   meta={"sampler": sampler_name, "options": options})


def ours_samplers() -> list[Sampler]:
    samplers = [ours("euler", "euler"), ours("heun", "heun"), ours("dpmpp_2m", "dpmpp_2m")]
    samplers += [ours(f"multistep{k}", "multistep", {"order": k}) for k in (2, 3, 4)]
    samplers += [ours(f"multistep{k}+corrector", "multistep", {"order": k, "corrector": True}) for k in (2, 3, 4)]
    # noise prediction at or below unit noise (Adams-Bashforth in ve_sigma there), data prediction above
    samplers += [ours(f"multistep{k}+corrector switch", "multistep", {"order": k, "corrector": True,
                                                                      "prediction": "switch"}) for k in (3, 4)]
    samplers += [ours("multistep4 noise", "multistep", {"order": 4, "prediction": "noise",
                                                        "lower_order_final": False})]
    samplers += [ours(f"unipc{k}", "unipc", {"order": k}) for k in (2, 3)]  # bh2 + UniC, as diffusers' default
    samplers += [ours("ddim", "ddim"), ours("edm_churn", EDM_CHURN, CHURN), ours("ddpm", "ddpm"),
                 ours("euler_maruyama", "euler_maruyama")]
    samplers += [ours("dpmpp_3m_sde", "dpmpp_3m_sde")]
    return samplers


def import_k_diffusion():
    """``k_diffusion.sampling`` without the package's ``__init__`` (which imports its training and
    evaluation code: clip, clean-fid, torchvision). torchvision is stubbed only while importing: the
    sampling module imports ``torchvision.transforms.functional`` at module level but never uses it."""
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


KD_CHURN = {"s_churn": CHURN["S_churn"], "s_tmin": CHURN["S_tmin"], "s_tmax": CHURN["S_tmax"],
            "s_noise": CHURN["S_noise"]}


def kd_samplers(kd) -> list[Sampler]:
    """Every k-diffusion sampler that takes a ``sigmas`` tensor (dpm_fast / dpm_adaptive take only a
    range). ``noise``: the sampler accepts a ``noise_sampler``, fed from the split's SDE generator;
    ``global_noise``: it draws with ``torch.randn_like`` (seeded from the split before each run)."""

    def make(label: str, fn_name: str, options: dict | None = None, heun: bool = False,
             stochastic: bool = False, noise: bool = False, global_noise: bool = False) -> Sampler:
        options = dict(options or {})
        fn = getattr(kd, fn_name)

        def build(split: Split, steps: int, grid: GridSpec | None, clock: Clock, dtype=torch.float32):
            ve = (grid or KARRAS_DEFAULT).ve(steps)
            sigmas = ve.to(dtype)
            readback = readback_error(sigmas[:-1], ve)
            model = clock.wrap(kd_model(split.gmm))
            x_start = split.noise.to(dtype) * sigmas[0]

            def run() -> Tensor:
                kwargs = dict(options)
                if noise:
                    g = split.generator()
                    kwargs["noise_sampler"] = lambda sigma, sigma_next: torch.randn(
                        x_start.shape, generator=g, dtype=dtype)
                if global_noise:
                    torch.manual_seed(split.seeds.sde)
                return fn(model, x_start, sigmas, disable=True, **kwargs)

            return Prepared(run, float(sigmas[0]), 1.0, readback)

        return Sampler(f"kd {label}", "k-diffusion", build, heun_type=heun, stochastic=stochastic, float64=True,
                       meta={"function": fn_name, "options": options})

    return [
        make("euler", "sample_euler"),
        make("heun", "sample_heun", heun=True),
        make("dpm_2", "sample_dpm_2", heun=True),
        make("lms", "sample_lms"),
        make("dpmpp_2m", "sample_dpmpp_2m"),
        make("dpmpp_2s", "sample_dpmpp_2s_ancestral", {"eta": 0.0}, heun=True, noise=True),
        make("dpmpp_3m", "sample_dpmpp_3m_sde", {"eta": 0.0}, noise=True),
        make("euler_ancestral", "sample_euler_ancestral", stochastic=True, noise=True),
        make("heun churn", "sample_heun", KD_CHURN, heun=True, stochastic=True, global_noise=True),
        make("dpmpp_2m_sde", "sample_dpmpp_2m_sde", stochastic=True, noise=True),
        make("dpmpp_3m_sde", "sample_dpmpp_3m_sde", stochastic=True, noise=True),
    ]


DDPM_TABLE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
# Schedulers whose set_timesteps takes sigmas= or timesteps= but that are left out, and why.
DIFFUSERS_LEFT_OUT = {
    "EDMEulerScheduler": "its sigmas= is a ramp in [0, 1] mapped through its own karras/exponential "
                         "sigma_schedule (the only two allowed), not a sigma sequence; the same Euler step as "
                         "EulerDiscreteScheduler, which is included",
    "DPMSolverSinglestepScheduler": "takes integer timesteps like DPMSolverMultistep; left out to keep the run "
                                    "time (its multistep sibling is included)",
    "DDPMParallelScheduler": "the DDPM step batched over timesteps for parallel sampling; DDPMScheduler is "
                             "included",
    "CMStochasticIterativeScheduler, LCMScheduler, TCDScheduler, SCMScheduler, FlowMatchLCMScheduler, "
    "FlowMapEulerDiscreteScheduler, PiflowScheduler": "samplers for distilled (consistency / flow-map) models",
    "DDPMWuerstchenScheduler, HeliosScheduler, HeliosDMDScheduler, LTXEulerAncestralRFScheduler, "
    "MiniMaxH3Scheduler": "tied to one model family's time convention",
}


def diffusers_samplers(diffusers) -> list[Sampler]:
    """kind: how the scheduler's sample and noise level relate to x_t:
    've' (the sample is x_t / alpha and the model sees ``scale_model_input`` = x_t; level: sigmas[i] as
    ve_sigma), 'vp' (the sample is x_t; level: sigmas[i] as ve_sigma), 'abar' (the sample is x_t; level:
    alphas_cumprod[timesteps[i]]), 'flow' (x_t = (1 - s) x0 + s noise, s = sigmas[i]; a velocity model).
    path: how a grid is passed: 'sigmas' (ve), 'flow_sigmas', 'table_int' / 'table_float' (timesteps into a
    table built for the grid), or None (defaults only)."""

    def make(label: str, cls_name: str, options: dict, default_kind: str, path: str | None, heun: bool = False,
             stochastic: bool = False, grid_options: dict | None = None, grid_kind: str | None = None) -> Sampler:
        cls = getattr(diffusers, cls_name)
        grid_options = {**options, **(grid_options or {})}

        def build(split: Split, steps: int, grid: GridSpec | None, clock: Clock, dtype=torch.float32):
            kind = default_kind if grid is None else (grid_kind or default_kind)
            if grid is None:
                scheduler = cls(**options) if kind == "flow" else cls(**{**DDPM_TABLE, **options})
                configure = lambda: scheduler.set_timesteps(steps)  # noqa: E731
            else:
                ve = grid.ve(steps)
                if path == "sigmas":
                    scheduler = cls(**{**DDPM_TABLE, **grid_options})
                    configure = lambda: scheduler.set_timesteps(sigmas=ve.tolist())  # noqa: E731
                elif path == "flow_sigmas":
                    scheduler = cls(**grid_options)
                    configure = lambda: scheduler.set_timesteps(sigmas=flow_sigmas(ve))  # noqa: E731
                else:
                    betas, index = table_for(ve)
                    scheduler = cls(**{**grid_options, "num_train_timesteps": len(betas), "trained_betas": betas})
                    ts = index.tolist() if path == "table_int" else float_timesteps(scheduler, ve)
                    configure = lambda: scheduler.set_timesteps(timesteps=ts)  # noqa: E731
            configure()

            def level(i: int) -> tuple[float, float]:
                """(alpha, sigma) of the x_t the model sees at evaluation i."""
                if kind == "flow":
                    s = float(scheduler.sigmas[i])
                    return 1.0 - s, s
                if kind == "abar":
                    abar = float(scheduler.alphas_cumprod[int(scheduler.timesteps[i])])
                    return math.sqrt(abar), math.sqrt(1.0 - abar)
                ve_i = float(scheduler.sigmas[i])
                a = 1.0 / math.sqrt(1.0 + ve_i * ve_i)
                return a, ve_i * a

            levels = [level(i) for i in range(len(scheduler.timesteps))]
            readback = None
            if grid is not None:
                unique = [lv for j, lv in enumerate(levels) if not (heun and j % 2 == 0 and j > 0)]
                readback = readback_error([s / a for a, s in unique], ve)
            gmm = split.gmm

            def model(x_in: Tensor, i: int) -> Tensor:  # eps = (x_t - alpha x0_hat) / sigma, or velocity
                a, s = levels[i]
                x64 = x_in.to(torch.float64)
                x0 = gmm.x0_hat(x64, a, s)
                out = (x64 - x0) / s if kind == "flow" else (x64 - a * x0) / s
                return out.to(x_in.dtype)

            timed = clock.wrap(model)
            a0, s0 = levels[0]
            natural = s0 / a0 if kind == "ve" else s0  # the sample's scale per unit of noise at the start
            init = float(getattr(scheduler, "init_noise_sigma", 1.0)) if grid is None else natural
            ve_start = math.inf if a0 == 0.0 else s0 / a0

            def run() -> Tensor:
                configure()
                x = split.noise.to(dtype) * init
                step_options = {"generator": split.generator()} if stochastic else {}
                for i, t in enumerate(scheduler.timesteps):
                    x_in = scheduler.scale_model_input(x, t) if kind == "ve" else x
                    x = scheduler.step(timed(x_in, i), t, x, return_dict=False, **step_options)[0]
                return x

            return Prepared(run, ve_start, init / natural, readback)

        return Sampler(f"hf {label}", "diffusers", build, heun_type=heun, stochastic=stochastic,
                       takes_grid=path is not None,
                       meta={"scheduler": cls_name, "options": options, "kind": default_kind, "grid_path": path,
                             "grid_kind": grid_kind or default_kind,
                             "grid_options": grid_options if path else None})

    dpmpp = {"algorithm_type": "dpmsolver++"}
    no_clip = {"clip_sample": False}  # clipping x0 to [-1, 1] is an image-data option
    return [
        make("Euler", "EulerDiscreteScheduler", {}, "ve", "sigmas"),
        make("Heun", "HeunDiscreteScheduler", {}, "ve", "table_float", heun=True),
        make("DPM++2M", "DPMSolverMultistepScheduler", {**dpmpp, "solver_order": 2}, "vp", "table_int"),
        make("DPM++3M", "DPMSolverMultistepScheduler", {**dpmpp, "solver_order": 3}, "vp", "table_int"),
        make("UniPC", "UniPCMultistepScheduler", {}, "vp", "flow_sigmas",
             grid_options={"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, grid_kind="flow"),
        make("FlowMatch Euler", "FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": 1000}, "flow",
             "flow_sigmas"),
        make("DDIM", "DDIMScheduler", no_clip, "abar", None),
        make("DDPM", "DDPMScheduler", no_clip, "abar", "table_int", stochastic=True),
    ]


# -- running and scoring ----------------------------------------------------------------------------
def evaluate(split: Split, sampler: Sampler, budget: int, grid: GridSpec | None, repeats: int) -> tuple[dict, Tensor]:
    clock = Clock()
    prepared = sampler.build(split, sampler.steps(budget), grid, clock)
    output, calls, best_wall, best_overhead = None, 0, math.inf, math.inf
    for _ in range(repeats):
        clock.reset()
        start = time.perf_counter()
        x = prepared.run()
        wall = time.perf_counter() - start
        if output is None:
            output, calls = x, clock.calls
        if wall < best_wall:  # the sampler's own time relative to the denoiser's, in the same run
            best_wall, best_overhead = wall, (wall - clock.seconds) / clock.seconds
    ref, ref_component = split.reference(prepared.ve_start, prepared.y_scale)
    result = {"nfe": calls, "ve_sigma_start": prepared.ve_start, "y_scale": prepared.y_scale,
              "wall_ms": 1e3 * best_wall, "overhead_ratio": best_overhead}
    if prepared.readback is not None:
        result["readback"] = prepared.readback
    result.update(score(split, output, ref, ref_component))
    return result, output


def score(split: Split, x: Tensor, ref: Tensor, ref_component: Tensor) -> dict:
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        nan = float("nan")
        return {"rmse": nan, "median": nan, "flip": nan, "swd": nan, "tv": nan,
                "nonfinite": int((~torch.isfinite(x)).any(1).sum())}
    err = x - ref
    component = split.component(x)
    hist = torch.bincount(component, minlength=split.gmm.num_components).to(torch.float64) / len(x)
    return {"rmse": float(err.pow(2).mean().sqrt()),
            "median": float(err.pow(2).mean(1).sqrt().median()),
            "flip": float((component != ref_component).double().mean()),
            "swd": split.sliced_w2(x),
            "tv": float(0.5 * (hist - split.gmm.weights).abs().sum())}


def finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def selection_key(sampler: Sampler, result: dict) -> tuple[float, float]:
    """The one criterion, applied on the validation split: deterministic samplers follow the PF-ODE (lowest
    median error, tie-break RMSE); stochastic ones are judged on the distribution (lowest sliced W2, then TV)."""
    if sampler.stochastic:
        return finite(result["swd"]), finite(result["tv"])
    return finite(result["median"]), finite(result["rmse"])


@dataclass
class Pair:
    ours: str
    peer: str
    same: bool  # the same algorithm: samples should agree to float rounding
    note: str


PAIRS = [
    Pair("euler", "kd euler", True, "Euler in ve_sigma (EDM Algorithm 1 without the correction)"),
    Pair("euler", "hf Euler", True, "Euler in ve_sigma; diffusers holds sigmas in float32"),
    Pair("euler", "hf FlowMatch Euler", True, "Euler in flow time equals Euler in ve_sigma exactly (both are "
         "exact for constant x0_hat); diffusers holds the flow sigmas in float32"),
    Pair("ddim", "kd euler", True, "DDIM (eta = 0) is Euler in (x / alpha, ve_sigma)"),
    Pair("heun", "kd heun", True, "EDM Algorithm 1"),
    Pair("heun", "hf Heun", True, "EDM Algorithm 1; diffusers' levels come from float timesteps into a float32 "
         "alphas_cumprod table"),
    Pair("dpmpp_2m", "kd dpmpp_2m", True, "DPM-Solver++(2M)"),
    Pair("dpmpp_2m", "hf DPM++2M", True, "DPM-Solver++(2M); diffusers' levels are integer timesteps of a float32 "
         "alphas_cumprod table (relative error up to ~1e-2 at ve = 0.002)"),
    Pair("multistep3", "kd dpmpp_3m", False, "both third-order exponential multistep in log-SNR with data "
         "prediction, different weights for the higher differences; ours drops to order 2 on the step onto "
         "the last nonzero level below 15 steps"),
    Pair("multistep3", "hf DPM++3M", False, "DPM-Solver++(3M): the second difference gets half the Taylor "
         "weight, ours integrates the order-3 interpolant exactly"),
    Pair("multistep2+corrector", "hf UniPC", False, "UniPC-2 (bh2 coefficients) vs ours: exact integration "
         "of the interpolant in predictor and corrector"),
    Pair("unipc2", "hf UniPC", True, "UniPC-2 (bh2, UniC, lower_order_final); diffusers holds the flow sigmas "
         "in float32"),
    Pair("multistep4", "kd lms", False, "LMS is Adams-Bashforth on dx/dsigma = eps in ve_sigma; ours by default "
         "interpolates x0_hat in ve_sigma (data prediction, exponential integrator)"),
    Pair("multistep4 noise", "kd lms", True, "Adams-Bashforth on dx/dsigma = eps in ve_sigma, order 4 from the "
         "start-up ramp on; LMS takes each coefficient by scipy quad (epsrel 1e-4), ours by Gauss-Legendre"),
    Pair("ddpm", "kd euler_ancestral", True, "the DDPM posterior step (eta = 1) with the same noise draws "
         "(k-diffusion's noise_sampler fed from the same generator)"),
    Pair("ddpm", "hf DDPM", True, "the DDPM posterior step with the same noise draws; diffusers' levels are "
         "integer timesteps of a float32 alphas_cumprod table"),
    Pair("edm_churn", "kd heun churn", False, "the same algorithm (EDM Algorithm 2), but k-diffusion draws "
         "the churn noise from torch's global generator at every step, ours only where churn applies: other "
         "noise, so only the distributions (swd, tv) compare"),
    Pair("dpmpp_3m_sde", "kd dpmpp_3m_sde", True, "DPM-Solver++(3M) SDE (eta = 1) with the same noise draws "
         "(k-diffusion's noise_sampler fed from the same generator instead of its Brownian tree)"),
    Pair("euler_maruyama", "kd dpmpp_2m_sde", False, "the same reverse SDE, discretised differently "
         "(Euler-Maruyama in t vs a second-order exponential integrator in log-SNR)"),
]


def run_problem(problem: Problem, samplers: list[Sampler], budgets: list[int], grids: list[GridSpec],
                repeats: int, log) -> dict:
    validation, test = problem.splits["validation"], problem.splits["test"]
    by_name = {s.name: s for s in samplers}
    paired = {p.ours for p in PAIRS} | {p.peer for p in PAIRS}
    cache: dict[tuple, dict] = {}
    outputs: dict[tuple, Tensor] = {}

    def get(sampler: Sampler, budget: int, grid: GridSpec | None, split: Split, repeats: int = 1) -> dict:
        key = (sampler.name, grid.name if grid else "default", split.name, budget)
        if key not in cache:
            cache[key], x = evaluate(split, sampler, budget, grid, repeats)
            if grid in IDENTICAL_GRIDS and split is test and sampler.name in paired:
                outputs[key] = x
        return cache[key]

    # 1. each library's defaults, on the test split (nothing is selected), timed. diffusekit's default grid
    # (``timesteps(schedule, steps)``: Karras, 0.002 .. 80, rho = 7) is KARRAS_DEFAULT, and so is the
    # grid k-diffusion's EDM configurations use (``get_sigmas_karras(n, 0.002, 80, rho=7)``, the same
    # formula evaluated in float32): those runs are shared with table 3.
    def default_grid(s: Sampler) -> GridSpec | None:
        return KARRAS_DEFAULT if s.family in ("diffusekit", "k-diffusion") else None

    if "euler" in by_name:  # warm up: the first calls pay one-off costs
        evaluate(test, by_name["euler"], budgets[0], KARRAS_DEFAULT, 1)
    defaults = {s.name: {b: get(s, b, default_grid(s), test, repeats) for b in budgets}
                for s in samplers if s.has_default}
    log(f"  {problem.name}: defaults done")
    gridded = [s for s in samplers if s.takes_grid]
    # 3. identical grids, on the test split
    identical = {g.name: {s.name: {b: get(s, b, g, test) for b in budgets} for s in gridded}
                 for g in IDENTICAL_GRIDS}
    log(f"  {problem.name}: identical grids done")
    # 2. the search, on the validation split; the selected grid is then run on the test split
    search: dict[str, dict[str, dict[int, dict]]] = {}
    for s in gridded:
        search[s.name] = {g.name: {b: get(s, b, g, validation) for b in budgets} for g in grids}
        log(f"  {problem.name}: searched {s.name}")
    per_sampler = {}
    for s in gridded:
        per_sampler[s.name] = {}
        for b in budgets:
            grid = min(grids, key=lambda g, s=s, b=b: selection_key(s, search[s.name][g.name][b]))
            per_sampler[s.name][b] = {"grid": grid.name, "validation": search[s.name][grid.name][b],
                                      "test": get(s, b, grid, test)}
    side_best: dict[str, dict] = {}
    for family in dict.fromkeys(s.family for s in gridded):
        side_best[family] = {}
        for kind, stochastic in (("deterministic", False), ("stochastic", True)):
            members = [s for s in gridded if s.family == family and s.stochastic == stochastic]
            if not members:
                continue
            side_best[family][kind] = {}
            for b in budgets:
                best = min(members, key=lambda s, b=b: selection_key(s, per_sampler[s.name][b]["validation"]))
                side_best[family][kind][b] = {"sampler": best.name, **per_sampler[best.name][b]}
    # the identical-grid comparison of counterparts
    pairs = []
    for pair in PAIRS:
        if pair.ours not in by_name or pair.peer not in by_name:
            continue
        mine, theirs = by_name[pair.ours], by_name[pair.peer]
        for grid in IDENTICAL_GRIDS:
            entry = {"ours": pair.ours, "peer": pair.peer, "grid": grid.name, "same_algorithm": pair.same,
                     "note": pair.note, "float32": {}, "float64": {}}
            for b in budgets:
                a, c = outputs[(mine.name, grid.name, "test", b)], outputs[(theirs.name, grid.name, "test", b)]
                entry["float32"][b] = float((a - c).abs().max())
                if pair.same and theirs.float64:
                    runs = [s.build(test, s.steps(b), grid, Clock(), torch.float64).run() for s in (mine, theirs)]
                    entry["float64"][b] = float((runs[0] - runs[1]).abs().max())
            pairs.append(entry)
    return {"defaults": defaults, "identical": identical, "search": search, "per_sampler": per_sampler,
            "side_best": side_best, "pairs": pairs, "cache": cache}


# -- adaptive step size at matched tolerances --------------------------------------------------------
ADAPTIVE_TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5)
ADAPTIVE_SIGMA_MIN = 1e-5  # k-diffusion's dpm_adaptive needs sigma_min > 0
ADAPTIVE_VE_START = 80.0


def adaptive_comparison(problem: Problem, kd) -> list[dict]:
    """One row per (sampler, tolerance): median and RMS error against the exact PF-ODE solution from
    ve_sigma = 80, NFE, accepted and rejected steps (module docstring, ``--adaptive``)."""
    split = problem.splits["test"]
    reference, _ = split.reference(ADAPTIVE_VE_START, 1.0)
    schedule = schedules.get("edm", sigma_max=ADAPTIVE_VE_START)  # t = 1 is ve_sigma = 80
    noise = split.noise.to(torch.float64)
    rows = []

    def row(sampler: str, tol: float, x: Tensor, calls: int, seconds: float, **extra) -> dict:
        err = (x.to(torch.float64) - reference).pow(2).mean(1).sqrt()
        return {"sampler": sampler, "tol": tol, "median": float(err.median()), "rmse": float(err.pow(2).mean().sqrt()),
                "nfe": calls, "seconds": seconds, **extra}

    for tol in ADAPTIVE_TOLERANCES:
        for method in ("bs32", "dp54"):
            seen = []
            start = time.perf_counter()
            x = sample(split.gmm.denoiser(schedule), noise, torch.tensor([1.0, 0.0], dtype=torch.float64), schedule,
                       "adaptive", rtol=tol, atol=tol, method=method,
                       callback=lambda info, seen=seen: seen.append(info["nfe"]))
            rows.append(row(f"adaptive {method}", tol, x, seen[-1], time.perf_counter() - start))
        if kd is not None:
            for order in (2, 3):
                clock = Clock()
                start = time.perf_counter()
                x, info = kd.sample_dpm_adaptive(clock.wrap(kd_model(split.gmm)), noise * ADAPTIVE_VE_START,
                                                 ADAPTIVE_SIGMA_MIN, ADAPTIVE_VE_START, order=order, rtol=tol,
                                                 atol=tol, disable=True, return_info=True)
                rows.append(row(f"kd dpm_adaptive order {order}", tol, x, clock.calls, time.perf_counter() - start,
                                accepted=info["n_accept"], rejected=info["n_reject"]))
    return rows


def adaptive_main(args) -> int:
    torch.set_num_threads(1)
    try:
        kd, status = import_k_diffusion(), "ok"
    except ImportError as e:
        kd, status = None, f"not installed ({e}); run `make bench-deps`"
    report = {"meta": {"versions": versions(kd is not None, False), "threads": 1, "k-diffusion": status,
                       "tolerances": list(ADAPTIVE_TOLERANCES), "ve_start": ADAPTIVE_VE_START,
                       "kd_sigma_min": ADAPTIVE_SIGMA_MIN}, "problems": {}}
    print(f"# Adaptive samplers at matched rtol = atol (float64, from ve_sigma = {ADAPTIVE_VE_START:g}); "
          f"k-diffusion: {status}")
    for problem in make_problems(args):
        rows = adaptive_comparison(problem, kd)
        report["problems"][problem.name] = {"samples": problem.n, "rows": rows}
        print(f"\n## {problem.name} ({problem.n} samples)\n\n| sampler | rtol = atol | median error | RMSE | NFE |\n"
              "|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['sampler']} | {r['tol']:.0e} | {r['median']:.2e} | {r['rmse']:.2e} | {r['nfe']} |")
    output = args.output if args.output_given else RESULTS / "samplers_adaptive.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(jsonable(report), indent=1) + "\n")
    print(f"\nWrote {output}.")
    return 0


# -- reporting --------------------------------------------------------------------------------------
def cell(sampler: Sampler, budget: int, result: dict, key: str) -> str:
    value = result[key]
    if value is None:
        return ""
    if key in ("rmse", "median"):
        text = f"{value:.2e}"
    elif key in ("flip", "tv"):
        text = f"{100 * value:.2f}%"
    elif key == "swd":
        text = f"{value:.4f}"
    elif key == "overhead_ratio":
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    if key in ("rmse", "median", "flip") and sampler.stochastic:
        text += "*"
    if result["nfe"] != budget:
        text += f" [{result['nfe']}]"
    return text


def grid_table(title: str, samplers: list[Sampler], rows: dict, budgets: list[int], key: str) -> list[str]:
    lines = ["", title, "", "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for s in samplers:
        if s.name in rows:
            lines.append(f"| {s.name} | " + " | ".join(cell(s, b, rows[s.name][b], key) for b in budgets) + " |")
    return lines


def splits_lines(problem: Problem) -> list[str]:
    lines = []
    for split in problem.splits.values():
        seeds = split.seeds
        lines.append(f"- {split.name} split (noise seed {seeds.noise}, data seed {seeds.data}, SDE seed "
                     f"{seeds.sde}): SWD floor (exact data vs independent exact data, seed {seeds.floor}) "
                     f"{split.swd_floor:.4f}")
        for entry in split.reference_log:
            lines.append(f"  - reference PF-ODE solve from ve_sigma={entry['ve_sigma_start']:.9g} "
                         f"(y = {entry['y_scale']:.8f} * noise): {entry['seconds']:.1f}s, "
                         f"{entry['denoiser_calls']} denoiser calls")
    return lines


def defaults_report(problem: Problem, samplers: list[Sampler], ran: dict, budgets: list[int]):
    """Table 1: each library's defaults (test split)."""
    rows = ran["defaults"]
    lines = [f"### {problem.name} - table 1: each library's default grid and options (test split)"]
    for key, what in (("median", "median per-sample error vs exact PF-ODE"), ("rmse", "RMSE vs exact PF-ODE"),
                      ("swd", "sliced W2 to exact data"), ("tv", "mode-weight TV distance"),
                      ("overhead_ratio", "sampler overhead: (wall time - time in the denoiser) / time in "
                                         "the denoiser, same run")):
        lines += grid_table(f"#### {problem.name}: defaults, {what}", samplers, rows, budgets, key)
    summary = []
    lines += ["", f"#### {problem.name}: best default per library (deterministic: median error; "
              "stochastic: SWD)", "", "| NFE | kind | library | sampler | median | RMSE | SWD |",
              "|---:|---|---|---|---:|---:|---:|"]
    by_name = {s.name: s for s in samplers}
    for b in budgets:
        for kind, stochastic in (("deterministic", False), ("stochastic", True)):
            for family in dict.fromkeys(s.family for s in samplers):
                members = [by_name[n] for n in rows if by_name[n].family == family
                           and by_name[n].stochastic == stochastic]
                if not members:
                    continue
                best = min(members, key=lambda s, b=b: selection_key(s, rows[s.name][b]))
                r = rows[best.name][b]
                summary.append({"nfe": b, "kind": kind, "family": family, "sampler": best.name,
                                "median": r["median"], "rmse": r["rmse"], "swd": r["swd"]})
                lines.append(f"| {b} | {kind} | {family} | {best.name} | {r['median']:.3g} | {r['rmse']:.3g} | "
                             f"{r['swd']:.4f} |")
    return lines, summary


def search_report(problem: Problem, samplers: list[Sampler], ran: dict, budgets: list[int]):
    """Table 2: each sampler's and each library's best over the same search (validation -> test)."""
    per = ran["per_sampler"]
    gridded = [s for s in samplers if s.name in per]
    lines = [f"### {problem.name} - table 2: best over the same grid search (selected on validation, "
             "reported on test)"]
    test_rows = {name: {b: per[name][b]["test"] for b in budgets} for name in per}
    lines += grid_table(f"#### {problem.name}: each sampler on its own best grid, median error (test)",
                        [s for s in gridded if not s.stochastic], test_rows, budgets, "median")
    lines += grid_table(f"#### {problem.name}: each sampler on its own best grid, RMSE (test)",
                        [s for s in gridded if not s.stochastic], test_rows, budgets, "rmse")
    lines += grid_table(f"#### {problem.name}: stochastic samplers on their own best grid, SWD (test)",
                        [s for s in gridded if s.stochastic], test_rows, budgets, "swd")
    summary = []
    lines += ["", f"#### {problem.name}: each library's best sampler and grid", "",
              "| NFE | kind | library | sampler | grid | validation | test median | test RMSE | test SWD | "
              "test / ours |", "|---:|---|---|---|---|---:|---:|---:|---:|---:|"]
    for b in budgets:
        for kind in ("deterministic", "stochastic"):
            key = "swd" if kind == "stochastic" else "median"
            mine = ran["side_best"].get("diffusekit", {}).get(kind, {}).get(b)
            for family, entry in ran["side_best"].items():
                if kind not in entry:
                    continue
                e = entry[kind][b]
                t = e["test"]
                ratio = t[key] / mine["test"][key] if mine and mine["test"][key] > 0 else math.nan
                summary.append({"nfe": b, "kind": kind, "family": family, "sampler": e["sampler"],
                                "grid": e["grid"], "validation_" + key: e["validation"][key],
                                "test_median": t["median"], "test_rmse": t["rmse"], "test_swd": t["swd"],
                                f"test_{key}_over_ours": ratio, "nfe_used": t["nfe"]})
                used = f" [{t['nfe']}]" if t["nfe"] != b else ""
                lines.append(f"| {b} | {kind} | {family} | {e['sampler']}{used} | {e['grid']} | "
                             f"{e['validation'][key]:.3g} | {t['median']:.3g} | {t['rmse']:.3g} | {t['swd']:.4f} | "
                             f"{ratio:.2f} |")
    return lines, summary


def identical_report(problem: Problem, samplers: list[Sampler], ran: dict, budgets: list[int]):
    """Table 3: every sampler on the identical grids; counterparts' largest sample difference."""
    lines = [f"### {problem.name} - table 3: identical grids (test split)"]
    for grid_name, rows in ran["identical"].items():
        gridded = [s for s in samplers if s.name in rows]
        lines += grid_table(f"#### {problem.name}: {grid_name}, median error (SWD for stochastic *)",
                            [s for s in gridded if not s.stochastic], rows, budgets, "median")
        lines += grid_table(f"#### {problem.name}: {grid_name}, SWD", [s for s in gridded if s.stochastic], rows,
                            budgets, "swd")
    lines += ["", f"#### {problem.name}: counterparts on the identical grids: max |ours - peer| over samples "
              "(float32 as benchmarked; float64 rerun for k-diffusion)", "",
              "| ours | peer | grid | same algorithm | float32 max over NFE | float64 max over NFE | why |",
              "|---|---|---|---|---:|---:|---|"]
    for p in ran["pairs"]:
        f64 = f"{max(p['float64'].values()):.1e}" if p["float64"] else ""
        lines.append(f"| {p['ours']} | {p['peer']} | {p['grid']} | {'yes' if p['same_algorithm'] else 'no'} | "
                     f"{max(p['float32'].values()):.1e} | {f64} | {p['note']} |")
    return lines


def conversion_report(ran: dict) -> dict:
    """The largest relative error of each sampler's noise levels, read back from the library, against the
    grid's (over every grid and budget run), and of its first and last levels."""
    worst: dict[str, dict] = {}
    for (name, *_), r in ran["cache"].items():
        rb = r.get("readback")
        if rb is None:
            continue
        w = worst.setdefault(name, {"first": 0.0, "last": 0.0, "max": 0.0})
        for k in w:
            w[k] = max(w[k], rb[k])
    return worst


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


def compact(result: dict) -> dict:
    return {k: result[k] for k in ("nfe", "median", "rmse", "flip", "swd", "tv") if k in result}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: mog2d, NFE 5,10,20, 1024 test samples, 3 grids")
    parser.add_argument("--nfe", type=str, default=None, help="comma-separated NFE budgets")
    parser.add_argument("--problems", type=str, default=None, help="comma-separated: mog2d,mog64")
    parser.add_argument("--samples", type=int, default=None, help="test samples per problem (validation: at most 1024)")
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats of the defaults (min is reported)")
    parser.add_argument("--no-search", action="store_true",
                        help="search only the two identical grids (Karras rho=7, uniform flow)")
    parser.add_argument("--no-peers", action="store_true", help="run diffusekit's samplers only")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    parser.add_argument("--adaptive", action="store_true",
                        help="only the adaptive samplers at matched tolerances (ours vs k-diffusion's dpm_adaptive)")
    args = parser.parse_args(argv)
    args.output_given = args.output is not None
    try:
        args.budgets = [int(v) for v in args.nfe.split(",")] if args.nfe else \
            ([5, 10, 20] if args.quick else [5, 10, 20, 35, 50])
    except ValueError:
        parser.error(f"--nfe must be comma-separated integers, got {args.nfe!r}")
    if any(b < 2 for b in args.budgets):
        parser.error(f"every NFE budget must be at least 2, got {args.budgets}")
    args.problems = args.problems.split(",") if args.problems else (["mog2d"] if args.quick else ["mog2d", "mog64"])
    unknown = set(args.problems) - {"mog2d", "mog64"}
    if unknown:
        parser.error(f"unknown problem(s) {sorted(unknown)}; choose from mog2d, mog64")
    if args.no_search:
        args.grids = list(IDENTICAL_GRIDS)
    elif args.quick:
        args.grids = [KARRAS_DEFAULT, GridSpec("logsnr", sigma_min=0.05), FLOW_UNIFORM]
    else:
        args.grids = search_grids()
    if args.output is None:
        args.output = RESULTS / ("samplers_quick.json" if args.quick else "samplers.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.adaptive:
        return adaptive_main(args)
    torch.set_num_threads(1)
    began = time.perf_counter()

    def log(message: str):
        print(f"[{time.perf_counter() - began:7.1f}s] {message}", file=sys.stderr, flush=True)

    peers_status: dict[str, str] = {}
    samplers = ours_samplers()
    kd_ok = hf_ok = False
    if not args.no_peers:
        try:
            samplers += kd_samplers(import_k_diffusion())
            kd_ok, peers_status["k-diffusion"] = True, "ok"
        except ImportError as e:
            peers_status["k-diffusion"] = f"not installed ({e}); run `make bench-deps`"
        try:
            import diffusers

            diffusers.utils.logging.set_verbosity_error()
            samplers += diffusers_samplers(diffusers)
            hf_ok, peers_status["diffusers"] = True, "ok"
        except ImportError as e:
            peers_status["diffusers"] = f"not installed ({e}); run `make bench-deps`"
    else:
        peers_status = {"k-diffusion": "skipped (--no-peers)", "diffusers": "skipped (--no-peers)"}

    print("# Sampler benchmark on exact Gaussian mixtures")
    print()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, NFE budgets {args.budgets}, "
          f"repeats {args.repeats}, {len(args.grids)} grids searched: {', '.join(g.name for g in args.grids)}")
    print(f"our churn sampler is looked up as {EDM_CHURN!r}")
    for peer, status in peers_status.items():
        print(f"- {peer}: {status}")
    if not (kd_ok or hf_ok):
        print("- peers unavailable: running diffusekit's samplers only")

    report = {"meta": {}, "problems": {}}
    failures = []
    for problem in make_problems(args):
        described = (f"{problem.splits['validation'].n} validation / {problem.n} test samples, "
                     f"dim {problem.gmm.dim}, {problem.gmm.num_components} components")
        log(f"{problem.name}: {described}")
        data = problem.gmm.sample(problem.n, torch.Generator().manual_seed(SPLITS["test"].data))
        agreement = check_components(problem.gmm, problem.component, data)
        if agreement < 0.999:
            failures.append(f"{problem.name}: fast component() agrees with GaussianMixture.component on "
                            f"only {100 * agreement:.2f}% of points")
        ran = run_problem(problem, samplers, args.budgets, args.grids, args.repeats, log)
        conversions = conversion_report(ran)
        for p in ran["pairs"]:
            if p["float64"] and max(p["float64"].values()) > FLOAT64_TOLERANCE:
                failures.append(f"{problem.name}: {p['ours']} vs {p['peer']} on {p['grid']} (float64): max |diff| "
                                f"{max(p['float64'].values()):.2e} > {FLOAT64_TOLERANCE:.0e}")
        print()
        print(f"## {problem.name}: {described}")
        print()
        print(f"- component() check (fast vs GaussianMixture.component, data and perturbed data): "
              f"{100 * agreement:.2f}% agree")
        print("\n".join(splits_lines(problem)))
        print("- grid conversion, largest relative error of the levels each library holds (first / last / any):")
        for name, w in conversions.items():
            print(f"  - {name}: {w['first']:.1e} / {w['last']:.1e} / {w['max']:.1e}")
        t1, defaults_summary = defaults_report(problem, samplers, ran, args.budgets)
        t2, search_summary = search_report(problem, samplers, ran, args.budgets)
        t3 = identical_report(problem, samplers, ran, args.budgets)
        print("\n".join([""] + t1 + [""] + t2 + [""] + t3))
        sys.stdout.flush()
        report["problems"][problem.name] = {
            "samples": {name: split.n for name, split in problem.splits.items()}, "dim": problem.gmm.dim,
            "components": problem.gmm.num_components,
            "component_agreement": agreement,
            "splits": {name: {"seeds": vars(split.seeds), "swd_floor": split.swd_floor,
                              "references": split.reference_log} for name, split in problem.splits.items()},
            "conversion_readback": conversions,
            "table1_defaults": {"summary": defaults_summary, "results": ran["defaults"]},
            "table2_search": {"summary": search_summary, "side_best": ran["side_best"],
                              "per_sampler": ran["per_sampler"],
                              "validation": {s: {g: {b: compact(r) for b, r in rows.items()}
                                                 for g, rows in grids.items()} for s, grids in ran["search"].items()}},
            "table3_identical": {"pairs": ran["pairs"],
                                 "results": {g: {s: {b: compact(r) for b, r in rows.items()}
                                                 for s, rows in by_sampler.items()}
                                             for g, by_sampler in ran["identical"].items()}},
        }
    runtime = time.perf_counter() - began
    report["meta"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(kd_ok, hf_ok), "threads": torch.get_num_threads(), "budgets": args.budgets,
        "repeats": args.repeats, "quick": args.quick, "grids": [g.name for g in args.grids],
        "peers": peers_status, "runtime_s": runtime, "churn_sampler_name": EDM_CHURN,
        "seeds": {name: vars(seeds) for name, seeds in SPLITS.items()}, "direction_seed": DIRECTION_SEED,
        "samplers": [{"name": s.name, "family": s.family, "stochastic": s.stochastic, "heun_type": s.heun_type,
                      "takes_grid": s.takes_grid, **s.meta} for s in samplers],
        "diffusers_left_out": DIFFUSERS_LEFT_OUT if hf_ok else None,
        "float64_tolerance": FLOAT64_TOLERANCE, "reference_share_rtol": REFERENCE_SHARE_RTOL,
        "failures": failures,
    }
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
