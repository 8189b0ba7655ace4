"""A two-stage MNIST cascade (14x14 -> 28x28): does noise-conditioning augmentation help stage 2?

Trains (or reuses, with --reuse) three class-conditional runs under --root:

- ``stage1``: MNIST at 14x14 (box-downsampled);
- ``stage2-aug``: 28x28 conditioned on the 14x14 image with noise-conditioning augmentation
  (levels s ~ U[0, 0.5] on a cosine VP path in training, fixed at SNR --snr when sampling);
- ``stage2-clean``: the same stage trained on clean low-resolution images.

Then draws --n class-balanced stage-1 samples (seeds 0..n-1) and feeds them to both stage-2 models, and
also feeds both the real low-resolution test digits (the setting stage 2 was trained for). FID / KID of
every 28x28 set against the first --n MNIST test digits (standard Inception, pytorch-fid preprocessing),
and the classifier's accuracy. Writes ``benchmarks/results/cascade_mnist.json`` and a grid per set.

Usage::

    .venv/bin/python benchmarks/cascade_mnist.py                   # trains ~3 x 5 min on 2 CPU cores
    .venv/bin/python benchmarks/cascade_mnist.py --reuse --n 1000
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

from diffusekit.cascade import downsample, sampling_condition
from diffusekit.cli import main as cli
from diffusekit.data import load
from diffusekit.generate import class_major_labels, generate, load_model
from diffusekit.images import make_grid, save_png
from diffusekit.metrics import classify, conditional_accuracy, load_or_train_classifier
from diffusekit.metrics.evaluate import as_json, feature_metrics
from diffusekit.metrics.features import dataset_reference_stats
from diffusekit.metrics.inception import get_extractor, quantize
from diffusekit.models.build import cascade_settings

RESULTS = Path(__file__).resolve().parent / "results"
NETWORK = ["--set", "network.options={model_channels: 16, channel_mult: [1, 2, 4], num_blocks: 1, "
           "attn_resolutions: [7], dropout: 0.0}"]
COMMON = ["train", "--preset", "mnist", "--quiet", "--set", "eval.loss_every=null", "--set", "run.sample_every=null",
          "--set", "optim.warmup_images=2000"]


def train(run: Path, images: int, threads: int, *extra: str) -> None:
    argv = [*COMMON, *NETWORK, "--run-dir", str(run), "--images", str(images), "--threads", str(threads),
            "--set", f"run.checkpoint_every={images}", *extra]
    if cli(argv) != 0:
        raise SystemExit(f"training {run} failed")


def sample_stage2(run: Path, low: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    model = load_model(run)
    settings = cascade_settings(model.config)
    s = model.config.sample
    images = []
    for first in range(0, len(low), 250):
        part, part_labels = low[first:first + 250], labels[first:first + 250]
        condition = sampling_condition(part, settings, model.image_shape[-1], seed=seed, first=first)
        images.append(generate(model.denoiser, len(part), model.image_shape, labels=part_labels,
                               num_classes=model.num_classes, sampler=s.sampler, steps=s.steps, spacing=s.spacing,
                               guidance=s.guidance, options=s.options, seed=seed, first=first, condition=condition))
    return torch.cat(images)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/cascade")
    parser.add_argument("--images", type=int, default=20_000, help="training images per stage")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--snr", type=float, default=5.0, help="sampling SNR of the noise augmentation")
    parser.add_argument("--reuse", action="store_true", help="use the runs already under --root")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "cascade_mnist.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    root = Path(args.root)
    timings = {}
    runs = {"stage1": ["--set", "data.resolution=14", "--set",
                       "network.options={model_channels: 32, channel_mult: [1, 2], num_blocks: 1, "
                       "attn_resolutions: [7], dropout: 0.0}"],
            "stage2-aug": ["--set", "cascade.low_resolution=14", "--set", f"cascade.sample_snr={args.snr}"],
            "stage2-clean": ["--set", "cascade.low_resolution=14", "--set", "cascade.noise_aug=false"]}
    for name, extra in runs.items():
        if not args.reuse:
            t0 = time.perf_counter()
            train(root / name, args.images, args.threads, *extra)
            timings[name] = round(time.perf_counter() - t0, 1)
            log(f"{name}: trained in {timings[name]} s")

    labels = class_major_labels(args.n, 10)
    stage1 = load_model(root / "stage1")
    s = stage1.config.sample
    t0 = time.perf_counter()
    low = generate(stage1.denoiser, args.n, stage1.image_shape, labels=labels, num_classes=10, sampler=s.sampler,
                   steps=s.steps, spacing=s.spacing, guidance=s.guidance, options=s.options)
    timings["sample_stage1"] = round(time.perf_counter() - t0, 1)
    test = load("mnist", "test")
    real, real_labels = test.tensors(list(range(args.n)))
    real_low = downsample(real, 14)

    extractor = get_extractor("inception", "pytorch")
    reference = dataset_reference_stats(extractor, "mnist", "test", args.n, log=log)
    classifier, _ = load_or_train_classifier("mnist", log=log)
    rows = []
    sets = [("stage2-aug <- stage-1 samples", "stage2-aug", low, labels),
            ("stage2-clean <- stage-1 samples", "stage2-clean", low, labels),
            ("stage2-aug <- real 14x14 test digits", "stage2-aug", real_low, real_labels),
            ("stage2-clean <- real 14x14 test digits", "stage2-clean", real_low, real_labels)]
    for name, run, inputs, wanted in sets:
        t0 = time.perf_counter()
        images = sample_stage2(root / run, inputs.clamp(-1, 1), wanted)
        sampling_s = time.perf_counter() - t0
        values, _ = feature_metrics(quantize(images), ("fid", "kid"), reference, extractor)
        accuracy = conditional_accuracy(classify(classifier, images.clamp(-1, 1)), wanted, 10)
        row = {"set": name, "fid": values["fid"], "kid": values["kid"], "accuracy": accuracy["overall"],
               "sampling_s": round(sampling_s, 1)}
        rows.append(row)
        log(json.dumps(as_json(row)))
        slug = name.split(" ")[0] + ("-samples" if "samples" in name else "-real")
        save_png(make_grid(images[::max(1, args.n // 100)][:100], 10), RESULTS / "cascade" / f"{slug}.png")
    save_png(make_grid(low[::max(1, args.n // 100)][:100], 10), RESULTS / "cascade" / "stage1.png")
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "root": str(root),
           "images_per_stage": args.images, "n": args.n, "sample_snr": args.snr, "timings_s": timings,
           "versions": {"python": platform.python_version(), "torch": torch.__version__}, "rows": rows}
    Path(args.output).write_text(json.dumps(as_json(out), indent=1))
    table = ["| stage 2 input | FID | KID | accuracy |", "|---|---:|---:|---:|"]
    table += [f"| {r['set']} | {r['fid']:.2f} | {r['kid']:.4f} | {r['accuracy']:.1%} |" for r in rows]
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
