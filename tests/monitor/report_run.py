"""Run directories written by hand for the report tests: the files `diffusekit train`, `diffusekit eval` and the
post-hoc EMA sweep leave, with known values, and no training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

GRID_NIMG = (100, 200, 300, 400)
GRID_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))  # one solid colour per grid
LOSSES = (1.0, 0.8, 0.6, 0.5)  # at 100, 200, 300, 400 images
BINS = ("lsnr-5.0..0.0", "lsnr0.0..5.0")
SWEEP = {"rows": [{"sigma_rel": 0.2, "fid": 9.0, "kid": None, "n": 100}, {"sigma_rel": 0.05, "fid": 8.0,
                                                                           "kid": 0.01, "n": 100},
                  {"sigma_rel": 0.1, "fid": 7.5, "kid": 0.008, "n": 100}],
         "best": {"sigma_rel": 0.1, "fid": 7.5}}

CONFIG = """data: {name: mnist}
network: {kind: unet, preset: tiny}
run: {total_images: 400}
eval: {every: 200, loss_every: 200}
video: {frames: null}
latent: {autoencoder: null}
"""


def png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, dtype=np.uint8)).save(path)
    return path


def _noise(nimg: int, train: tuple[float, float], val: tuple[float, float]) -> dict:
    record = {"cur_nimg": nimg}
    for split, values in (("train", train), ("val", val)):
        record.update({f"noise/{split}/{b}": v for b, v in zip(BINS, values, strict=True)})
        record[f"noise/{split}/mean"] = sum(values) / 2
    record.update({f"noise/gap/{b}": v - t for b, t, v in zip(BINS, train, val, strict=True)})
    record["noise/gap/mean"] = record["noise/val/mean"] - record["noise/train/mean"]
    return record


def metrics_records() -> list[dict]:
    logs = [{"cur_nimg": n, "lr": 1e-3, "skipped_steps": 0, "loss": loss, "img_per_s": 50.0 + i,
             "elapsed_s": 2.0 * (i + 1), "peak_rss_mb": 300.0 + 10 * i}
            for i, (n, loss) in enumerate(zip(GRID_NIMG, LOSSES, strict=True))]
    noise = [_noise(200, (0.8, 0.6), (0.7, 0.8)), _noise(400, (0.6, 0.4), (0.8, 0.8))]  # val mean 0.75 -> 0.8
    fid = [{"cur_nimg": 200, "fid": 50.0, "kid": 0.05, "kid_std": 0.01, "improved": True, "best_fid": 50.0,
            "best_nimg": 200, "extractor": "inception-fast-128", "num_samples": 64,
            "best_checkpoint": "run/best/ckpt-000000000200"},
           {"cur_nimg": 400, "fid": 60.0, "kid": 0.06, "kid_std": 0.01, "improved": False, "best_fid": 50.0,
            "best_nimg": 200, "extractor": "inception-fast-128", "num_samples": 64}]
    return [logs[0], logs[1], noise[0], fid[0], logs[2], logs[3], noise[1], fid[1]]


def write_metrics(run: Path, records: list[dict]) -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def image_run(root: Path, name: str = "run") -> Path:
    """A finished image run with every file the report reads."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(CONFIG)
    session = {"time": "2025-01-01T00:00:00+0000", "command": ["diffusekit", "train"], "host": "box",
               "python": "3.11.7", "torch": "2.4.0", "numpy": "2.0.0", "diffusekit": "0.1.0", "git": "abc123",
               "device": "cpu", "threads": 2, "world_size": 1, "start_nimg": 0}
    (run / "environment.json").write_text(json.dumps({"sessions": [session]}))
    write_metrics(run, metrics_records())
    for nimg, colour in zip(GRID_NIMG, GRID_COLOURS, strict=True):
        png(run / "samples" / f"grid-{nimg:012d}.png", colour)
    evaluation = run / "eval" / "ckpt-000000000400-ema"
    evaluation.mkdir(parents=True)
    summary = {"threshold": 1 / 3, "n": 10, "fraction": 0.1, "ratio_quantiles": {"min": 0.1, "p05": 0.2,
                                                                                  "p50": 0.8, "p95": 0.9}}
    results = {"checkpoint": "x", "cur_nimg": 400, "weights": "ema", "n": 10, "fid": 55.0, "sampler": "heun",
               "steps": 8, "memorization": {"pixel": {**summary, "space": "pixel", "flagged": 1},
                                            "inception-fast-96": {**summary, "space": "inception-fast-96",
                                                                  "flagged": 0, "fraction": 0.0}}}
    (evaluation / "results.json").write_text(json.dumps(results))
    png(evaluation / "memorization-pixel.png", (128, 128, 128), (24, 8))
    png(evaluation / "memorization-inception-fast-96-nearest.png", (64, 64, 64), (24, 16))
    (run / "posthoc").mkdir()
    (run / "posthoc" / "sweep.json").write_text(json.dumps(SWEEP))
    return run
