"""Tuned time grids against the Karras and log-SNR grids on exact Gaussian mixtures (fit on validation noise,
report on test noise).

For each problem (``mog2d``: ``GaussianMixture.ring2d()``; ``mog64``: ``GaussianMixture.random(64, 16)``, as in
``samplers.py``), sampler (``multistep`` order 3 with its defaults, ``dpmpp_2m``) and NFE budget, a grid is
tuned (``diffusekit.sampling.grid_tuning.tune_grid``: Nelder-Mead from the Karras and the log-SNR grid) on a
VALIDATION noise batch against the exact PF-ODE solution of that batch (``reference_solve``), then it and
both start grids (``timesteps``' defaults: ve_sigma 80 .. 0.002, Karras rho = 7) are scored on a disjoint
TEST batch: RMSE and median per-sample error against the exact solution of the test noise. For context, the
best of ``samplers.py``'s 14 searched grids (Karras, log-SNR and flow families with several sigma_min, rho and
shift), chosen by RMSE on the same validation batch, is scored on the test batch too ("searched").

The schedule is EDM's VE (sigma_max = 80, t = 1 at ve_sigma = 80), the benchmark's common start; samplers
work in log-SNR, so a grid of noise levels gives the same samples on any schedule.

Usage::

    python benchmarks/tuned_grids.py                # -> benchmarks/results/tuned_grids.json (~7 minutes)
    python benchmarks/tuned_grids.py --quick        # mog2d, NFE 5, small batches
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

import diffusekit
from diffusekit import schedules
from diffusekit.sampling import sample, timesteps
from diffusekit.sampling.grid_tuning import reference_samples, tune_grid
from diffusekit.targets import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_grids import ours_grid, search_grids  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = {"validation": 1234, "test": 11234}  # the noise seeds of samplers.py's splits
SAMPLERS = {"multistep": {}, "dpmpp_2m": {}}
SCHEDULE = schedules.get("edm", sigma_max=80.0)


def errors(x: torch.Tensor, reference: torch.Tensor) -> dict:
    err = x.to(torch.float64) - reference
    return {"rmse": float(err.pow(2).mean().sqrt()), "median": float(err.pow(2).mean(1).sqrt().median())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="mog2d, NFE 5, 256 / 512 samples")
    parser.add_argument("--nfe", default="5,8,10")
    parser.add_argument("--fit", type=int, default=1024, help="validation (fitting) samples")
    parser.add_argument("--test", type=int, default=None, help="test samples (default 4096 for mog2d, 2048 for mog64)")
    parser.add_argument("--max-evals", type=int, default=400, help="sampler runs per start grid")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budgets = [5] if args.quick else [int(v) for v in args.nfe.split(",")]
    problems = {"mog2d": GaussianMixture.ring2d(), "mog64": GaussianMixture.random(64, 16)}
    if args.quick:
        problems, args.fit, args.test = {"mog2d": problems["mog2d"]}, 256, 512
    test_sizes = {"mog2d": args.test or 4096, "mog64": args.test or 2048}
    output = args.output or RESULTS / ("tuned_grids_quick.json" if args.quick else "tuned_grids.json")
    began = time.perf_counter()

    def log(message: str):
        print(f"[{time.perf_counter() - began:7.1f}s] {message}", file=sys.stderr, flush=True)

    report = {"problems": {}}
    lines = ["| problem | sampler | NFE | tuned RMSE | Karras RMSE | log-SNR RMSE | searched RMSE | tuned median | "
             "Karras median | log-SNR median | searched median | searched grid | tuned grid (ve_sigma) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, gmm in problems.items():
        denoise = gmm.denoiser(SCHEDULE)
        batches = {split: torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(SEEDS[split]))
                   for split, n in (("validation", args.fit), ("test", test_sizes[name]))}
        references = {split: reference_samples(denoise, x.to(torch.float64), SCHEDULE, 1.0).to(torch.float64)
                      for split, x in batches.items()}
        log(f"{name}: references done")
        rows = report["problems"][name] = {}
        for sampler, options in SAMPLERS.items():
            for budget in budgets:
                started = time.perf_counter()
                result = tune_grid(denoise, batches["validation"], SCHEDULE, sampler, budget,
                                   reference=references["validation"], options=options, t_start=1.0,
                                   max_evals=args.max_evals)
                searched = {spec.name: ours_grid(spec.ve(budget))[1] for spec in search_grids()}
                fits = {g: errors(sample(denoise, batches["validation"], ts, SCHEDULE, sampler, **options),
                                  references["validation"])["rmse"] for g, ts in searched.items()}
                best_searched = min(fits, key=fits.get)
                grids = {"tuned": result.times, "karras": timesteps(SCHEDULE, budget, "karras"),
                         "logsnr": timesteps(SCHEDULE, budget, "logsnr"), "searched": searched[best_searched]}
                scores = {}
                for grid_name, ts in grids.items():
                    x = sample(denoise, batches["test"], ts, SCHEDULE, sampler, **options)
                    scores[grid_name] = errors(x, references["test"])
                ve = [float(v) for v in SCHEDULE(grids["tuned"]).ve_sigma]
                rows[f"{sampler}/{budget}"] = {
                    "sampler": sampler, "options": options, "nfe": budget, "test": scores,
                    "validation_fit_rmse": result.error, "validation_start_rmse": result.start_errors,
                    "start": result.start, "sampler_runs": result.evaluations, "searched_grid": best_searched,
                    "validation_searched_rmse": fits,
                    "seconds": time.perf_counter() - started,
                    "grids": {k: v.tolist() for k, v in grids.items()}, "tuned_ve_sigma": ve}
                s = scores
                lines.append(f"| {name} | {sampler} | {budget} | {s['tuned']['rmse']:.3g} | "
                             f"{s['karras']['rmse']:.3g} | {s['logsnr']['rmse']:.3g} | {s['searched']['rmse']:.3g} | "
                             f"{s['tuned']['median']:.3g} | {s['karras']['median']:.3g} | "
                             f"{s['logsnr']['median']:.3g} | {s['searched']['median']:.3g} | {best_searched} | "
                             f"{', '.join(f'{v:.3g}' for v in ve[:-1])} |")
                log(f"{name} {sampler} NFE {budget}: tuned {s['tuned']['rmse']:.3g}, karras "
                    f"{s['karras']['rmse']:.3g}, logsnr {s['logsnr']['rmse']:.3g}")
    report["meta"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "diffusekit": diffusekit.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "budgets": budgets, "samples": {"validation": args.fit, "test": test_sizes}, "seeds": SEEDS,
        "max_evals_per_start": args.max_evals, "schedule": repr(SCHEDULE),
        "runtime_s": time.perf_counter() - began}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(lines))
    print(f"\nWrote {output} ({time.perf_counter() - began:.0f}s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
