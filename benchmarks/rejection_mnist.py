"""Classifier rejection sampling on a class-conditional MNIST model, judged by an independent classifier.

For each guidance weight w: --n class-balanced samples (class-major labels, seeds 0..n-1, the run's sampler and
steps) drawn with :mod:`diffusekit.rejection`. A *rejector* reads every sample and the ones it reads as
another class are redrawn with fresh noise, up to --rounds draws per sample. A different *judge* scores the
samples before rejection (round 0, which is plain sampling) and after:

- judge: the standard cached classifier, ``load_or_train_classifier("mnist")`` (all 60k training digits, seed 0);
- rejector: the same architecture trained on the second half of the training digits (30k) with seed 1, cached
  as ``mnist-half2`` (trained on first use, 1-2 minutes on CPU).

They must differ: judged by the rejector itself, accuracy after rejection is 100% by construction (bar samples
still rejected after --rounds). They are not independent either (same architecture, the rejector's digits are
half of the judge's), so their mistakes correlate and the judged gain is, if anything, optimistic.

Columns: the judge's accuracy before (worst class); the rejector's first-round acceptance; draws per accepted
sample (all draws / accepted samples); the judge's accuracy after (worst class); samples still rejected after
--rounds; the judge's accuracy on the samples the rejector turned down in round 0 (low = the rejector flags real
mistakes); wall time of the whole row (and of round 0 alone, which is what plain sampling costs). The judge
scores uint8-quantized images (what a PNG holds); the rejector reads the float samples, as ``sample --reject``.

Usage::

    .venv/bin/python benchmarks/rejection_mnist.py --run runs/demo     # -> benchmarks/results/rejection_mnist.json
    .venv/bin/python benchmarks/rejection_mnist.py --run runs/demo --guidance 1,1.5,2 --n 300 --rounds 5
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

from diffusekit.data import ImageArrays, load
from diffusekit.generate import class_major_labels, load_model
from diffusekit.guidance import GuidanceSettings
from diffusekit.metrics import TrainSettings, classify, conditional_accuracy, load_or_train_classifier, quantize
from diffusekit.metrics.evaluate import SamplingSettings, as_json
from diffusekit.rejection import generation_draw, rejection_sample

RESULTS = Path(__file__).resolve().parent / "results"
REJECTOR = "mnist-half2"


def rejector(log) -> tuple[torch.nn.Module, dict]:
    """DigitCNN on the second half of the MNIST training digits, seed 1 (cached under its own name)."""
    train = load("mnist", "train")
    half = len(train) // 2
    second = ImageArrays(train.images[half:], train.labels[half:], train.num_classes, train.class_names)
    return load_or_train_classifier(REJECTOR, train=second, test=load("mnist", "test"),
                                    settings=TrainSettings(seed=1), log=log)


def judged(judge, images: torch.Tensor, labels: torch.Tensor) -> dict:
    return conditional_accuracy(classify(judge, quantize(images).float() / 127.5 - 1), labels, 10)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--guidance", default="1,2", help="comma-separated CFG weights")
    parser.add_argument("--rounds", type=int, default=10, help="most draws per sample (max_rounds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS / "rejection_mnist.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = load_model(args.run)
    if model.num_classes != 10 or model.config.data.name != "mnist":
        raise SystemExit(f"{args.run} is not a class-conditional MNIST model")
    judge, judge_meta = load_or_train_classifier("mnist", log=log)
    reject_model, rejector_meta = rejector(log)
    labels = class_major_labels(args.n, model.num_classes)
    results = []
    for w in (float(v) for v in args.guidance.split(",")):
        settings = SamplingSettings.from_config(model.config.sample, guidance=GuidanceSettings(scale=w),
                                                seed=args.seed)
        draw = generation_draw(model.denoiser, model.image_shape, labels, num_classes=model.num_classes,
                               sampler=settings.sampler, steps=settings.steps, spacing=settings.spacing,
                               guidance=settings.guidance, options=settings.options, seed=settings.seed,
                               batch_size=settings.batch_size)
        first, seconds = [], []

        def recording(indices, r, draw=draw, first=first, seconds=seconds):
            t0 = time.perf_counter()
            images = draw(indices, r)
            seconds.append(time.perf_counter() - t0)
            if r == 0:
                first.append(images)
            return images
        t0 = time.perf_counter()
        result = rejection_sample(recording, lambda x: classify(reject_model, x), labels, max_rounds=args.rounds)
        wall = time.perf_counter() - t0
        before, after = judged(judge, first[0], labels), judged(judge, result.images, labels)
        turned_down = result.rounds_used > 1
        on_rejected = (judged(judge, first[0][turned_down], labels[turned_down])["overall"]
                       if turned_down.any() else None)
        row = {"guidance": w, "judge_before": before["overall"], "judge_before_worst_class": before["min_class"],
               "first_round_acceptance": result.first_round_acceptance,
               "draws_per_accepted": result.draws / max(int(result.accepted.sum()), 1),
               "judge_after": after["overall"], "judge_after_worst_class": after["min_class"],
               "judge_on_first_round_rejected": on_rejected, "unaccepted": int((~result.accepted).sum()),
               "rejection": result.describe(), "wall_s": round(wall, 1), "round0_s": round(seconds[0], 1),
               "judge_per_class_before": before["per_class"], "judge_per_class_after": after["per_class"]}
        results.append(row)
        log(json.dumps(as_json({k: v for k, v in row.items() if not k.startswith("judge_per_class")})))
        write(args, model, judge_meta, rejector_meta, results)
    table = ["| w | judge accuracy before (worst class) | rejector first-round acceptance | draws / accepted | "
             "judge accuracy after (worst class) | still rejected | judge accuracy on round-0 rejects | "
             "wall s (round 0) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        on_rejected = "-" if r["judge_on_first_round_rejected"] is None else f"{r['judge_on_first_round_rejected']:.1%}"
        table.append(f"| {r['guidance']:g} | {r['judge_before']:.1%} ({r['judge_before_worst_class']:.0%}) | "
                     f"{r['first_round_acceptance']:.1%} | {r['draws_per_accepted']:.3f} | "
                     f"{r['judge_after']:.1%} ({r['judge_after_worst_class']:.0%}) | {r['unaccepted']} | "
                     f"{on_rejected} | {r['wall_s']:.0f} ({r['round0_s']:.0f}) |")
    print("\n".join(table))
    return 0


def write(args, model, judge_meta, rejector_meta, results) -> None:
    def describe(meta, seed):
        return {"dataset": meta["dataset"], "train_size": meta.get("train_size"), "seed": seed,
                "test_accuracy": meta["test_accuracy"]}
    s = model.config.sample
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "run": str(args.run), "checkpoint": str(model.checkpoint), "cur_nimg": model.cur_nimg, "n": args.n,
           "seed": args.seed, "sampler": s.sampler, "steps": s.steps, "options": s.options, "max_rounds": args.rounds,
           "judge": describe(judge_meta, TrainSettings().seed), "rejector": describe(rejector_meta, 1),
           "threads": torch.get_num_threads(),
           "versions": {"python": platform.python_version(), "torch": torch.__version__}, "rows": results}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(as_json(out), indent=1))


if __name__ == "__main__":
    sys.exit(main())
