"""Variance of the training-loss estimator under different time-sampling modes, at equal batch size.

A fixed imperfect "model" (the exact denoiser of a deliberately wrong Gaussian mixture: means shifted,
stds inflated) is scored on the true mixture's data. For each objective, the batch-mean loss is
computed over many independent batches with t drawn iid (the baseline), stratified (one stratum per
example), low-discrepancy (VDM) and by importance sampling (iDDPM-style, after warm-up, still
updating as in training). Printed: the mean (all modes estimate the same objective) and the variance
of the batch estimate relative to iid.

    .venv/bin/python benchmarks/loss_variance.py [--batches 2000] [--batch-size 64]
Writes benchmarks/results/loss_variance.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from diffusekit import parameterizations, schedules, time_sampling, weighting
from diffusekit.loss import DiffusionLoss
from diffusekit.targets import GaussianMixture

OBJECTIVES = [
    # (label, schedule, parameterization, distribution (+options), weighting)
    ("DDPM: eps, linear_vp, uniform t", ("linear_vp", {}), ("eps", {}), ("uniform", {}), ("unit", {})),
    ("SD3: velocity, rectified_flow, logit-normal", ("rectified_flow", {}), ("velocity", {}),
     ("logit_normal", {}), ("unit", {})),
    ("EDM: edm precond, lognormal, lambda(sigma)", ("edm", {}), ("edm", {}), ("lognormal", {}), ("edm", {})),
    ("v, cosine, uniform t, min-SNR-5", ("cosine", {}), ("v", {}), ("uniform", {}), ("min_snr", {})),
]
MODES = ["iid", "stratified", "low_discrepancy", "importance"]


def wrong_model(target: GaussianMixture, schedule, param):
    """The exact denoiser of a mis-specified mixture, returned as raw network output F."""
    g = torch.Generator().manual_seed(99)
    model = GaussianMixture(target.means + 0.1 * torch.randn(target.means.shape, generator=g, dtype=torch.float64),
                            target.stds * 1.3, target.weights)

    def network_fn(x_t, t, cond):
        at = schedule(t.to(torch.float64))
        c_skip, c_out = param.coefficients(at)
        x0_hat = model.x0_hat(x_t, at.alpha, at.sigma)
        return (x0_hat - c_skip[:, None] * x_t) / c_out[:, None]

    return network_fn


def measure(target, objective, mode, batches, batch_size, warmup_batches, seed):
    _, (sname, sopt), (pname, popt), (dname, dopt), (wname, wopt) = objective
    schedule = schedules.get(sname, **sopt)
    param = parameterizations.get(pname, **popt)
    sampler = time_sampling.get(dname, mode, **dopt)
    loss = DiffusionLoss(schedule, param, sampler, weighting.get(wname, **wopt))
    net = wrong_model(target, schedule, param)
    g = torch.Generator().manual_seed(seed)
    if mode == "importance":
        for _ in range(warmup_batches):
            loss(net, target.sample(batch_size, g), generator=g)
    estimates = torch.empty(batches, dtype=torch.float64)
    for b in range(batches):
        estimates[b] = loss(net, target.sample(batch_size, g), generator=g).loss.mean()
    return estimates


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup-batches", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "loss_variance.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    targets = {"mog2d": GaussianMixture.ring2d(), "mog16": GaussianMixture.random(16, 8, seed=4)}
    results = []
    start = time.time()
    for tname, target in targets.items():
        print(f"\n### {tname}: batch {args.batch_size}, {args.batches} batches per mode\n")
        print("| objective | mode | mean loss | std error of mean | var(batch mean) | var / var(iid) |")
        print("|---|---|---|---|---|---|")
        for objective in OBJECTIVES:
            base_var = None
            for mode in MODES:
                est = measure(target, objective, mode, args.batches, args.batch_size, args.warmup_batches, seed=1)
                var = float(est.var())
                base_var = var if mode == "iid" else base_var
                row = {"target": tname, "objective": objective[0], "mode": mode, "mean": float(est.mean()),
                       "sem": math.sqrt(var / len(est)), "variance": var, "ratio_to_iid": var / base_var}
                results.append(row)
                print(f"| {objective[0]} | {mode} | {row['mean']:.4g} | {row['sem']:.2g} | {var:.3g} | "
                      f"{row['ratio_to_iid']:.3f} |")
    elapsed = time.time() - start
    print(f"\n({elapsed:.0f} s; torch {torch.__version__}, 1 thread)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "batches": args.batches, "batch_size": args.batch_size,
                               "warmup_batches": args.warmup_batches, "torch": torch.__version__,
                               "python": platform.python_version(), "seconds": elapsed}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
