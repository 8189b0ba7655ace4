"""Every inverse-problem method of ``diffusekit.inverse`` against the exact posterior of a Gaussian mixture.

The prior is a Gaussian mixture with its exact denoiser (``GaussianMixture.denoiser``) on the cosine schedule,
so the posterior of ``y = A x0 + sigma_y n`` is known in closed form (``GaussianMixture.posterior``: again a
mixture) and every gap between a method's samples and the posterior is the method's own error, not a network's.

Problems (``--problems``):

- ``ring_inpaint``: ``GaussianMixture.ring2d()``, coordinate 0 observed, noiseless (``Inpaint``);
- ``ring_project``: the ring, ``y = A x0 + 0.1 n`` with a random ``A [1, 2]`` (``Matrix``, Gaussian entries
  / sqrt(2));
- ``mog64_inpaint``: ``GaussianMixture.random(64, components=8)``, 32 of the 64 coordinates observed (a random
  half), noiseless;
- ``mog64_project``: the same mixture, ``A [16, 64]`` with Gaussian entries / sqrt(64), sigma_y = 0.1.

For each problem, measurements are drawn from the prior (``x_true ~`` mixture, ``y = A x_true + sigma_y n``):
a VALIDATION split of 3 and a disjoint TEST split of 5 (other seeds). For one ``y``, every method draws n
samples (``--n`` = 2000 on the 2-D problems, ``--n64`` = 1000 on the 64-D ones, for time; all of them given that
``y``: the measurements of a split run as one batch, each row its own problem), and the posterior gives n exact
samples and a second, independent set of n. Per ``y``, averaged over the split:

- ``swd``: sliced 2-Wasserstein distance (``targets.sliced_wasserstein``, 256 directions) to the exact samples;
  ``floor``: the same between the two exact sets (what a perfect sampler scores at this n); ``prior``: the same
  for n unconditional draws of the mixture (a method that ignores ``y``). On the ring the posterior has two
  separated modes and W2 grows like the square root of a mode-weight error, so its sampling noise is large:
  differences below about the floor are not significant;
- ``mean_error``: ``||mean(samples) - E[x0 | y]||`` (floor: the second exact set; prior: the mixture mean);
- ``residual``: the mean ``||A x - y||`` (``residual_exact``: the same for exact posterior samples; for a
  noisy problem it is of the order of ``sigma_y sqrt(m)``, which a method that projects onto ``A x = y``
  undershoots);
- ``nfe``: denoiser evaluations per sample, counted by a wrapper as rows passed to the denoiser over samples
  returned (SMC: every particle counts; DPS / MCG / reconstruction count a forward-and-backward call as one);
- ``nonfinite``: samples that came back NaN or inf (left out of the other metrics, counted here).

Tuning on VALIDATION (lowest mean swd), reported on TEST with the chosen setting: DPS ``scale``, MCG ``scale``
and reconstruction guidance ``weight`` from the same log-spaced grid (``--scales``, default 0.01 .. 100 in
half-decades, 9 values each; a choice at either end is flagged); RePaint ``resamples`` in 1, 2, 5, 10 with
``jump_length`` 5 or 10 (at the same number of grid steps, so its NFE grows with the resamples: the tables show
it); CCDF ``t0`` in 0.2, 0.4, 0.6, 0.8 with consistency ``pocs`` or ``replacement``. Replacement, POCS and ILVR
have no setting; SMC runs its default 16 particles (more particles only cost more: its own curve).

Outputs: the main TEST table (every method at ``--steps`` = 100 steps of the ``ddpm`` sampler on the uniform
time grid, its best validation setting); the same for one ODE sampler (``dpmpp_2m``; its step sizes searched
again, RePaint's and CCDF's schedules kept from ddpm, for time; SMC needs stochastic steps and is left out);
swd against NFE for each method at steps 10, 25, 50, 100, 200, 400 (ddpm, TEST, chosen settings; a point above
``--curve-max-nfe`` = 1000 evaluations per sample is skipped, which cuts RePaint's many resamples short); and
SMC's swd against particles (1, 4, 16, 64, 256) x steps (25, 100, 400) on TEST with ``--smc-n`` = 250 samples
per ``y`` (with its own floor, higher at that n). For the 64-D problems SMC's grid keeps only the cells with
particles x steps <= ``--smc-budget`` = 6400, for time.

State and noise are float32 (the denoiser computes in float64 and returns float32); exact samples, metrics and
measurements are float64. One thread. Everything in the JSON is measured by this script; the PNG draws the
curves (``benchmarks/results/inverse_mixture/curves.png``).

Usage::

    python benchmarks/inverse_mixture.py            # -> benchmarks/results/inverse_mixture.json (about 17 min)
    python benchmarks/inverse_mixture.py --quick    # smoke run: tiny sizes, every problem and method
    python benchmarks/inverse_mixture.py --problems ring_inpaint --n 500
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import diffusekit
from diffusekit.inverse import solve
from diffusekit.inverse.methods import repaint_path
from diffusekit.inverse.operators import Inpaint, Matrix
from diffusekit.sampling import timesteps
from diffusekit.schedules import Cosine
from diffusekit.targets import GaussianMixture, MixturePosterior, sliced_wasserstein

RESULTS = Path(__file__).resolve().parent / "results"
PROBLEMS = ("ring_inpaint", "ring_project", "mog64_inpaint", "mog64_project")
SPLIT_SEEDS = {"validation": 1001, "test": 2002}  # the measurements of each split
SPLIT_SIZES = {"validation": 3, "test": 5}
NOISE_SEED, SDE_SEED = 3003, 4004  # start noise and sampler noise, shared by every method (common random numbers)
EXACT_SEED = 5005  # exact posterior and prior draws
MIXTURE_SEED, OPERATOR_SEED = 0, 7
SIGMA_Y = 0.1
NUM_DIRECTIONS = 256  # sliced_wasserstein's default
SPACING = "uniform"  # the config's default time grid; ddpm's own: t = 1, 1 - 1/N, ..., 0
MAIN_SAMPLER, ODE_SAMPLER = "ddpm", "dpmpp_2m"
METHOD_ORDER = ("replacement", "repaint", "pocs", "ilvr", "ccdf", "mcg", "reconstruction", "dps", "smc")


# -- problems ---------------------------------------------------------------------------------------------------
@dataclass
class Problem:
    name: str
    description: str
    gmm: GaussianMixture
    operator: object
    matrix: Tensor = field(init=False)  # the dense A [m, d], float64

    def __post_init__(self):
        self.matrix = self.operator.matrix((self.gmm.dim,))

    @property
    def m(self) -> int:
        return self.matrix.shape[0]


def make_problem(name: str) -> Problem:
    g = torch.Generator().manual_seed(OPERATOR_SEED)
    if name.startswith("ring"):
        gmm = GaussianMixture.ring2d()
        if name == "ring_inpaint":
            return Problem(name, "2-D ring, coordinate 0 observed, noiseless", gmm,
                           Inpaint(torch.tensor([True, False])))
        A = torch.randn(1, 2, generator=g, dtype=torch.float64) / math.sqrt(2)
        return Problem(name, f"2-D ring, random projection A [1, 2], sigma_y = {SIGMA_Y}", gmm,
                       Matrix(A, sigma_y=SIGMA_Y))
    gmm = GaussianMixture.random(64, components=8, seed=MIXTURE_SEED)
    if name == "mog64_inpaint":
        mask = torch.zeros(64, dtype=torch.bool)
        mask[torch.randperm(64, generator=g)[:32]] = True
        return Problem(name, "64-D mixture (8 components), a random half of the coordinates observed, noiseless",
                       gmm, Inpaint(mask))
    A = torch.randn(16, 64, generator=g, dtype=torch.float64) / math.sqrt(64)
    return Problem(name, f"64-D mixture (8 components), random projection A [16, 64], sigma_y = {SIGMA_Y}", gmm,
                   Matrix(A, sigma_y=SIGMA_Y))


@functools.cache
def directions(dim: int) -> Tensor:
    """The unit directions of ``targets.sliced_wasserstein`` (its default 256, seed 0), built the same way."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(dim, NUM_DIRECTIONS, generator=g, dtype=torch.float64)
    return d / d.norm(dim=0, keepdim=True)


@dataclass
class Case:
    """One measurement with its exact posterior, two exact sample sets and a prior set.

    ``swd(x)`` is ``sliced_wasserstein(x, exact[:len(x)])`` with the exact set's sorted projections kept (every run
    is scored against the same set); ``make_cases`` checks it against the library function."""

    y: Tensor  # [1, *measurement shape], float64
    posterior: MixturePosterior
    exact: Tensor
    exact2: Tensor
    prior: Tensor
    sorted_exact: dict = field(default_factory=dict)

    def swd(self, x: Tensor) -> float:
        n = x.shape[0]
        dirs = directions(x.shape[1])
        if n not in self.sorted_exact:
            self.sorted_exact[n] = torch.sort(self.exact[:n] @ dirs, dim=0).values
        proj = torch.sort(x.to(torch.float64) @ dirs, dim=0).values
        return float(((proj - self.sorted_exact[n]) ** 2).mean().sqrt())


def make_cases(problem: Problem, split: str, count: int, n: int) -> list[Case]:
    g = torch.Generator().manual_seed(SPLIT_SEEDS[split])
    x_true = problem.gmm.sample(count, g)
    ys = problem.operator.measure(x_true, g)
    cases = []
    for i in range(count):
        y = ys[i:i + 1]
        posterior = problem.gmm.posterior(problem.matrix, problem.operator.flatten(y)[0], problem.operator.sigma_y)
        ge = torch.Generator().manual_seed(EXACT_SEED + 100 * SPLIT_SEEDS[split] + i)
        cases.append(Case(y, posterior, posterior.sample(n, ge), posterior.sample(n, ge), problem.gmm.sample(n, ge)))
    check = sliced_wasserstein(cases[0].exact2, cases[0].exact)
    if abs(cases[0].swd(cases[0].exact2) - check) > 1e-12 * max(check, 1.0):
        raise RuntimeError("the cached sliced W2 disagrees with targets.sliced_wasserstein")
    return cases


def reference_metrics(problem: Problem, cases: list[Case], n: int) -> dict:
    """The floor (a second exact set), the prior line and the exact samples' residual, averaged over the cases."""
    rows = []
    for c in cases:
        exact, exact2, prior = c.exact[:n], c.exact2[:n], c.prior[:n]
        target = c.posterior.mean()
        rows.append({"floor_swd": sliced_wasserstein(exact2, exact), "prior_swd": sliced_wasserstein(prior, exact),
                     "floor_mean_error": float((exact2.mean(0) - target).norm()),
                     "prior_mean_error": float((problem.gmm.mean() - target).norm()),
                     "residual_exact": float(problem.operator.residual(exact2, c.y.expand(n, *c.y.shape[1:])).mean())})
    return average(rows)


def average(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


# -- running a method -------------------------------------------------------------------------------------------
class Counter:
    """Counts the rows passed to the denoiser (one row = one evaluation for one sample or particle)."""

    def __init__(self, denoise):
        self.denoise, self.rows = denoise, 0

    def __call__(self, x_t, t, cond=None):
        self.rows += x_t.shape[0]
        return self.denoise(x_t, t, cond)


def run_method(problem: Problem, cases: list[Case], n: int, method: str, options: dict, sampler: str,
               steps: int) -> dict:
    """``n`` samples per case (the cases as one batch), scored per case and averaged."""
    schedule = Cosine()
    counter = Counter(problem.gmm.denoiser(schedule))
    y = torch.cat([c.y.expand(n, *c.y.shape[1:]) for c in cases]).to(torch.float32)
    noise = torch.randn(len(cases) * n, problem.gmm.dim, generator=torch.Generator().manual_seed(NOISE_SEED))
    ts = timesteps(schedule, steps, SPACING)
    began = time.perf_counter()
    x = solve(counter, schedule, problem.operator, y, noise, ts, method, torch.Generator().manual_seed(SDE_SEED),
              sampler=sampler, **options)
    seconds = time.perf_counter() - began
    x = x.to(torch.float64)
    rows = []
    for i, c in enumerate(cases):
        xi = x[i * n:(i + 1) * n]
        finite = torch.isfinite(xi).all(1)
        xi = xi[finite]  # non-finite samples are counted, and the metrics use the others (none: inf)
        if xi.shape[0] == 0:
            rows.append({"swd": math.inf, "mean_error": math.inf, "residual": math.inf, "nonfinite": n})
            continue
        rows.append({"swd": c.swd(xi), "mean_error": float((xi.mean(0) - c.posterior.mean()).norm()),
                     "residual": float(problem.operator.residual(xi, c.y.expand(xi.shape[0], *c.y.shape[1:])).mean()),
                     "nonfinite": n - xi.shape[0]})
    nonfinite = sum(r.pop("nonfinite") for r in rows)
    return {**average(rows), "nonfinite": nonfinite, "samples": x.shape[0], "nfe": counter.rows / x.shape[0],
            "seconds": seconds}


def settings(method: str, scales: list[float], quick: bool) -> list[dict]:
    """The validation grid of each method."""
    if method in ("dps", "mcg"):
        return [{"scale": s} for s in scales]
    if method == "reconstruction":
        return [{"weight": s} for s in scales]
    if method == "repaint":
        resamples = (1, 2) if quick else (1, 2, 5, 10)
        jumps = (2,) if quick else (5, 10)
        # resamples = 1 never jumps back: one run stands for every jump length
        return [{"jump_length": jumps[-1], "resamples": 1}] + [
            {"jump_length": j, "resamples": r} for j in jumps for r in resamples if r > 1]
    if method == "ccdf":
        t0s = (0.4, 0.8) if quick else (0.2, 0.4, 0.6, 0.8)
        return [{"t0": t0, "consistency": c} for c in ("pocs", "replacement") for t0 in t0s]
    if method == "smc":
        return [{"particles": 16}]
    return [{}]


def describe(options: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items()) or "-"


# -- the benchmark ----------------------------------------------------------------------------------------------
STEP_SIZE_METHODS = ("dps", "mcg", "reconstruction")


def tune(problem, cases, n, args, sampler, methods, log, fixed=None) -> tuple[dict, dict]:
    """Each method's validation grid; returns (the chosen settings, every validation result). ``fixed``: settings
    taken as they are (not searched) for some methods."""
    chosen, results = {}, {}
    for method in methods:
        grid = settings(method, args.scales, args.quick)
        if fixed and method in fixed:
            chosen[method] = fixed[method]
            continue
        if len(grid) == 1:
            chosen[method] = grid[0]
            continue
        rows = []
        for options in grid:
            r = run_method(problem, cases, n, method, options, sampler, args.steps)
            rows.append({"options": options, **r})
        best = min(range(len(rows)), key=lambda i: rows[i]["swd"])
        chosen[method] = rows[best]["options"]
        edge = method in STEP_SIZE_METHODS and best in (0, len(rows) - 1)
        results[method] = {"grid": rows, "at_grid_edge": edge}
        log(f"{problem.name} {sampler} validation {method}: chose {describe(chosen[method])} "
            f"(swd {rows[best]['swd']:.4f}{', AT THE GRID EDGE' if edge else ''})")
    return chosen, results


def predicted_nfe(method: str, options: dict, steps: int) -> int:
    """Denoiser calls per sample of a method on ``steps`` steps of a one-call-per-step sampler (the curve's cap)."""
    if method == "repaint":
        path = repaint_path(steps, options["jump_length"], options["resamples"])
        return sum(1 for a, b in zip(path, path[1:], strict=False) if b > a)
    return steps


def smc_grid(problem: Problem, args) -> list[tuple[int, int]]:
    cells = [(k, s) for s in args.smc_steps for k in args.smc_particles]
    if problem.gmm.dim > 2 and args.smc_budget:
        cells = [(k, s) for k, s in cells if k * s <= args.smc_budget]
    return cells


def run_problem(name: str, args, log) -> dict:
    problem = make_problem(name)
    n = args.n if problem.gmm.dim <= 2 else args.n64
    n_cases = {s: (1 if args.quick and s == "validation" else (2 if args.quick else SPLIT_SIZES[s]))
               for s in SPLIT_SIZES}
    cases = {s: make_cases(problem, s, n_cases[s], max(n, args.smc_n)) for s in SPLIT_SIZES}
    references = {s: reference_metrics(problem, cases[s], n) for s in cases}
    out = {"description": problem.description, "dim": problem.gmm.dim, "m": problem.m, "n": n,
           "sigma_y": problem.operator.sigma_y, "residual_noise_level": problem.operator.sigma_y * math.sqrt(problem.m),
           "measurements": {s: [c.y.flatten().tolist() if problem.gmm.dim <= 2 else None for c in cases[s]]
                            for s in cases},
           "references": references, "chosen": {}, "validation": {}, "test": {}}
    log(f"{name}: floor {references['test']['floor_swd']:.4f}, prior {references['test']['prior_swd']:.4f} "
        f"(test, n = {n})")
    for sampler in (MAIN_SAMPLER, ODE_SAMPLER):
        methods = [m for m in args.methods if not (m == "smc" and sampler != MAIN_SAMPLER)]
        # the ODE rows search the step sizes again (they interact with the sampler) and keep the ddpm choice of
        # RePaint's and CCDF's schedules, for time
        fixed = None if sampler == MAIN_SAMPLER else \
            {m: c for m, c in out["chosen"][MAIN_SAMPLER].items() if m not in STEP_SIZE_METHODS}
        chosen, validation = tune(problem, cases["validation"], n, args, sampler, methods, log, fixed)
        out["chosen"][sampler], out["validation"][sampler] = chosen, validation
        test = {}
        for method in methods:
            test[method] = {"options": chosen[method],
                            **run_method(problem, cases["test"], n, method, chosen[method], sampler, args.steps)}
            r = test[method]
            log(f"{name} {sampler} test {method} ({describe(chosen[method])}): swd {r['swd']:.4f}, "
                f"nfe {r['nfe']:.0f}, {r['seconds']:.1f}s" + (f", {r['nonfinite']} non-finite"
                                                             if r["nonfinite"] else ""))
        out["test"][sampler] = test
    curves = {}
    for method in (m for m in args.methods if m != "smc"):
        points = []
        options = out["chosen"][MAIN_SAMPLER][method]
        for steps in args.curve_steps:
            if steps != args.steps and predicted_nfe(method, options, steps) > args.curve_max_nfe:
                continue
            r = out["test"][MAIN_SAMPLER][method] if steps == args.steps else \
                run_method(problem, cases["test"], n, method, options, MAIN_SAMPLER, steps)
            points.append({"steps": steps, **{k: v for k, v in r.items() if k != "options"}})
        curves[method] = points
        log(f"{name} curve {method}: " + ", ".join(f"{p['steps']}:{p['swd']:.3f}" for p in points))
    out["nfe_curve"] = {"sampler": MAIN_SAMPLER, "max_nfe": args.curve_max_nfe, "methods": curves}
    if "smc" in args.methods:
        points = []
        for particles, steps in smc_grid(problem, args):
            r = run_method(problem, cases["test"], args.smc_n, "smc", {"particles": particles}, MAIN_SAMPLER, steps)
            points.append({"particles": particles, "steps": steps, **r})
            log(f"{name} smc particles {particles} steps {steps}: swd {r['swd']:.4f} ({r['seconds']:.1f}s)")
        out["smc_curve"] = {"n": args.smc_n, "references": reference_metrics(problem, cases["test"], args.smc_n),
                            "points": points}
    return out


# -- reporting --------------------------------------------------------------------------------------------------
def main_table(result: dict, sampler: str) -> list[str]:
    ref = result["references"]["test"]
    lines = ["| method | setting | sliced W2 | floor | prior | mean error (floor) | residual (exact) | NFE |",
             "|---|---|---|---|---|---|---|---|"]
    for method, r in result["test"][sampler].items():
        bad = f" ({r['nonfinite']} of {r['samples']} non-finite)" if r["nonfinite"] else ""
        lines.append(f"| {method} | {describe(r['options'])} | {r['swd']:.4f}{bad} | {ref['floor_swd']:.4f} | "
                     f"{ref['prior_swd']:.4f} | {r['mean_error']:.4f} ({ref['floor_mean_error']:.4f}) | "
                     f"{r['residual']:.4f} ({ref['residual_exact']:.4f}) | {r['nfe']:.0f} |")
    return lines


def curve_table(result: dict) -> list[str]:
    curves = result["nfe_curve"]["methods"]
    steps = sorted({p["steps"] for points in curves.values() for p in points})
    lines = ["| method | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for method, points in curves.items():
        by_steps = {p["steps"]: p for p in points}

        def cell(p):
            if p is None:
                return "-"
            bad = f", {p['nonfinite']}/{p['samples']} non-finite" if p["nonfinite"] else ""
            return f"{p['swd']:.4f} ({p['nfe']:.0f}{bad})"
        lines.append(f"| {method} | " + " | ".join(cell(by_steps.get(s)) for s in steps) + " |")
    lines.append(f"\nsliced W2 (NFE per sample); '-': above {result['nfe_curve']['max_nfe']} NFE, not run")
    return lines


def smc_table(result: dict) -> list[str]:
    curve = result["smc_curve"]
    particles = sorted({p["particles"] for p in curve["points"]})
    lines = ["| steps | " + " | ".join(f"K={k}" for k in particles) + " |", "|---|" + "---|" * len(particles)]
    for steps in sorted({p["steps"] for p in curve["points"]}):
        cells = {p["particles"]: p for p in curve["points"] if p["steps"] == steps}
        lines.append(f"| {steps} | " + " | ".join(
            f"{cells[k]['swd']:.4f} / {cells[k]['mean_error']:.4f}" if k in cells else "-" for k in particles) + " |")
    ref = curve["references"]
    lines.append(f"\nsliced W2 / mean error; n = {curve['n']} per measurement: floor {ref['floor_swd']:.4f} / "
                 f"{ref['floor_mean_error']:.4f}, prior {ref['prior_swd']:.4f} / {ref['prior_mean_error']:.4f}")
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib  # lazy: only the full report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    problems = report["measured"]["problems"]
    fig, axes = plt.subplots(len(problems), 2, figsize=(12, 3.6 * len(problems)), squeeze=False)
    for row, (name, result) in zip(axes, problems.items(), strict=True):
        ref = result["references"]["test"]
        ax = row[0]
        for method, points in result["nfe_curve"]["methods"].items():
            ax.plot([p["nfe"] for p in points], [p["swd"] for p in points], marker="o", ms=3, label=method)
        if "smc" in result["test"][MAIN_SAMPLER]:
            r = result["test"][MAIN_SAMPLER]["smc"]
            ax.plot([r["nfe"]], [r["swd"]], marker="*", ms=10, ls="", color="k",
                    label=f"smc ({r['options']['particles']} particles, {report['meta']['steps']} steps)")
        ax.axhline(ref["floor_swd"], color="k", ls="--", lw=1, label="floor (exact vs exact)")
        ax.axhline(ref["prior_swd"], color="grey", ls=":", lw=1, label="prior (no information)")
        ax.set(xscale="log", yscale="log", xlabel="NFE per sample", ylabel="sliced W2 to the posterior",
               title=f"{name}: {MAIN_SAMPLER}, test, n = {result['n']}")
        ax.legend(fontsize=6, ncol=2)
        ax = row[1]
        if "smc_curve" in result:
            curve = result["smc_curve"]
            for steps in sorted({p["steps"] for p in curve["points"]}):
                pts = sorted((p for p in curve["points"] if p["steps"] == steps), key=lambda p: p["particles"])
                ax.plot([p["particles"] for p in pts], [p["swd"] for p in pts], marker="o", ms=3,
                        label=f"{steps} steps")
            ax.axhline(curve["references"]["floor_swd"], color="k", ls="--", lw=1, label="floor")
            ax.axhline(curve["references"]["prior_swd"], color="grey", ls=":", lw=1, label="prior")
            ax.set(xscale="log", yscale="log", xlabel="particles", ylabel="sliced W2 to the posterior",
                   title=f"{name}: SMC, test, n = {curve['n']}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: n 48, 1 validation and 2 test measurements, 10 steps, small grids")
    parser.add_argument("--problems", type=str, default=",".join(PROBLEMS), help="comma-separated subset")
    parser.add_argument("--methods", type=str, default=",".join(METHOD_ORDER), help="comma-separated subset")
    parser.add_argument("--n", type=int, default=None, help="samples per measurement, 2-D problems (default 2000)")
    parser.add_argument("--n64", type=int, default=None, help="samples per measurement, 64-D problems (default 1000)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the main tables (default 100)")
    parser.add_argument("--curve-steps", type=ints, default=None, help="default 10,25,50,100,200,400")
    parser.add_argument("--scales", type=str, default=None,
                        help="the DPS / MCG / reconstruction grid (default 10^(-2 .. 2) in half-decades)")
    parser.add_argument("--curve-max-nfe", type=int, default=1000,
                        help="the NFE curve skips a point above this many evaluations per sample (RePaint's many)")
    parser.add_argument("--smc-n", type=int, default=None, help="samples per measurement of the SMC curve (250)")
    parser.add_argument("--smc-particles", type=ints, default=None, help="default 1,4,16,64,256")
    parser.add_argument("--smc-steps", type=ints, default=None, help="default 25,100,400")
    parser.add_argument("--smc-budget", type=int, default=6400,
                        help="64-D problems: SMC cells with particles x steps above this are skipped (0: none)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    quick = args.quick
    args.problems = args.problems.split(",")
    args.methods = [m for m in METHOD_ORDER if m in args.methods.split(",")]
    unknown = set(args.problems) - set(PROBLEMS)
    if unknown:
        parser.error(f"unknown problem(s) {sorted(unknown)}; choose from {', '.join(PROBLEMS)}")
    args.n = args.n or (48 if quick else 2000)
    args.n64 = args.n64 or (48 if quick else 1000)
    args.steps = args.steps or (10 if quick else 100)
    args.curve_steps = args.curve_steps or ([5, 10] if quick else [10, 25, 50, 100, 200, 400])
    if args.steps not in args.curve_steps:
        args.curve_steps = sorted([*args.curve_steps, args.steps])
    args.scales = [float(v) for v in args.scales.split(",")] if args.scales else \
        ([0.1, 1.0] if quick else [float(10**e) for e in np.arange(-2, 2.01, 0.5)])
    args.smc_n = args.smc_n or (32 if quick else 250)
    args.smc_particles = args.smc_particles or ([1, 4] if quick else [1, 4, 16, 64, 256])
    args.smc_steps = args.smc_steps or ([5, 10] if quick else [25, 100, 400])
    if args.output is None:
        args.output = RESULTS / ("inverse_mixture_quick.json" if quick else "inverse_mixture.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()

    def log(message: str):
        print(f"[{time.perf_counter() - began:7.1f}s] {message}", file=sys.stderr, flush=True)

    problems = {}
    for name in args.problems:
        problems[name] = run_problem(name, args, log)
    runtime = time.perf_counter() - began
    report = {
        "meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "versions": {"python": platform.python_version(), "torch": torch.__version__,
                              "numpy": np.__version__, "diffusekit": diffusekit.__version__,
                              "platform": platform.platform()},
                 "threads": torch.get_num_threads(), "quick": args.quick, "runtime_s": runtime,
                 "command": " ".join(["benchmarks/inverse_mixture.py", *(sys.argv[1:] if argv is None else argv)]),
                 "schedule": "Cosine()", "spacing": SPACING, "sampler": MAIN_SAMPLER, "ode_sampler": ODE_SAMPLER,
                 "n": args.n, "n64": args.n64, "steps": args.steps, "curve_steps": args.curve_steps,
                 "curve_max_nfe": args.curve_max_nfe, "scales": args.scales, "smc_n": args.smc_n,
                 "smc_particles": args.smc_particles, "smc_steps": args.smc_steps, "smc_budget": args.smc_budget,
                 "split_sizes": {s: len(next(iter(problems.values()))["measurements"][s]) for s in SPLIT_SIZES},
                 "seeds": {"splits": SPLIT_SEEDS, "noise": NOISE_SEED, "sde": SDE_SEED, "exact": EXACT_SEED,
                           "mixture": MIXTURE_SEED, "operator": OPERATOR_SEED},
                 "selection": "lowest mean sliced W2 over the validation measurements",
                 "state_dtype": "float32"},
        "measured": {"problems": problems},
    }
    print("# Inverse-problem methods against the exact mixture posterior")
    print()
    print(f"Cosine schedule, exact mixture denoiser, {SPACING} grid, n = {args.n} (2-D) / {args.n64} (64-D) "
          "samples per measurement, "
          f"{report['meta']['split_sizes']['test']} test measurements (settings chosen on "
          f"{report['meta']['split_sizes']['validation']} validation ones), one thread, {runtime:.0f}s.")
    for name, result in problems.items():
        print(f"\n## {name}: {result['description']} (n = {result['n']})\n")
        print(f"noise level sigma_y sqrt(m) = {result['residual_noise_level']:.4f}\n")
        print(f"### {MAIN_SAMPLER}, {args.steps} steps (test)\n")
        print("\n".join(main_table(result, MAIN_SAMPLER)))
        print(f"\n### {ODE_SAMPLER}, {args.steps} steps (test)\n")
        print("\n".join(main_table(result, ODE_SAMPLER)))
        print(f"\n### sliced W2 (NFE) against steps, {MAIN_SAMPLER} (test)\n")
        print("\n".join(curve_table(result)))
        if "smc_curve" in result:
            print("\n### SMC: sliced W2 against particles x steps (test)\n")
            print("\n".join(smc_table(result)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(jsonable(report), indent=1) + "\n")
    figure = args.output.with_suffix("") / "curves.png"
    plot(report, figure)
    print(f"\nWrote {args.output} and {figure} ({runtime:.0f}s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
