"""Fine-tuning against training from scratch: an MNIST run continued on Fashion-MNIST, FID_1k per budget.

For each budget B (``--budgets``, training images) two runs of one recipe (``--preset``, default ``mnist``: the
network, learning rate, warm-up and cosine decay over B, EMA) on Fashion-MNIST's training split, with the same
seed and so the same data order and noise:

- ``scratch``: from the network's initialisation;
- ``finetune``: from the weights of ``--source`` (``diffusekit train --init-from``; its EMA by default), an
  MNIST run of the same network, e.g. ``diffusekit train --preset mnist --run-dir runs/mnist``. The class
  embedding is copied row for row (10 digits -> 10 garments), the optimizer state is fresh.

Each run draws ``--n`` class-balanced samples (seeds 0..n-1) with the preset's own sampling settings (nothing is
tuned here, so no held-out slice is needed) and is scored with the standard Inception (pytorch-fid
preprocessing) against the first ``--n`` Fashion-MNIST test images. Prints a table and writes
``benchmarks/results/finetune_fashion.json``. Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist``, or from ``--fashion-root`` (a folder with its four idx files).

Usage::

    .venv/bin/python -m diffusekit train --preset mnist --run-dir runs/mnist              # the source, ~10 min
    .venv/bin/python benchmarks/finetune_fashion.py --source runs/mnist --budgets 10000 30000   # ~4 x (1-3) + 8 min
    .venv/bin/python benchmarks/finetune_fashion.py --source runs/mnist --budgets 10000 30000 --reuse   # re-score
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
from diffusekit.data import builtin
from diffusekit.generate import load_model
from diffusekit.metrics.evaluate import SamplingSettings, as_json, feature_metrics, sample_for_evaluation
from diffusekit.metrics.features import dataset_reference_stats
from diffusekit.metrics.inception import get_extractor

RESULTS = Path(__file__).resolve().parent / "results"
DATA = "fashion-mnist"


def _train(run: Path, budget: int, args, init: list[str]) -> float:
    command = ["train", "--preset", args.preset, "--data", DATA, "--quiet", "--threads", str(args.threads),
               "--images", str(budget), "--seed", str(args.seed), "--run-dir", str(run),
               "--set", f"run.checkpoint_every={budget}", "--set", "run.sample_every=null",
               "--set", "eval.loss_every=null", *init]
    started = time.perf_counter()
    if cli(command) != 0:
        raise SystemExit(f"training {run} failed: {' '.join(command)}")
    return round(time.perf_counter() - started, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="the MNIST run directory (or checkpoint) to fine-tune")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10_000, 30_000], help="training images per run")
    parser.add_argument("--preset", default="mnist", help="the recipe of both arms (the source's network)")
    parser.add_argument("--init-weights", help="which of the source's weights (default: its sampling EMA)")
    parser.add_argument("--root", default="runs/finetune_fashion", help="where the runs go")
    parser.add_argument("--n", type=int, default=1000, help="samples per FID (and reference test images)")
    parser.add_argument("--seed", type=int, default=0, help="the training seed of both arms")
    parser.add_argument("--reuse", action="store_true", help="score the runs already in --root")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fashion-root", help="a folder with Fashion-MNIST's idx files (default: the Debian "
                        "package's)")
    parser.add_argument("--output", default=str(RESULTS / "finetune_fashion.json"))
    args = parser.parse_args(argv)
    if not Path(args.source).exists():
        raise SystemExit(f"--source {args.source} does not exist; train it first: diffusekit train --preset "
                         f"{args.preset} --run-dir {args.source}")
    if args.fashion_root:  # the loader reads this folder when the Debian package is not installed
        builtin.FASHION_MNIST_DEBIAN = Path(args.fashion_root)
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    extractor = get_extractor("inception", "pytorch")
    reference = dataset_reference_stats(extractor, DATA, "test", args.n, log=log)
    init = ["--init-from", str(args.source)] + (["--init-weights", args.init_weights] if args.init_weights else [])
    rows = []
    for budget in args.budgets:
        for arm, extra in (("scratch", []), ("finetune", init)):
            run = Path(args.root) / f"{arm}-{budget}"
            train_s = None if args.reuse else _train(run, budget, args, extra)
            model = load_model(run)
            settings = SamplingSettings.from_config(model.config.sample, seed=0)
            started = time.perf_counter()
            images, _, _ = sample_for_evaluation(model.denoiser, model.image_shape, model.num_classes, args.n,
                                                 settings)
            values, _ = feature_metrics(images, ("fid",), reference, extractor)
            row = {"budget": budget, "arm": arm, "run": str(run), "train_s": train_s,
                   "eval_s": round(time.perf_counter() - started, 1), "fid": values["fid"]}
            if arm == "finetune":
                row["init"] = json.loads((run / "init_from.json").read_text())
            rows.append(row)
            log(json.dumps(as_json({k: v for k, v in row.items() if k != "init"})))
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "source": str(args.source), "preset": args.preset, "seed": args.seed, "n": args.n,
           "reference": f"{DATA} test[0:{args.n}]", "extractor": "inception (pytorch-fid preprocessing)",
           "versions": {"python": platform.python_version(), "torch": torch.__version__}, "rows": rows}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(as_json(out), indent=1))
    fid = {(r["budget"], r["arm"]): r["fid"] for r in rows}
    table = [f"| images | FID_{args.n} from scratch | FID_{args.n} fine-tuned from {args.source} |", "|---:|---:|---:|"]
    table += [f"| {b:,} | {fid[b, 'scratch']:.2f} | {fid[b, 'finetune']:.2f} |" for b in args.budgets]
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
