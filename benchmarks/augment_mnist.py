"""Non-leaking augmentation on a small MNIST subset: FID and memorization with and without it.

Trains two class-conditional runs on the first --limit MNIST training digits (same network, recipe and
number of training images, so each digit is seen --images / --limit times):

- ``plain``: no augmentation;
- ``augment``: EDM's non-leaking augmentation with probability --p (x-flip, quarter turns, integer
  translations, isotropic scaling; the labels go to the network and are zero at sampling).

For each: --n class-balanced samples (seeds 0..n-1), FID / KID against the first --n MNIST test digits
(standard Inception, pytorch-fid preprocessing), the fraction of samples flagged as copies of a training
digit (ratio test d1/d2 < 1/3 against the --limit training digits, pixel space), and the final
per-noise-level train / validation loss gap. Writes ``benchmarks/results/augment_mnist_<limit>.json`` and
the sample grids to ``benchmarks/results/augment_<limit>/``.

Usage::

    .venv/bin/python benchmarks/augment_mnist.py --root runs/augment1k --limit 1000 --p 0.5   # ~2 x 14 min
    .venv/bin/python benchmarks/augment_mnist.py --root runs/augment200 --limit 200 --p 0.3   # ~5 + 15 min
    .venv/bin/python benchmarks/augment_mnist.py --root runs/augment200 --limit 200 --reuse   # re-evaluate
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

from diffusekit.cli import main as cli
from diffusekit.generate import load_model
from diffusekit.images import make_grid, save_png
from diffusekit.metrics.evaluate import (
    SamplingSettings,
    as_json,
    feature_metrics,
    memorization_metrics,
    sample_for_evaluation,
)
from diffusekit.metrics.features import dataset_reference_stats
from diffusekit.metrics.inception import get_extractor
from diffusekit.monitor import read_metrics

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/augment")
    parser.add_argument("--limit", type=int, default=1000, help="training digits")
    parser.add_argument("--images", type=int, default=20_000, help="training images per run")
    parser.add_argument("--p", type=float, default=0.5, help="augmentation probability")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", help="default: benchmarks/results/augment_mnist_<limit>.json")
    args = parser.parse_args(argv)
    output = Path(args.output or RESULTS / f"augment_mnist_{args.limit}.json")
    grids = RESULTS / f"augment_{args.limit}"
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    root = Path(args.root)
    common = ["train", "--preset", "mnist", "--quiet", "--threads", str(args.threads), "--images", str(args.images),
              "--set", f"data.limit={args.limit}", "--set", f"run.checkpoint_every={args.images}",
              "--set", "run.sample_every=null", "--set", f"eval.loss_every={args.images}"]
    runs = {"plain": [], "augment": ["--set", f"data.augment={args.p}"]}
    extractor = get_extractor("inception", "pytorch")
    reference = dataset_reference_stats(extractor, "mnist", "test", args.n, log=log)
    rows = []
    for name, extra in runs.items():
        run = root / name
        train_s = None
        if not args.reuse:
            t0 = time.perf_counter()
            if cli([*common, "--run-dir", str(run), *extra]) != 0:
                raise SystemExit(f"training {run} failed")
            train_s = round(time.perf_counter() - t0, 1)
        model = load_model(run)
        settings = SamplingSettings.from_config(model.config.sample, seed=0)
        images, labels, _ = sample_for_evaluation(model.denoiser, model.image_shape, model.num_classes, args.n,
                                                  settings)
        values, _ = feature_metrics(images, ("fid", "kid"), reference, extractor)
        memorization = memorization_metrics(images, model.config.data, out_dir=grids / name, log=log)
        gaps = [r for r in read_metrics(run / "metrics.jsonl") if any(k.startswith("noise/gap/") for k in r)]
        gap = {k: v for k, v in gaps[-1].items() if k.startswith("noise/gap/")} if gaps else {}
        row = {"run": name, "augment_p": args.p if name == "augment" else 0.0, "train_s": train_s,
               "fid": values["fid"], "kid": values["kid"], "memorization": memorization, "noise_gap": gap}
        rows.append(row)
        log(json.dumps(as_json({k: v for k, v in row.items() if k != "memorization"})))
        save_png(make_grid(images[::max(1, args.n // 100)][:100].float() / 127.5 - 1, 10),
                 grids / f"{name}.png")
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "limit": args.limit, "images_per_run": args.images, "n": args.n,
           "versions": {"python": platform.python_version(), "torch": torch.__version__}, "rows": rows}
    output.write_text(json.dumps(as_json(out), indent=1))
    table = ["| run | FID | KID | flagged copies (pixels) |", "|---|---:|---:|---:|"]
    for r in rows:
        flagged = r["memorization"].get("pixel", {}).get("fraction")
        table.append(f"| {r['run']} | {r['fid']:.2f} | {r['kid']:.4f} | {flagged} |")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
