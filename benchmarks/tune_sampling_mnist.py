"""Choose the MNIST demo's sampling settings by FID against the validation slice only.

A coordinate search, one ``fid_sweep_mnist.py --split val`` row per point (1,000 samples, one matched seed
set), starting from the run's own settings: epsilon scaling's lambda, then the guidance interval, then the
guidance weight, then lambda once more around the winner if the interval or the weight moved. Each stage
keeps the point it starts from unless another scores lower by more than ``--margin`` (FID_1k moves by up
to 0.7 between seed sets of one setting, so smaller gains are not told apart from noise); a lambda at the
edge of its grid extends the grid by one step (twice at most). Rows of an earlier search of the same run
and seed set in the results file are reused. The chosen setting is then reported on the test slice with
``eval_mnist.py``, never here.

Usage::

    .venv/bin/python benchmarks/tune_sampling_mnist.py runs/demo --seed 20000   # 8-10 rows, 3-10 min each on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import fid_sweep_mnist
from diffusekit.generate import load_model

INTERVALS = ((0.2, 3.0), (0.3, 3.0), (0.5, 3.0), (0.3, 5.0))
WEIGHTS = (2.5, 3.0, 3.5, 4.0)
EPS_STEP = 0.01
MAX_EXTENSIONS = 2


def earlier_scores(output: Path, run: str, seed: int) -> dict[tuple, float]:
    """Validation FIDs already in ``output`` for points of this search: rows of the same run and seed set whose
    only departures from the run's sampling are the interval, the weight and lambda (the last row wins)."""
    if not output.exists():
        return {}
    sample = load_model(run).config.sample
    scores = {}
    for row in json.loads(output.read_text())["rows"]:
        guidance = row["guidance"]
        if (row.get("split") != "val" or row["run"] != run or row["seed"] != seed or row["n"] != 1000
                or "interval" not in guidance or set(guidance) - {"scale", "interval", "eps_scale"}
                or (row["sampler"], row["steps"], row["spacing"]) != (sample.sampler, sample.steps, sample.spacing)
                or row["weights"] != "ema"):
            continue
        lo, hi = guidance["interval"]
        scores[(lo, hi, guidance["scale"], round(guidance.get("eps_scale", 1.0), 4))] = row["fid"]
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--seed", type=int, default=20000, help="the seed set every point is sampled with")
    parser.add_argument("--start", type=float, nargs=4, default=(0.3, 3.0, 3.0, 0.99),
                        metavar=("LO", "HI", "W", "LAMBDA"), help="the point the search starts from")
    parser.add_argument("--margin", type=float, default=0.5,
                        help="FID a point must gain over the current one to replace it (default 0.5)")
    parser.add_argument("--output", default=str(fid_sweep_mnist.RESULTS / "fid_sweep_mnist.json"))
    args = parser.parse_args(argv)
    output = Path(args.output)
    scores = earlier_scores(output, args.run, args.seed)
    if scores:
        print(f"reusing {len(scores)} earlier validation rows of {args.run}, seed set {args.seed}")

    def fid(lo: float, hi: float, w: float, eps: float) -> float:
        point = (lo, hi, w, round(eps, 4))
        if point not in scores:
            fid_sweep_mnist.main([args.run, "--split", "val", "--seed", str(args.seed), "--interval", str(lo),
                                  str(hi), "--guidance", str(w), "--eps-scale", str(point[3]),
                                  "--output", str(output)])
            scores[point] = json.loads(output.read_text())["rows"][-1]["fid"]
        return scores[point]

    def best(points, incumbent: tuple) -> tuple:
        challenger = min(points, key=lambda p: fid(*p))
        return challenger if fid(*challenger) < fid(*incumbent) - args.margin else incumbent

    def tune_eps(lo, hi, w, eps) -> float:
        grid = [round(eps + k * EPS_STEP, 4) for k in (-1, 0, 1)]
        chosen = best([(lo, hi, w, e) for e in grid], (lo, hi, w, grid[1]))[3]
        for _ in range(MAX_EXTENSIONS):  # the best at an edge: one step further out
            if chosen not in (grid[0], grid[-1]):
                break
            grid = sorted({*grid, round(chosen + (EPS_STEP if chosen == grid[-1] else -EPS_STEP), 4)})
            chosen = best([(lo, hi, w, e) for e in grid], (lo, hi, w, chosen))[3]
        return chosen

    lo, hi, w, eps = args.start
    eps = tune_eps(lo, hi, w, eps)
    lo, hi = best([(a, b, w, eps) for a, b in INTERVALS], (lo, hi, w, eps))[:2]
    weights = [v for v in WEIGHTS if v != 4.0 or fid(lo, hi, 3.5, eps) < fid(lo, hi, 3.0, eps)]
    w = best([(lo, hi, v, eps) for v in weights], (lo, hi, w, eps))[2]
    if (lo, hi, w) != tuple(args.start[:3]):
        eps = tune_eps(lo, hi, w, eps)
    print(f"\nvalidation FID (seed set {args.seed}):")
    for point, value in sorted(scores.items(), key=lambda item: item[1]):
        print(f"  interval ({point[0]}, {point[1]}], w = {point[2]}, lambda = {point[3]}: {value:.2f}")
    print(f"chosen: interval ({lo}, {hi}], w = {w}, lambda = {eps}  ({len(scores)} evaluations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
