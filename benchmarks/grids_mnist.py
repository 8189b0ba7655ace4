"""Tuned time grids on a trained class-conditional MNIST run: FID_1k at NFE 5, 8, 10 for the tuned grid against
the Karras, log-SNR and uniform grids, with the held-out protocol of ``fid_sweep_mnist.py``.

1. Fit: one grid per NFE (``diffusekit tune-grid``'s :func:`tune_model_grids`) with the run's own sampling
   settings (sampler and options, guidance weight, interval and epsilon scaling), on a batch of ``--fit-n``
   class-major images from noise seeds (``--fit-seed``, i), against a many-step multistep reference of the same
   noise, starting where the run's spacing starts (t = 1 for the preset's uniform grid). The grids are written
   to ``--grids-out`` (never into the run directory).
2. Choose: FID of 1,000 class-balanced samples (seeds (``--val-seed``, i)) against the validation slice,
   MNIST test[1000:2000], for every candidate grid (tuned, karras, logsnr, uniform) at each NFE; the
   candidate with the lowest validation FID is the chosen one.
3. Report: FID and KID of every candidate against the test slice, test[0:1000], with other samples (seeds
   (``--test-seed``, i)); the chosen candidate's test FID is the held-out figure. With ``--splits test`` step 2
   is skipped: every grid's test FID is reported, which is held out as it stands, because no grid is fitted or
   chosen on images (the tuned one is fitted to a reference solve of its own noise batch).

Every sample is drawn as ``diffusekit eval`` draws it (image i from noise seed (seed, i), class-major labels),
so a row can be reproduced with ``diffusekit sample --grid``. Standard Inception, pytorch-fid preprocessing.

Usage::

    .venv/bin/python benchmarks/grids_mnist.py runs/mnist --threads 1            # NFE 5, 8, 10
    .venv/bin/python benchmarks/grids_mnist.py runs/mnist --nfe 5 --n 50 --fit-n 16 \
        --max-evals 20 --reference-steps 40                                        # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from diffusekit.cli.tune_grid import FIT_SEED, steps_for_nfe, tune_model_grids
from diffusekit.generate import class_major_labels, generate, load_model
from diffusekit.guidance import GuidanceSettings
from diffusekit.metrics.evaluate import as_json, feature_metrics
from diffusekit.metrics.inception import get_extractor, quantize
from diffusekit.sampling import timesteps
from diffusekit.sampling.grid_files import save_grids
from mnist_reference import reference_stats, slice_label

RESULTS = Path(__file__).resolve().parent / "results"
SPACINGS = ("karras", "logsnr", "uniform")


def draw(model, guidance: GuidanceSettings, sampler: str, options: dict, ts: torch.Tensor, n: int, seed: int,
         batch_size: int) -> torch.Tensor:
    """uint8 images of ``n`` class-major samples, image i from noise seed (seed, i), on the grid ``ts``."""
    labels = class_major_labels(n, model.num_classes)
    images = generate(model.denoiser, n, model.image_shape, labels=labels, num_classes=model.num_classes,
                      sampler=sampler, guidance=guidance, options=options, seed=seed, batch_size=batch_size, ts=ts)
    return quantize(images)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a class-conditional MNIST run directory or checkpoint (only read)")
    parser.add_argument("--nfe", default="5,8,10")
    parser.add_argument("--n", type=int, default=1000, help="samples per FID, and digits per reference slice")
    parser.add_argument("--fit-n", type=int, default=64, help="images in the fitting batch")
    parser.add_argument("--fit-seed", type=int, default=FIT_SEED)
    parser.add_argument("--val-seed", type=int, default=20000, help="sample seeds of the validation FIDs")
    parser.add_argument("--splits", default="val,test",
                        help="reference slices to score every grid on: val,test (choose on val, report on test) or "
                        "test alone (no choice is made: every grid's held-out FID, none of them fitted to images)")
    parser.add_argument("--test-seed", type=int, default=0, help="sample seeds of the test FIDs")
    parser.add_argument("--max-evals", type=int, default=60, help="sampler runs per Nelder-Mead search")
    parser.add_argument("--restarts", type=int, default=1, help="restarts of each search")
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--ema", help="EMA name (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "grids_mnist.json")
    parser.add_argument("--grids-out", type=Path, default=None,
                        help="the tuned grids' JSON (default: beside --output, grids_mnist_grids.json)")
    args = parser.parse_args(argv)
    splits = tuple(args.splits.split(","))
    if not splits or set(splits) - {"val", "test"}:
        raise SystemExit(f"--splits: give val, test or val,test, got {args.splits!r}")
    torch.set_num_threads(args.threads)
    budgets = [int(v) for v in args.nfe.split(",")]
    grids_out = args.grids_out or args.output.with_name(args.output.stem + "_grids.json")
    began = time.perf_counter()

    def log(message: str):
        print(f"[{time.perf_counter() - began:7.1f}s] {message}", file=sys.stderr, flush=True)

    model = load_model(args.run, ema=args.ema)
    if model.num_classes < 2 or tuple(model.image_shape) != (1, 28, 28):
        raise SystemExit(f"{args.run}: expected a class-conditional MNIST run")
    s = model.config.sample
    guidance = GuidanceSettings.from_sample(s)
    sampler, options = s.sampler, dict(s.options)
    schedule = model.denoiser.schedule
    log(f"{args.run}: {sampler} {options}, guidance {guidance.describe()}, schedule {schedule!r}")
    tuned = tune_model_grids(model, budgets, sampler=sampler, options=options, guidance=guidance, n=args.fit_n,
                             seed=args.fit_seed, reference_steps=args.reference_steps, max_evals=args.max_evals,
                             restarts=args.restarts, log=log)
    save_grids(tuned, grids_out)
    log(f"grids written to {grids_out}")
    extractor = get_extractor("inception", "pytorch")
    references = {split: reference_stats(extractor, split, args.n) for split in splits}
    seeds = {"val": args.val_seed, "test": args.test_seed}
    rows = []
    for budget, grid in zip(budgets, tuned, strict=True):
        steps = steps_for_nfe(sampler, budget)
        candidates = {"tuned": grid.ts(), **{sp: timesteps(schedule, steps, sp) for sp in SPACINGS}}
        scores = {}
        for name, ts in candidates.items():
            scores[name] = {}
            for split, reference in references.items():
                started = time.perf_counter()
                images = draw(model, guidance, sampler, options, ts, args.n, seeds[split], args.batch_size)
                values, _ = feature_metrics(images, ("fid", "kid"), reference, extractor)
                scores[name][split] = {"fid": values["fid"], "kid": values["kid"], "ref": slice_label(split, args.n),
                                       "seed": seeds[split], "seconds": round(time.perf_counter() - started, 1)}
                log(f"NFE {budget} {name} {split}: FID {values['fid']:.2f}")
        chosen = min(scores, key=lambda k: scores[k]["val"]["fid"]) if "val" in splits else None
        held_out = scores[chosen]["test"]["fid"] if chosen is not None and "test" in splits else None
        rows.append({"nfe": budget, "steps": steps, "chosen_on_val": chosen,
                     "held_out_fid": held_out, "scores": scores,
                     "grids": {k: v.tolist() for k, v in candidates.items()},
                     "tuned_fit": grid.error})
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "run": args.run,
              "cur_nimg": model.cur_nimg, "weights": model.weights, "sampler": sampler, "options": options,
              "guidance": guidance.describe(), "n": args.n, "fit": {"n": args.fit_n, "seed": args.fit_seed,
              "max_evals_per_search": args.max_evals, "restarts": args.restarts,
              "reference_steps": args.reference_steps},
              "threads": args.threads, "grids_file": str(grids_out), "rows": rows, "torch": torch.__version__,
              "runtime_s": round(time.perf_counter() - began, 1)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(as_json(report), indent=1) + "\n")
    header = " | ".join(f"{c} {' / '.join(splits)} FID" for c in ("tuned", *SPACINGS))
    print(f"| NFE | {header} | chosen on val | held-out FID |")
    print("|---:|" + "---:|" * (len(SPACINGS) + 1) + "---|---:|")
    for r in rows:
        cells = " | ".join(" / ".join(f"{r['scores'][c][split]['fid']:.2f}" for split in splits)
                           for c in ("tuned", *SPACINGS))
        held_out = "" if r["held_out_fid"] is None else f"{r['held_out_fid']:.2f}"
        print(f"| {r['nfe']} | {cells} | {r['chosen_on_val'] or ''} | {held_out} |")
    print(f"\nWrote {args.output} ({report['runtime_s']:.0f}s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
