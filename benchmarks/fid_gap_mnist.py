"""Where an MNIST model's FID gap comes from: faint background values that real digits do not have.

For each run: 1,000 class-balanced samples (seeds 0..999, the run's sampler, guidance --guidance) and

- the pixel histogram of the samples against the first 1,000 MNIST test digits (uint8 bins);
- FID/KID against those test digits (standard Inception, pytorch-fid preprocessing), and the FID of the same
  samples with every value <= T set to 0 for each --zero-below T: a diagnostic, not a sampling option, that
  shows how much of the FID is the faint haze;
- the denoiser's error on background pixels (x0 = -1) of 500 held-out test digits noised to time t: its
  mean and std, and the fraction of those pixels that quantise to 1..12 instead of 0.

Writes ``benchmarks/results/fid_gap_mnist.json``.

Usage::

    .venv/bin/python benchmarks/fid_gap_mnist.py runs/demo [runs/other ...]   # ~5 min per run on 2 CPU cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from diffusekit.data.builtin import mnist
from diffusekit.generate import load_model
from diffusekit.metrics.evaluate import SamplingSettings, as_json, feature_metrics, sample_for_evaluation
from diffusekit.metrics.features import dataset_reference_stats
from diffusekit.metrics.inception import get_extractor, quantize

RESULTS = Path(__file__).resolve().parent / "results"
EDGES = (0, 1, 13, 65, 129, 193, 255, 256)
TIMES = (0.02, 0.05, 0.125, 0.25, 0.5)
HAZE_MAX = 12  # uint8 values 1..HAZE_MAX count as haze


def histogram(images: torch.Tensor) -> dict[str, float]:
    """Fraction of uint8 pixel values in each bin [a, b)."""
    x = images.long().flatten()
    bins = zip(EDGES[:-1], EDGES[1:], strict=True)
    return {f"{a}-{b - 1}": ((x >= a) & (x < b)).float().mean().item() for a, b in bins}


@torch.no_grad()
def background_error(model, test, count: int = 500, seed: int = 0) -> list[dict]:
    """The denoiser's x0 error on background pixels of the first ``count`` held-out digits of ``test``,
    noised to each time in TIMES along the run's own schedule (x_t = alpha x0 + sigma eps)."""
    x0 = torch.tensor(test.images[:count]).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = torch.tensor(test.labels[:count]).long()
    generator = torch.Generator().manual_seed(seed)
    background = x0 == -1
    rows = []
    for t in TIMES:
        at = model.denoiser.at(torch.full((count,), t))
        alpha, sigma = (v.float().view(-1, 1, 1, 1) for v in (at.alpha, at.sigma))
        x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator)
        x0_hat = model.denoiser(x_t, torch.full((count,), t), {"labels": labels})
        error = (x0_hat - x0)[background]
        quantised = quantize(x0_hat)[background]
        rows.append({"t": t, "mean": error.mean().item(), "std": error.std().item(),
                     "haze_fraction": ((quantised > 0) & (quantised <= HAZE_MAX)).float().mean().item()})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--zero-below", type=int, nargs="*", default=[HAZE_MAX])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "fid_gap_mnist.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    extractor = get_extractor("inception", "pytorch")
    reference = dataset_reference_stats(extractor, "mnist", "test", args.n, log=log)
    test = mnist("test")
    real = torch.tensor(test.images[:args.n])
    rows = []
    for run in args.runs:
        model = load_model(run)
        if model.config.data.name != "mnist" or model.num_classes != 10:
            raise SystemExit(f"{run} is not a class-conditional MNIST model")
        settings = SamplingSettings.from_config(model.config.sample, guidance=args.guidance)
        images, _, _ = sample_for_evaluation(model.denoiser, model.image_shape, model.num_classes, args.n, settings)
        values, _ = feature_metrics(images, ("fid", "kid"), reference, extractor)
        zeroed = {}
        for threshold in args.zero_below:
            cleaned = images.clone()
            cleaned[cleaned <= threshold] = 0
            zeroed[str(threshold)] = feature_metrics(cleaned, ("fid",), reference, extractor)[0]["fid"]
        row = {"run": run, "cur_nimg": model.cur_nimg, "weights": model.weights, "sampling": settings.describe(),
               "fid": values["fid"], "kid": values["kid"], "fid_with_values_zeroed_at_or_below": zeroed,
               "histogram": histogram(images), "background_error": background_error(model, test)}
        rows.append(row)
        log(json.dumps(as_json({k: row[k] for k in ("run", "cur_nimg", "fid", "fid_with_values_zeroed_at_or_below")})))
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "n": args.n,
           "guidance": args.guidance, "real_histogram": histogram(real),
           "versions": {"python": platform.python_version(), "torch": torch.__version__}, "rows": rows}
    Path(args.output).write_text(json.dumps(as_json(out), indent=1))
    bins = list(out["real_histogram"])
    print("| images | FID | " + " | ".join(f"px {b}" for b in bins) + " |")
    print("|---|---:|" + "---:|" * len(bins))
    print("| MNIST test | - | " + " | ".join(f"{v:.3f}" for v in out["real_histogram"].values()) + " |")
    for r in rows:
        print(f"| {r['run']} ({r['cur_nimg']:,} images) | {r['fid']:.2f} | "
              + " | ".join(f"{v:.3f}" for v in r["histogram"].values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
