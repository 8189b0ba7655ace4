"""The PF-ODE likelihood (``diffusekit.likelihood.ode_nll``) against the exact density of Gaussian mixtures, and
its cost on an image network.

Mixtures: ``mog2d`` (``GaussianMixture.ring2d()``) and ``mog16`` (``GaussianMixture.random(16, 8)``), 64 exact
samples each (seed 1), the exact denoiser, float64, t_min = 0. Per schedule (rectified_flow, cosine: exact
endpoint density; edm: the integrated divergence scored with the exact blurred p_T, and the reported nll with
its N(0, 80^2 I) endpoint), method and tolerance: the largest and mean |nll - (-log p(x))| over the samples and
the NFE. Hutchinson: the per-sample spread (std over 256 probe draws of one sample) of the estimate at 1 and
4 Rademacher probes, against the exact-divergence value.

``--mnist``: the cost of Hutchinson NLL (1 Rademacher probe, rtol = atol = 1e-5, bs32) for a freshly built
``mnist`` preset network (untrained: the NLL is meaningless, only NFE and seconds per image are reported),
batch 16 of 28x28 inputs, one thread unless ``--threads``.

Usage::

    python benchmarks/likelihood_mixture.py            # mixtures -> benchmarks/results/likelihood_mixture.json
    python benchmarks/likelihood_mixture.py --mnist    # adds the network timing
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from diffusekit import schedules
from diffusekit.likelihood import ode_nll
from diffusekit.targets import GaussianMixture

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


def mixture_rows(name: str, gmm: GaussianMixture, n: int) -> list[dict]:
    x = gmm.sample(n, torch.Generator().manual_seed(1))
    exact = -gmm.log_prob(x)
    rows = []
    for schedule_name in ("rectified_flow", "cosine", "edm"):
        schedule = schedules.get(schedule_name)
        for method in ("bs32", "dp54"):
            for tol in TOLERANCES:
                start = time.perf_counter()
                r = ode_nll(gmm.denoiser(schedule), schedule, x, rtol=tol, atol=tol, t_min=0.0, method=method)
                seconds = time.perf_counter() - start
                row = {"problem": name, "schedule": schedule_name, "method": method, "tol": tol, "nfe": r.nfe,
                       "accepted": r.accepted, "rejected": r.rejected, "seconds": seconds,
                       "max_error": float((r.nll - exact).abs().max()),
                       "mean_error": float((r.nll - exact).abs().mean()),
                       "mean_abs_delta": float(r.delta.abs().mean())}
                if schedule_name == "edm":  # the divergence integral alone, with the exact blurred endpoint density
                    integrated = -(r.delta + gmm.log_prob(r.endpoint, 1.0, 80.0))
                    row["max_error_exact_endpoint"] = float((integrated - exact).abs().max())
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def hutchinson_rows(name: str, gmm: GaussianMixture) -> list[dict]:
    schedule = schedules.get("rectified_flow")
    x = gmm.sample(1, torch.Generator().manual_seed(1))
    exact = ode_nll(gmm.denoiser(schedule), schedule, x, rtol=1e-6, atol=1e-6, t_min=0.0, method="dp54").nll
    rows = []
    for probes in (1, 4):
        r = ode_nll(gmm.denoiser(schedule), schedule, x.expand(256, -1), rtol=1e-5, atol=1e-5, t_min=0.0,
                    method="dp54", divergence="hutchinson", probes=probes, generator=torch.Generator().manual_seed(2))
        row = {"problem": name, "probes": probes, "exact_nll": float(exact), "mean": float(r.nll.mean()),
               "std": float(r.nll.std()), "standard_error": float(r.nll.std()) / math.sqrt(256), "nfe": r.nfe}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def mnist_cost(batch: int = 16) -> dict:
    from diffusekit.config import preset  # lazy: only the --mnist timing needs the model stack
    from diffusekit.models.build import build_denoiser, build_network, network_conditioning

    config = preset("mnist")
    shape = (1, 28, 28)
    torch.manual_seed(0)
    network = build_network(config.network, shape, 10, **network_conditioning(config, shape)).float().eval()
    denoiser = build_denoiser(config, network)
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond = {"labels": torch.arange(batch) % 10}
    start = time.perf_counter()
    r = ode_nll(denoiser, denoiser.schedule, x, rtol=1e-5, atol=1e-5, divergence="hutchinson",
                generator=torch.Generator().manual_seed(1), cond=cond)
    seconds = time.perf_counter() - start
    return {"network": "mnist preset, freshly built (untrained)", "parameters": sum(p.numel() for p in
            network.parameters()), "batch": batch, "schedule": config.objective.schedule, "nfe": r.nfe,
            "accepted": r.accepted, "rejected": r.rejected, "seconds": seconds, "seconds_per_image": seconds / batch,
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", action="store_true", help="also time the mnist preset network")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--output", type=Path, default=RESULTS / "likelihood_mixture.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict = {"tolerances": list(TOLERANCES), "samples": args.samples, "torch": torch.__version__,
                    "threads": args.threads, "mixtures": [], "hutchinson": []}
    for name, gmm in (("mog2d", GaussianMixture.ring2d()), ("mog16", GaussianMixture.random(16, 8))):
        report["mixtures"] += mixture_rows(name, gmm, args.samples)
        report["hutchinson"] += hutchinson_rows(name, gmm)
    if args.mnist:
        report["mnist_cost"] = mnist_cost()
        print(json.dumps(report["mnist_cost"]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
