"""Guidance on a class-conditional MNIST model: accuracy, FID and saturation for each guidance method.

For every row: --n class-balanced samples (seeds 0..n-1, the run's sampler and steps), then

- the MNIST classifier's accuracy on them (``diffusekit.metrics.classifier``, overall and worst class);
- FID / KID against the first --n MNIST test digits (standard Inception, pytorch-fid preprocessing), for
  the rows marked ``fid``;
- saturation: the fraction of pixels at -1 or +1 (uint8 0 or 255), beside the same fraction of real test
  digits (MNIST is mostly black background, so the real fraction is high too);
- network evaluations per image (NFE: two per step where guidance runs, one elsewhere).

Rows: the CFG sweep w in {1, 1.5, 2, 3, 5}; w = 7 with no / static / dynamic thresholding and with CFG
rescale; autoguidance by an early checkpoint of the same run (--guide, default the run's oldest
checkpoint) against CFG at the same NFE; the guidance interval and the weight schedules.

Usage::

    .venv/bin/python benchmarks/guidance_mnist.py --run runs/demo      # -> benchmarks/results/guidance_mnist.json
    .venv/bin/python benchmarks/guidance_mnist.py --run runs/demo --only cfg-2,ag-2 --n 300
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffusekit.data import load
from diffusekit.generate import load_model
from diffusekit.guidance import GuidanceSettings
from diffusekit.metrics import classify, conditional_accuracy, load_or_train_classifier
from diffusekit.metrics.evaluate import SamplingSettings, as_json, feature_metrics, sample_for_evaluation
from diffusekit.metrics.features import dataset_reference_stats
from diffusekit.metrics.inception import get_extractor

RESULTS = Path(__file__).resolve().parent / "results"


def rows(guide: str) -> list[tuple[str, dict, bool]]:
    """(name, GuidanceSettings keywords, whether to compute FID)."""
    out = [(f"cfg-{w:g}", {"scale": w}, True) for w in (1.0, 1.5, 2.0, 3.0, 5.0)]
    out += [("cfg-7", {"scale": 7.0}, False),
            ("cfg-7-static", {"scale": 7.0, "threshold": "static"}, False),
            ("cfg-7-dynamic", {"scale": 7.0, "threshold": "dynamic", "percentile": 0.995}, False),
            ("cfg-7-rescale-0.7", {"scale": 7.0, "rescale": 0.7}, False)]
    out += [(f"ag-{w:g}", {"scale": w, "autoguide": guide}, True) for w in (2.0, 3.0)]
    out += [("cfg-3-interval-0.3-5", {"scale": 3.0, "interval": (0.3, 5.0)}, True),
            ("cfg-3-increasing", {"scale": 3.0, "weight_schedule": "increasing"}, True),
            ("cfg-5-oscillating-1-w2", {"scale": 5.0, "weight_schedule": "oscillating", "low": 1.0, "warmup": 2}, True)]
    return out


def saturation(images: torch.Tensor) -> float:
    return float(((images == 0) | (images == 255)).float().mean())


def nfe_per_image(settings: GuidanceSettings, model, steps: int) -> float:
    """Network evaluations per image on the run's grid (counted by wrapping the denoiser)."""
    from diffusekit.generate import generate

    calls = []
    denoiser = model.denoiser

    def counting(x, t, cond=None):
        calls.append(x.shape[0])
        return denoiser(x, t, cond)
    guide = None
    if settings.autoguide is not None:
        guide_model = load_model(settings.autoguide).denoiser

        def guide(x, t, cond=None):
            calls.append(x.shape[0])
            return guide_model(x, t, cond)
    counting.schedule = denoiser.schedule
    s = model.config.sample
    generate(counting, 1, model.image_shape, labels=torch.zeros(1, dtype=torch.long), num_classes=model.num_classes,
             sampler=s.sampler, steps=steps, spacing=s.spacing, guidance=settings, options=s.options, guide=guide)
    return float(sum(calls))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--guide", help="autoguidance model (default: the run's oldest checkpoint)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--only", help="comma-separated row names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "guidance_mnist.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = load_model(args.run)
    guide = args.guide or str(sorted(Path(model.checkpoint).parent.glob("ckpt-*"))[0])
    classifier, classifier_meta = load_or_train_classifier("mnist", log=log)
    extractor = get_extractor("inception", "pytorch")
    reference = dataset_reference_stats(extractor, "mnist", "test", args.n, log=log)
    real = torch.from_numpy(np.ascontiguousarray(load("mnist", "test").images[:args.n]))
    selected = rows(guide)
    if args.only:
        names = set(args.only.split(","))
        selected = [r for r in selected if r[0] in names]
    results = []
    for name, keywords, with_fid in selected:
        guidance = GuidanceSettings(**keywords)
        settings = SamplingSettings.from_config(model.config.sample, guidance=guidance, seed=0)
        t0 = time.perf_counter()
        images, labels, _ = sample_for_evaluation(model.denoiser, model.image_shape, model.num_classes, args.n,
                                                  settings)
        sampling_s = time.perf_counter() - t0
        predicted = classify(classifier, images.float() / 127.5 - 1)
        accuracy = conditional_accuracy(predicted, labels, model.num_classes)
        row = {"name": name, "guidance": guidance.describe(), "nfe": nfe_per_image(guidance, model, settings.steps),
               "sampling_s": round(sampling_s, 1), "accuracy": accuracy["overall"],
               "worst_class_accuracy": accuracy["min_class"], "saturation": saturation(images)}
        if with_fid:
            values, _ = feature_metrics(images, ("fid", "kid"), reference, extractor)
            row.update(fid=values["fid"], kid=values["kid"], kid_std=values["kid_std"])
        results.append(row)
        log(json.dumps(as_json(row)))
        write(args, model, guide, classifier_meta, real, results)
    table = ["| row | NFE | accuracy (worst class) | saturation | FID | KID |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        fid = f"{r['fid']:.2f}" if "fid" in r else "-"
        kid_value = f"{r['kid']:.4f}" if "kid" in r else "-"
        table.append(f"| {r['name']} | {r['nfe']:g} | {r['accuracy']:.1%} ({r['worst_class_accuracy']:.0%}) | "
                     f"{r['saturation']:.3f} | {fid} | {kid_value} |")
    print("\n".join(table))
    return 0


def write(args, model, guide, classifier_meta, real, results) -> None:
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "run": str(args.run), "checkpoint": str(model.checkpoint), "cur_nimg": model.cur_nimg,
           "guide": guide, "n": args.n, "sampler": model.config.sample.sampler, "steps": model.config.sample.steps,
           "classifier_test_accuracy": classifier_meta.get("test_accuracy"),
           "real_saturation": saturation(real), "fid_reference": f"mnist test[:{args.n}], standard Inception",
           "versions": {"python": platform.python_version(), "torch": torch.__version__}, "rows": results}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(as_json(out), indent=1))


if __name__ == "__main__":
    sys.exit(main())
