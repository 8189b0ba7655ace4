"""FID / KID on MNIST: the real-data floors and the demo model, with the standard Inception (pytorch-fid convention).

Measures, at n = --n (default 1000):

- FID and KID of MNIST train[:n] vs MNIST test[:n] (the floor a perfect model reaches at this count) and of
  MNIST test[:n] vs Fashion-MNIST test[:n] (a different dataset);
- the demo model (a run directory, default ``runs/demo``): n class-balanced samples (100 per class at 1000,
  the run's sampler, steps and guidance, seeds 0..n-1) against MNIST test[:n]: FID, KID, precision/recall;
- its memorization: ratio test (d1/d2 < 1/3) against the whole training set in pixel space and in
  inception-fast-96 feature space, with PNG grids of flagged samples;
- the extractor's speed (img/s) on this machine.

Reference statistics are cached (``~/.cache/diffusekit/fid-stats``), so a second run only pays for the samples.

Usage::

    .venv/bin/python benchmarks/eval_mnist.py                       # -> benchmarks/results/eval_mnist.json
    .venv/bin/python benchmarks/eval_mnist.py --run runs/demo --n 1000 --skip-memorization-features
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

from diffusekit.generate import load_model
from diffusekit.images import save_png
from diffusekit.metrics.evaluate import (
    SamplingSettings,
    as_json,
    feature_metrics,
    memorization_metrics,
    preview_grid,
    sample_for_evaluation,
)
from diffusekit.metrics.features import dataset_reference_stats
from diffusekit.metrics.fid import fid_from_stats
from diffusekit.metrics.inception import get_extractor
from diffusekit.metrics.kid import kid

RESULTS = Path(__file__).parent / "results"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def timed_stats(extractor, dataset: str, split: str, n: int, timings: dict):
    started = time.perf_counter()
    stats = dataset_reference_stats(extractor, dataset, split, n, log=log)
    seconds = time.perf_counter() - started
    if seconds > 5:  # computed now, not read from the cache
        timings.setdefault(extractor.name, []).append(n / seconds)
    log(f"{dataset}:{split}[:{n}] ready ({seconds:.0f} s)")
    return stats


def pair(a, b) -> dict:
    return {"fid": fid_from_stats(a, b), **kid(a.features, b.features)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo", help="run directory or checkpoint of the demo model")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--preprocess", default="pytorch", choices=("pytorch", "tf"))
    parser.add_argument("--skip-memorization-features", action="store_true")
    parser.add_argument("--also-guidance", default="", help="comma-separated extra guidance weights to score "
                        "(FID/KID only), e.g. 1.5,2,3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "eval_mnist.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    extractor = get_extractor("inception", args.preprocess)
    timings: dict = {}
    n = args.n
    train = timed_stats(extractor, "mnist", "train", n, timings)
    test = timed_stats(extractor, "mnist", "test", n, timings)
    fashion = timed_stats(extractor, "fashion-mnist", "test", n, timings)
    real = {"mnist_train_vs_mnist_test": pair(train, test), "mnist_test_vs_fashion_test": pair(test, fashion)}
    log(f"floors: {json.dumps(as_json(real))}")

    model = load_model(args.run)
    settings = SamplingSettings.from_config(model.config.sample, seed=0)
    t0 = time.perf_counter()
    images, labels, _ = sample_for_evaluation(model.denoiser, model.image_shape, model.num_classes, n, settings)
    sampling_s = time.perf_counter() - t0
    log(f"{n} samples in {sampling_s:.0f} s")
    out_dir = RESULTS / "eval_mnist"
    save_png(preview_grid(images, labels), out_dir / "samples.png")
    t0 = time.perf_counter()
    demo, _ = feature_metrics(images, ("fid", "kid", "precision_recall"), test, extractor)
    timings.setdefault(extractor.name, []).append(n / (time.perf_counter() - t0))
    log(f"demo: FID {demo['fid']:.2f}, KID {demo['kid']:.5f}")
    sweep = []
    for w in (float(v) for v in args.also_guidance.split(",") if v.strip()):
        other = SamplingSettings.from_config(model.config.sample, seed=0, guidance=w)
        t0 = time.perf_counter()
        extra, _, _ = sample_for_evaluation(model.denoiser, model.image_shape, model.num_classes, n, other)
        values, _ = feature_metrics(extra, ("fid", "kid"), test, extractor)
        sweep.append({"guidance": w, "fid": values["fid"], "kid": values["kid"], "kid_std": values["kid_std"],
                      "seconds": round(time.perf_counter() - t0, 1)})
        log(f"guidance {w}: FID {values['fid']:.2f}, KID {values['kid']:.5f}")
    fast = None if args.skip_memorization_features else get_extractor("inception-fast", args.preprocess, 96)
    t0 = time.perf_counter()
    memorization = memorization_metrics(images, model.config.data, feature_extractor=fast, out_dir=out_dir, log=log)
    log(f"memorization ({time.perf_counter() - t0:.0f} s): {json.dumps(as_json(memorization))}")

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n": n, "preprocess": args.preprocess, "extractor": extractor.describe(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
        "threads": args.threads,
        "real_data": real,
        "demo": {"run": str(args.run), "checkpoint": str(model.checkpoint), "cur_nimg": model.cur_nimg,
                 "weights": model.weights, **settings.describe(), "sampling_s": round(sampling_s, 1), **demo,
                 "memorization": memorization, "guidance_sweep": sweep},
        "extractor_img_per_s": {k: round(sum(v) / len(v), 2) for k, v in timings.items()},
        "runtime_s": round(time.perf_counter() - started, 1),
        "reference_points_pytorch_fid_1k": {"mnist_train_vs_test": 15.9, "diffusers_unet_rf": 40.7,
                                            "diffusers_unet_rf_cfg2": 36.6, "diffusers_unet_ddpm": 126.0,
                                            "target_demo": 25.0},
    }
    result = as_json(result)
    rows = [("MNIST train vs MNIST test (floor)", real["mnist_train_vs_mnist_test"]),
            ("MNIST test vs Fashion-MNIST test", real["mnist_test_vs_fashion_test"]),
            (f"demo model ({model.cur_nimg:,} img, {settings.sampler} {settings.steps} steps, "
             f"w={settings.guidance.scale})", demo)]
    table = [f"| pair (n = {n}, {args.preprocess} preprocessing) | FID | KID |", "|---|---:|---:|"]
    table += [f"| {name} | {r['fid']:.2f} | {r['kid']:.5f} +- {r['kid_std']:.5f} |" for name, r in rows]
    result["table"] = "\n".join(table)
    print(result["table"])
    print(f"precision {demo['precision']:.3f}, recall {demo['recall']:.3f}")
    for row in sweep:
        print(f"guidance {row['guidance']}: FID {row['fid']:.2f}, KID {row['kid']:.5f} +- {row['kid_std']:.5f}")
    for space, s in memorization.items():
        print(f"memorization {space}: {s['flagged']}/{s['n']} ({100 * s['fraction']:.1f}%)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
