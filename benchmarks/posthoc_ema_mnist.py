"""Post-hoc EMA against ordinary EMAs on class-conditional MNIST, by FID_1k with the held-out protocol.

One run trains with the mnist preset, the post-hoc EMA (EDM2's two tracked lengths, 0.05 and 0.10) and several
ordinary EMA half-lives. ``measure`` reconstructs a grid of ``sigma_rel`` from its snapshots and scores every
reconstruction and every ordinary EMA with 1,000 class-balanced samples (seeds ``(seed, i)``, the run's own sampling
settings, standard Inception) against the validation slice MNIST test[1000:2000]; the best of each kind is then
scored once on the report slice test[0:1000] (``mnist_reference.py``, as in ``fid_sweep_mnist.py``). Each ordinary
EMA is put on the sigma_rel axis by the exact relative width of its averaging profile (ramp-up included,
``diffusekit.posthoc_ema.ema_sigma_rel``), and each sigma_rel gets its equivalent half-life
(``sigma_rel * images * ln 2``). Results: ``benchmarks/results/posthoc_ema_mnist.json``.

Usage::

    .venv/bin/python benchmarks/posthoc_ema_mnist.py train runs/posthoc_mnist      # prints and runs the training
    .venv/bin/python benchmarks/posthoc_ema_mnist.py measure runs/posthoc_mnist    # the table (about 2 h on 2 cores)
    .venv/bin/python benchmarks/posthoc_ema_mnist.py table                         # print the stored table
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from diffusekit.cli import main as diffusekit
from diffusekit.generate import load_model
from diffusekit.metrics.evaluate import as_json
from diffusekit.metrics.inception import get_extractor
from diffusekit.posthoc_ema import ema_sigma_rel, half_life_of_sigma_rel
from diffusekit.training.posthoc import (
    posthoc_directory,
    reconstruct,
    reconstructed_name,
    score_weights,
    write_reconstruction,
)
from fid_sweep_mnist import RESULTS
from mnist_reference import reference_stats, slice_label

OUTPUT = RESULTS / "posthoc_ema_mnist.json"
GRID = (0.02, 0.03, 0.05, 0.07, 0.10, 0.13, 0.17, 0.22)
# ordinary EMAs beside the preset's 5k-image one, spread over the grid at the preset's 100k images
HALF_LIVES = {"ema": 5_000, "h1k": 1_000, "h2k": 2_000, "h10k": 10_000, "h20k": 20_000}


def train_command(run: str) -> list[str]:
    lives = ", ".join(f"{name}: {h}" for name, h in HALF_LIVES.items())
    return ["train", "--preset", "mnist", "--run-dir", run, "--set", "ema.posthoc=true",
            "--set", f"ema.half_lives={{{lives}}}"]


def _rows_table(rows: list[dict]) -> str:
    lines = ["| weights | sigma_rel | half-life (images) | FID val | KID val | FID test |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        test = f"{r['fid_test']:.2f}" if "fid_test" in r else ""
        lines.append(f"| {r['weights']} | {r['sigma_rel']:.3f} | {r['half_life']:,.0f} | {r['fid']:.2f} | "
                     f"{r['kid']:.4f} | {test} |")
    return "\n".join(lines)


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    base = load_model(run)
    config, cur_nimg = base.config, base.cur_nimg
    result = reconstruct(run, list(args.grid))
    scratch = write_reconstruction(run, result, posthoc_directory(run) / ".benchmark")
    extractor = get_extractor(args.extractor, "pytorch", args.resolution)
    references = {split: reference_stats(extractor, split, args.n) for split in ("val", "test")}
    rows = []
    try:
        for sigma_rel in args.grid:
            rows.append({"kind": "posthoc", "sigma_rel": sigma_rel, "profile_error":
                         result.profile_errors[reconstructed_name(sigma_rel)],
                         "half_life": half_life_of_sigma_rel(sigma_rel, result.cur_nimg),
                         "checkpoint": scratch, "weights": reconstructed_name(sigma_rel)})
        for name, half_life in config.ema.half_lives.items():
            rows.append({"kind": "ema", "half_life": half_life, "checkpoint": base.checkpoint, "weights": name,
                         "sigma_rel": ema_sigma_rel(half_life, cur_nimg, config.optim.batch_size, config.ema.rampup)})
        for row in rows:
            started = time.perf_counter()
            row.update(score_weights(row["checkpoint"], row["weights"], references["val"], extractor, args.n,
                                     seed=args.seed))
            row["seconds"] = round(time.perf_counter() - started, 1)
            print(f"{row['weights']}: FID {row['fid']:.2f} on {slice_label('val', args.n)}", file=sys.stderr)
        chosen = {}
        for kind in ("posthoc", "ema"):  # chosen on the validation slice, reported once on the test slice
            best = min((r for r in rows if r["kind"] == kind), key=lambda r: r["fid"])
            scored = score_weights(best["checkpoint"], best["weights"], references["test"], extractor, args.n,
                                   seed=args.seed)
            best["fid_test"], best["kid_test"] = scored["fid"], scored["kid"]
            chosen[kind] = {k: best[k] for k in ("weights", "sigma_rel", "half_life", "fid", "fid_test", "kid_test")}
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)
    for row in rows:
        row["checkpoint"] = str(row["checkpoint"]) if row["kind"] == "ema" else "reconstruction"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "run": str(run),
            "cur_nimg": cur_nimg, "snapshots": len(result.snapshots), "n": args.n, "seed": args.seed,
            "extractor": extractor.name, "val": slice_label("val", args.n), "test": slice_label("test", args.n),
            "train": "diffusekit " + shlex.join(train_command(str(run))), "rows": rows, "chosen": chosen,
            "torch": torch.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="print and run the training command")
    t.add_argument("run")
    t.add_argument("--print-only", action="store_true")
    m = sub.add_parser("measure", help="FID of every reconstruction and ordinary EMA of a run")
    m.add_argument("run")
    m.add_argument("--grid", type=float, nargs="+", default=GRID, help="sigma_rel values to reconstruct")
    m.add_argument("--n", type=int, default=1000, help="samples, and digits in each reference slice (<= 1000)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--extractor", default="inception", choices=("inception", "inception-fast"),
                   help="inception-fast only for a smoke run (not comparable)")
    m.add_argument("--resolution", type=int, help="inception-fast's input size")
    m.add_argument("--output", default=str(OUTPUT))
    p = sub.add_parser("table", help="print the stored table")
    p.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)
    if args.command == "train":
        command = train_command(args.run)
        print("diffusekit " + shlex.join(command))
        return 0 if args.print_only else diffusekit(command)
    output = Path(args.output)
    if args.command == "table":
        summary = json.loads(output.read_text())
        print(_rows_table(summary["rows"]))
        return 0
    summary = measure(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(as_json(summary), indent=1))
    print(_rows_table(summary["rows"]))
    for kind, best in summary["chosen"].items():
        print(f"chosen {kind}: {best['weights']} (sigma_rel {best['sigma_rel']:.3f}): FID {best['fid']:.2f} on "
              f"{summary['val']}, {best['fid_test']:.2f} on {summary['test']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
