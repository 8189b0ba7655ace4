"""Score class-conditional MNIST samples with a classifier trained on real MNIST.

The acceptance bar for the demo: the classifier itself reaches at least 99% test accuracy, and it
recognises at least 99% of the samples as the requested class overall and at least 97% in every class
(the demo generates 100 samples per class).

The samples file is an ``.npz`` with

- ``images``: float ``[N, 1, 28, 28]`` in [-1, 1] (NCHW), or uint8 ``[N, 28, 28, 1]`` in [0, 255]
  (NHWC, as ``diffusekit.data`` stores images; mapped to [-1, 1] by ``x / 127.5 - 1``). Float NHWC
  ``[N, 28, 28, 1]``, uint8 NCHW and 32x32 images (center-cropped to 28x28) are accepted too;
- ``labels``: int ``[N]``, the requested classes.

The classifier comes from ``diffusekit.metrics.load_or_train_classifier`` (trained once, a few minutes
on 2 CPU cores, then cached; ``--cache-dir`` overrides the cache folder). ``--real N`` scores the first
N real MNIST test images of each class instead, a sanity check whose result should be close to the
classifier's test accuracy.

Usage::

    .venv/bin/python benchmarks/demo_quality.py runs/demo/samples.npz   # -> benchmarks/results/demo_quality.json
    .venv/bin/python benchmarks/demo_quality.py SAMPLES.npz --json OUT.json --cache-dir /tmp/classifiers
    .venv/bin/python benchmarks/demo_quality.py --real 100             # -> benchmarks/results/demo_quality_real.json

The exit status is 0 when every criterion passes, 1 when one fails, 2 on bad input.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusekit.data import load
from diffusekit.metrics import classify, conditional_accuracy, load_or_train_classifier

MIN_OVERALL = 0.99
MIN_PER_CLASS = 0.97
MIN_CLASSIFIER = 0.99
RESULTS = Path(__file__).resolve().parent / "results"


def images_from_array(images: np.ndarray) -> torch.Tensor:
    """Float NCHW in [-1, 1] from the layouts the samples file may hold (see the module docstring)."""
    if images.ndim != 4:
        raise ValueError(f"images must be 4-D ([N, 1, H, W] or [N, H, W, 1]), got shape {images.shape}")
    if images.shape[1] != 1 and images.shape[-1] == 1:
        images = images.transpose(0, 3, 1, 2)
    if images.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1
    elif np.issubdtype(images.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    else:
        raise ValueError(f"images must be float in [-1, 1] or uint8 in [0, 255], got dtype {images.dtype}")
    return x


def load_samples(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path) as data:
        missing = {"images", "labels"} - set(data.files)
        if missing:
            raise ValueError(f"{path} lacks {', '.join(sorted(missing))} (it has: {', '.join(data.files)})")
        images, labels = data["images"], data["labels"]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(images):
        raise ValueError(f"labels must be integers [N] matching the {len(images)} images, "
                         f"got {labels.dtype} {labels.shape}")
    return images_from_array(images), torch.from_numpy(labels.astype(np.int64))


def real_samples(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` MNIST test images of each class."""
    test = load("mnist", "test")
    indices = np.concatenate([np.flatnonzero(test.labels == c)[:per_class] for c in range(test.num_classes)])
    return test.tensors(indices)


def print_table(scores: dict[str, Any], classifier_accuracy: float, checks: dict[str, bool]) -> None:
    confusion = np.array(scores["confusion"])
    print(f"\n{'class':>5} {'n':>5} {'correct':>7} {'accuracy':>8}  most confused with")
    for c, (n, right, acc) in enumerate(zip(scores["counts"], scores["correct"], scores["per_class"], strict=True)):
        wrong = confusion[c].copy()
        wrong[c] = 0
        confused = ", ".join(f"{k} ({wrong[k]})" for k in np.argsort(-wrong, kind="stable")[:2] if wrong[k])
        shown = "-" if acc is None else f"{acc:.2%}"
        print(f"{c:>5} {n:>5} {right:>7} {shown:>8}  {confused}")
    rows = [
        ("overall", scores["overall"], MIN_OVERALL, "overall"),
        ("min class", scores["min_class"], MIN_PER_CLASS, "min_class"),
        ("classifier test accuracy", classifier_accuracy, MIN_CLASSIFIER, "classifier"),
    ]
    print()
    for name, value, bar, check in rows:
        print(f"{name:<25} {value:8.2%}  (bar >= {bar:.0%})  {'PASS' if checks[check] else 'FAIL'}")
    print(f"{'result':<25} {'PASS' if all(checks.values()) else 'FAIL'}")


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", nargs="?", type=Path, help=".npz with images and labels (requested classes)")
    parser.add_argument("--real", type=int, metavar="N", help="score N real MNIST test images per class instead")
    parser.add_argument("--json", type=Path, help="output JSON (default: benchmarks/results/demo_quality.json, "
                                                  "or demo_quality_real.json with --real)")
    parser.add_argument("--cache-dir", type=Path, help="classifier cache folder (default: $DIFFUSEKIT_CACHE/"
                                                       "classifiers or ~/.cache/diffusekit/classifiers)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    if (args.samples is None) == (args.real is None):
        parser.error("give either a samples file or --real N")
    if args.real is not None and args.real <= 0:
        parser.error("--real needs a positive number of images per class")
    torch.set_num_threads(args.threads)

    try:
        if args.real is not None:
            images, labels = real_samples(args.real)
            source: dict[str, Any] = {"real_mnist_test_per_class": args.real}
        else:
            images, labels = load_samples(args.samples)
            digest = hashlib.sha256(args.samples.read_bytes()).hexdigest()
            source = {"samples": str(args.samples), "samples_sha256": digest}
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    model, meta = load_or_train_classifier("mnist", args.cache_dir)
    classifier_accuracy = float(meta["test_accuracy"])
    how = "cached" if meta["cached"] else f"trained in {meta['train_seconds']:.0f} s"
    print(f"classifier test accuracy: {classifier_accuracy:.2%} ({how}; {meta['weights']})")

    start = time.perf_counter()
    try:
        predicted = classify(model, images)
        scores = conditional_accuracy(predicted, labels, 10)
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"classified {len(images)} images in {seconds:.1f} s")
    if min(scores["counts"]) < 100:
        print(f"note: the bar is defined for 100 samples per class; the fewest here is {min(scores['counts'])}")

    checks = {
        "overall": scores["overall"] >= MIN_OVERALL,
        "min_class": scores["min_class"] >= MIN_PER_CLASS,
        "classifier": classifier_accuracy >= MIN_CLASSIFIER,
    }
    print_table(scores, classifier_accuracy, checks)

    record = {
        "benchmark": "demo_quality",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **source,
        "num_samples": int(len(images)),
        "passed": all(checks.values()),
        "checks": checks,
        "bars": {"overall": MIN_OVERALL, "min_class": MIN_PER_CLASS, "classifier": MIN_CLASSIFIER},
        "classifier": {
            "test_accuracy": classifier_accuracy,
            "weights": meta["weights"],
            "weights_sha256": meta["weights_sha256"],
            "train_seconds": meta["train_seconds"],
            "key": meta["key"],
        },
        **scores,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads},
    }
    output = args.json or RESULTS / ("demo_quality_real.json" if args.real is not None else "demo_quality.json")
    write_json(output, record)
    print(f"wrote {output}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
