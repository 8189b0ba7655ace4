"""The variational bound (``diffusekit.likelihood.elbo``) of the exact denoiser of a Gaussian mixture, against the
mixture's exact log-density.

    python benchmarks/elbo_mixture.py [--rows 256] [--out benchmarks/results/elbo_mixture.json]

Data: ``GaussianMixture.random(8, components=4, seed=0)`` (D = 8), ``--rows`` exact draws. The denoiser is exact, so
the bound's gap is only the endpoints' (docs/likelihood.md): the Gaussian decoder at t_min (noise level r =
sigma / alpha) and, where alpha(1) > 0, the prior. Reported, in nats per dimension averaged over the rows:

1. ``bound``: -log p(x), -ELBO (quadrature, 64 noise draws x 128 log-SNR nodes) and the gap, per schedule and r.
   The continuous-time bound depends on the schedule only through its endpoint SNRs (Kingma et al. 2021, section
   5.1), so rectified flow and cosine (both zero SNR at t = 1) agree to rounding at equal r;
2. ``time_modes``: the spread of the per-row estimate of the diffusion term over 16 repeated seeds at 128 denoiser
   calls per row (cosine, r = 1e-3): Monte Carlo in t (uniform, low-discrepancy) against the log-SNR quadrature;
3. ``quadrature_error``: the quadrature's own error per row, 8..128 nodes against 512 on the same noise draws;
4. ``identity``: the largest relative difference between D (t_max - t_min) DiffusionLoss(weighting="elbo") and the
   bound's diffusion term for the same draws of t and noise, per parameterization and schedule.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from diffusekit import parameterizations, schedules, time_sampling, weighting
from diffusekit.likelihood import elbo
from diffusekit.loss import DiffusionLoss
from diffusekit.targets import GaussianMixture

SCHEDULES = ("rectified_flow", "cosine", "linear_vp", "edm")
IDENTITY = (("eps", "cosine"), ("x0", "rectified_flow"), ("velocity", "rectified_flow"), ("v", "cosine"),
            ("v", "linear_vp"), ("eps", "edm"), ("edm", "cosine"))


def bound_table(mixture, x, log_p) -> list[dict]:
    rows = []
    dims = x.shape[1]
    for name in SCHEDULES:
        schedule = schedules.get(name)
        for r in (1e-2, 1e-3):
            t_min = float(schedule.t_from_ve_sigma(r))
            res = elbo(mixture.denoiser(schedule), schedule, x, t_min=t_min, samples=64, time="quadrature",
                       generator=torch.Generator().manual_seed(0))
            gap = res.total + log_p
            rows.append({"schedule": name, "r": r, "t_min": t_min, "nll": float(-log_p.mean()) / dims,
                         "neg_elbo": float(res.total.mean()) / dims, "gap": float(gap.mean()) / dims,
                         "gap_stderr": float(gap.std() / math.sqrt(len(gap))) / dims,
                         "prior": float(res.prior.mean()) / dims,
                         "reconstruction": float(res.reconstruction.mean()) / dims,
                         "diffusion": float(res.diffusion.mean()) / dims})
            print(rows[-1], flush=True)
    return rows


def time_modes(mixture, x) -> list[dict]:
    schedule = schedules.get("cosine")
    t_min = float(schedule.t_from_ve_sigma(1e-3))
    x = x[:64]
    out = []
    for mode, samples, nodes in (("uniform", 128, 8), ("low_discrepancy", 128, 8), ("quadrature", 1, 128),
                                 ("quadrature", 4, 32), ("quadrature", 16, 8)):
        estimates = torch.stack([
            elbo(mixture.denoiser(schedule), schedule, x, t_min=t_min, samples=samples, time=mode, nodes=nodes,
                 generator=torch.Generator().manual_seed(seed)).diffusion for seed in range(16)])
        out.append({"time": mode, "samples": samples, "nodes": nodes if mode == "quadrature" else None,
                    "nfe_per_row": samples * (nodes if mode == "quadrature" else 1),
                    "mean": float(estimates.mean()), "spread_over_seeds": float(estimates.std(0).mean())})
        print(out[-1], flush=True)
    return out


def quadrature_error(mixture, x) -> list[dict]:
    """The log-SNR quadrature's own error: the same 8 noise draws per row at 8..128 nodes against 512 nodes."""
    schedule = schedules.get("cosine")
    t_min = float(schedule.t_from_ve_sigma(1e-3))
    x = x[:64]
    noise = torch.randn(8, *x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    reference = elbo(mixture.denoiser(schedule), schedule, x, t_min=t_min, samples=8, noise=noise, nodes=512).diffusion
    out = []
    for nodes in (8, 16, 32, 128):
        value = elbo(mixture.denoiser(schedule), schedule, x, t_min=t_min, samples=8, noise=noise,
                     nodes=nodes).diffusion
        out.append({"nodes": nodes, "mean_error": float((value - reference).mean()),
                    "largest_relative_error": float(((value - reference).abs() / reference.abs()).max())})
        print(out[-1], flush=True)
    return out


def identity(mixture, x) -> list[dict]:
    out = []
    t_min, t_max = 1e-3, 0.999
    for param_name, name in IDENTITY:
        schedule, param = schedules.get(name), parameterizations.get(param_name)
        denoise = mixture.denoiser(schedule)
        noise = torch.randn(1, *x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        bound = elbo(denoise, schedule, x, t_min=t_min, t_max=t_max, samples=1, time="uniform", noise=noise,
                     generator=torch.Generator().manual_seed(2))
        u = torch.rand(1, len(x), generator=torch.Generator().manual_seed(2), dtype=torch.float64)[0]
        t = t_min + (t_max - t_min) * u  # the times elbo drew from the same seed

        def network(x_t, t, cond, param=param, schedule=schedule, denoise=denoise):
            c_skip, c_out = param.coefficients(schedule(t))
            return (denoise(x_t, t) - c_skip[:, None] * x_t) / c_out[:, None]

        loss = DiffusionLoss(schedule, param, time_sampling.get("uniform", t_min=t_min, t_max=t_max),
                             weighting.get("elbo"))(network, x, noise=noise[0], t=t).loss
        via_loss = x.shape[1] * (t_max - t_min) * loss
        rel = float(((via_loss - bound.diffusion).abs() / bound.diffusion.abs()).max())
        out.append({"parameterization": param_name, "schedule": name, "max_relative_difference": rel,
                    "mean_diffusion": float(bound.diffusion.mean())})
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/elbo_mixture.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    mixture = GaussianMixture.random(8, components=4, seed=0)
    x = mixture.sample(args.rows, generator=torch.Generator().manual_seed(0))
    log_p = mixture.log_prob(x)
    result = {"data": "GaussianMixture.random(8, components=4, seed=0)", "rows": args.rows,
              "bound": bound_table(mixture, x, log_p), "time_modes": time_modes(mixture, x),
              "quadrature_error": quadrature_error(mixture, x),
              "identity": identity(mixture, x[:32])}
    result["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
