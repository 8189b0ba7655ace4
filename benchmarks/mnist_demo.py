"""The main job, measured: `make demo`'s two commands timed end to end, then scored.

Runs, in a fresh run directory (default: a temporary one, so runs/demo is left alone):

1. ``diffusekit train --preset mnist --run-dir DIR --threads T``
2. ``diffusekit sample DIR --n 1000 --out DIR/samples.npz --out DIR/grid.png`` (100 per class, the
   preset's sampler, steps and guidance)

and records each phase's wall time and peak resident memory (``RUSAGE_CHILDREN`` after each child), then
scores the samples with ``benchmarks/demo_quality.py`` (a classifier trained on real MNIST, cached after
its first training: that training is not part of the demo's time). Before training it measures the
host-speed index (``cpu_roofline.host_speed_index``: images/s of a fixed reference training step), so that
demo times from different machines or loads can be compared. Writes
``benchmarks/results/mnist_demo.json`` and copies the grid and loss curve beside it.

Usage::

    .venv/bin/python benchmarks/mnist_demo.py                      # the mnist preset as `make demo` runs it
    .venv/bin/python benchmarks/mnist_demo.py --set run.total_images=20000 --tag short
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_roofline import host_speed_index  # noqa: E402  (a sibling script, found through sys.path)

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
# the budget of the diffusers recipe the demo is measured against: 10 CPU minutes of training plus 2-4 of sampling
TRAIN_BUDGET_S, SAMPLE_BUDGET_S = 600, 240


def _run(command: list[str]) -> dict:
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far, MiB
    return {"command": " ".join(command), "wall_s": round(wall, 1), "peak_rss_mb_so_far": round(peak, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="run directory (default: a fresh temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=1000, help="samples to draw and score (class-major)")
    parser.add_argument("--set", action="append", default=[], help="config override passed to train")
    parser.add_argument("--sample-arg", action="append", default=[], help="extra argument passed to sample")
    parser.add_argument("--tag", default="", help="suffix for the result file name")
    parser.add_argument("--speed-index-seconds", type=float, default=15.0,
                        help="how long to measure the host-speed index before training (0: skip it)")
    args = parser.parse_args(argv)
    if args.speed_index_seconds < 0:
        parser.error(f"--speed-index-seconds must be >= 0, got {args.speed_index_seconds}")
    speed_index = None
    if args.speed_index_seconds > 0:
        speed_index = round(host_speed_index(args.speed_index_seconds, threads=args.threads), 1)
        print(f"host-speed index: {speed_index} img/s (cpu_roofline's reference step)", flush=True)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="mnist-demo-")) / "run"
    cli = [sys.executable, "-m", "diffusekit"]
    train = [*cli, "train", "--preset", "mnist", "--run-dir", str(run_dir), "--threads", str(args.threads),
             "--resume", "never", "--quiet"]
    for text in args.set:
        train += ["--set", text]
    sample = [*cli, "sample", str(run_dir), "--n", str(args.n), "--threads", str(args.threads), "--quiet",
              "--out", str(run_dir / "samples.npz"), "--out", str(run_dir / "grid.png"), *args.sample_arg]
    phases = {"train": _run(train), "sample": _run(sample)}
    total = phases["train"]["wall_s"] + phases["sample"]["wall_s"]
    within = phases["train"]["wall_s"] <= TRAIN_BUDGET_S and phases["sample"]["wall_s"] <= SAMPLE_BUDGET_S
    name = f"mnist_demo{'_' + args.tag if args.tag else ''}"
    quality_json = RESULTS / f"{name}_quality.json"
    score = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_quality.py"), str(run_dir / "samples.npz"),
                            "--json", str(quality_json), "--threads", str(args.threads)], text=True,
                           capture_output=True)
    print(score.stdout, score.stderr, sep="", end="")
    quality = json.loads(quality_json.read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    metrics = [m for m in metrics if "loss" in m]  # the training log lines, not the per-noise-level loss records
    meta = json.loads(str(__import__("numpy").load(run_dir / "samples.npz")["meta"]))
    result = {
        "what": "make demo: train the mnist preset, sample 100 per class, score with a real-MNIST classifier",
        "train": phases["train"], "sample": phases["sample"], "total_wall_s": round(total, 1),
        "budget_s": {"train": TRAIN_BUDGET_S, "sample": SAMPLE_BUDGET_S}, "within_budget": within,
        "peak_rss_mb": phases["sample"]["peak_rss_mb_so_far"],
        "images_trained": metrics[-1]["cur_nimg"], "train_img_per_s": round(
            metrics[-1]["cur_nimg"] / phases["train"]["wall_s"], 1),
        "final_loss": metrics[-1]["loss"], "sampling": meta, "overrides": args.set,
        "accuracy": quality.get("overall"), "min_class_accuracy": quality.get("min_class"),
        "classifier_test_accuracy": quality.get("classifier", {}).get("test_accuracy"),
        "passed": score.returncode == 0 and within,
        "host_speed_index": speed_index,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
                    "torch": torch.__version__},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    for src, dst in ((run_dir / "grid.png", f"{name}_grid.png"), (run_dir / "loss.png", f"{name}_loss.png")):
        if src.exists():
            shutil.copyfile(src, RESULTS / dst)
    print(f"\ntrain {phases['train']['wall_s']} s (budget {TRAIN_BUDGET_S} s) + sample {phases['sample']['wall_s']} s "
          f"(budget {SAMPLE_BUDGET_S} s) = {total:.1f} s; peak RSS {result['peak_rss_mb']} MiB; "
          f"accuracy {result['accuracy']}, "
          f"min class {result['min_class_accuracy']} -> {'PASS' if result['passed'] else 'FAIL'}")
    print(f"wrote {RESULTS / (name + '.json')}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
