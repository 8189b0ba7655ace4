"""One FID/KID row per call for a class-conditional MNIST run: which EMA, sampler, steps and guidance score best.

Draws 1,000 class-balanced samples (seeds (seed, i), as ``diffusekit eval`` does), scores them with the
standard Inception (pytorch-fid preprocessing) against one of two disjoint slices of MNIST's test split
(``--split``, ``mnist_reference.py``): ``val`` = test[1000:2000], the slice settings are chosen on (the
default), or ``test`` = test[0:1000], the slice they are reported on once chosen; and appends a row to
``benchmarks/results/fid_sweep_mnist.json`` with the pixel statistics that explain most of the gap to the
floor (mean pixel, faint haze at 1-12 of 255, pixels at 255; real test digits: 30.8, 0.9% and 0.7%).
Each row records its slice (``split``, ``ref``). Against test[0:1000] the same numbers come from
``diffusekit eval RUN --metrics fid,kid`` with the same flags; this script collects them in one table, with
the pixel statistics beside them. Rows with ``"split": "test-searched"`` come from before the held-out
protocol: the search that chose the earlier preset's sampling on test[0:1000] itself, not held-out figures.

Usage::

    .venv/bin/python benchmarks/fid_sweep_mnist.py runs/demo --steps 16 --guidance 3 --interval 0.3 5 --seed 20000
    .venv/bin/python benchmarks/fid_sweep_mnist.py runs/demo --split test --seed 5000   # the run's own settings
    .venv/bin/python benchmarks/fid_sweep_mnist.py runs/d102k --ema e2k --steps 16 --guidance 3 --interval 0.3 5
    .venv/bin/python benchmarks/fid_sweep_mnist.py runs/long116k --sampler edm_churn --option S_churn=20 --steps 16
    .venv/bin/python benchmarks/fid_sweep_mnist.py runs/demo --eps-scale 0.98 --spacing karras --seed 5000
    .venv/bin/python benchmarks/fid_sweep_mnist.py --table         # print the collected rows
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from diffusekit.config import parse_override
from diffusekit.generate import load_model
from diffusekit.guidance import THRESHOLDS, GuidanceSettings
from diffusekit.metrics import classify, conditional_accuracy, load_or_train_classifier
from diffusekit.metrics.evaluate import SamplingSettings, as_json, feature_metrics, sample_for_evaluation
from diffusekit.metrics.inception import get_extractor
from diffusekit.models import PRECISIONS, Execution
from fid_gap_mnist import HAZE_MAX  # the haze bound: grey levels 1..12 of 255 (docs/evaluation.md)
from mnist_reference import SLICE_STARTS, reference_stats, slice_label

RESULTS = Path(__file__).resolve().parent / "results"


def pixel_statistics(images: torch.Tensor) -> dict[str, float]:
    values = images.float()
    return {"mean_pixel": float(values.mean()), "haze": float(((values >= 1) & (values <= HAZE_MAX)).float().mean()),
            "at_255": float((values == 255).float().mean())}


def _rows(output: Path) -> list[dict]:
    return json.loads(output.read_text())["rows"] if output.exists() else []


def _header(output: Path) -> dict:
    """The file's fields other than its rows, kept as they are."""
    return {k: v for k, v in json.loads(output.read_text()).items() if k != "rows"} if output.exists() else {
        "reference": "a slice of MNIST's test split (each row's ref), standard Inception, pytorch-fid"}


def _spacing(row: dict) -> str:
    return f", {row['spacing']}" if row.get("spacing", "uniform") != "uniform" else ""


def table(rows: list[dict]) -> str:
    lines = ["| run | images | weights | sampler, steps | guidance | reference | seed | FID | KID | accuracy | "
             "mean pixel | haze | at 255 |", "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        accuracy = f"{r['accuracy']:.1%}" if "accuracy" in r else ""
        lines.append(f"| {r['run']} | {r['cur_nimg']:,} | {r['weights']} | {r['sampler']}, {r['steps']}{_spacing(r)} | "
                     f"{r['guidance']} | {r['split']} {r['ref']} | {r['seed']} | {r['fid']:.2f} | {r['kid']:.4f} | "
                     f"{accuracy} | {r['mean_pixel']:.1f} | {r['haze']:.3f} | {r['at_255']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?")
    parser.add_argument("--ema", help="EMA name (default: the run's first)")
    parser.add_argument("--sampler")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--spacing", help="time grid (default: the run's)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    # guidance flags left unset keep the run's own sample.* settings
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--interval", type=float, nargs=2, metavar=("LO", "HI"))
    parser.add_argument("--rescale", type=float)
    parser.add_argument("--threshold", choices=THRESHOLDS)
    parser.add_argument("--eps-scale", type=float, help="epsilon scaling's lambda")
    parser.add_argument("--autoguide", metavar="RUN_OR_CKPT",
                        help="autoguidance (EDM2): --guidance is then the weight against this weaker model")
    parser.add_argument("--autoguide-ema", metavar="NAME", help="the guide's EMA, or 'model'")
    parser.add_argument("--no-interval", action="store_true", help="guide at every step (drop the run's interval)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=tuple(SLICE_STARTS), default="val",
                        help="reference slice: val = MNIST test[1000:2000] (choose settings here), test = "
                             "test[0:1000] (report the chosen ones)")
    parser.add_argument("--n", type=int, default=1000, help="samples, and digits in the reference slice (<= 1000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the network's precision when sampling")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--output", default=str(RESULTS / "fid_sweep_mnist.json"))
    parser.add_argument("--table", action="store_true", help="print the collected rows and exit")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if args.table or args.run is None:
        print(table(_rows(output)))
        return 0
    try:
        ref = slice_label(args.split, args.n)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    execution = Execution(args.precision, args.channels_last)
    model = load_model(args.run, ema=args.ema, execution=execution)
    if model.num_classes < 2 or tuple(model.image_shape) != (1, 28, 28):
        raise SystemExit(f"{args.run}: expected a class-conditional MNIST run")
    guidance = GuidanceSettings.from_sample(model.config.sample, scale=args.guidance, rescale=args.rescale,
                                            interval=tuple(args.interval) if args.interval else None,
                                            threshold=args.threshold, eps_scale=args.eps_scale,
                                            autoguide=args.autoguide, autoguide_ema=args.autoguide_ema)
    if args.no_interval:
        guidance = dataclasses.replace(guidance, interval=None)
    options = {".".join(keys): value for keys, value in map(parse_override, args.option)} or None
    settings = SamplingSettings.from_config(model.config.sample, guidance=guidance, seed=args.seed,
                                            sampler=args.sampler, steps=args.steps, spacing=args.spacing,
                                            options=options)
    extractor = get_extractor("inception", "pytorch")
    reference = reference_stats(extractor, args.split, args.n)
    started = time.perf_counter()
    images, labels, _ = sample_for_evaluation(model.denoiser, model.image_shape, model.num_classes, args.n, settings)
    values, _ = feature_metrics(images, ("fid", "kid"), reference, extractor)
    classifier, _ = load_or_train_classifier("mnist")  # 99.5% on real test digits (docs/guidance.md)
    accuracy = conditional_accuracy(classify(classifier, images.float() / 127.5 - 1), labels, model.num_classes)
    row = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "run": args.run,
           "cur_nimg": model.cur_nimg, "weights": model.weights, "sampler": settings.sampler, "steps": settings.steps,
           "spacing": settings.spacing, "options": settings.options, "guidance": guidance.describe(),
           "split": args.split, "ref": ref, "seed": args.seed, "n": args.n, "execution": execution.describe(),
           "fid": values["fid"], "kid": values["kid"], "accuracy": accuracy["overall"],
           "worst_class_accuracy": accuracy["min_class"], **pixel_statistics(images),
           "seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__}
    rows = _rows(output) + [row]  # read now, not at the start: rows other calls added meanwhile are kept
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(as_json({**_header(output), "rows": rows}), indent=1))
    print(table([row]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
