"""Zero terminal SNR, demonstrated: the brightness of samples from MNIST with random global intensity.

Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"): a schedule whose last
step keeps some signal (DDPM's betas leave alpha_T = 0.0064), sampled on a grid that does not even start at
the last step (diffusers' "leading" spacing), starts from pure noise where the model was trained to see a
little of the image, and cannot draw images whose brightness is far from medium. The fix: rescale the
schedule to zero terminal SNR, predict v (eps cannot be inverted at SNR 0), start sampling at t = 1
("trailing" spacing), and rescale classifier-free guidance (phi = 0.7).

The data: MNIST at 16x16 with a random global intensity per image (``data.intensity: [-1, 0.8]``,
diffusekit.data.intensity), so mean brightness spreads from about -0.87 (black) to 0.86 (light grey).
Trained with the same network, data and budget (``diffusekit train --preset tiny`` with the overrides of
``common_config``, one subprocess per model; the configs are in the JSON):

- ``ddpm-eps``: ``linear_vp`` (DDPM's discrete betas 1e-4..0.02, T = 1000), eps-prediction: the common setup;
- ``ddpm-v``: the same schedule with v-prediction: the ablation that separates the parameterization from
  the terminal SNR;
- ``ztsnr-v``: ``linear_vp`` with ``zero_terminal_snr: true`` (DDPM's betas rescaled), v-prediction: the fix;
- ``sd-eps`` (only with ``--models``): Stable Diffusion's end points (betas 0.00085..0.012, linear here;
  alpha_T = 0.040, SD's own scaled-linear table has 0.068), eps-prediction: a larger terminal leak.

Every row draws --n class-balanced samples with DDIM (eta = 0), the same initial noise per sample index in
every row, and classifier-free guidance w = --guidance. ``leading`` is diffusers' DDIM default (timesteps
k = i * (T // N) + 1, at t = (k + 1) / T: from t = 0.952 for 20 steps; SD's ``steps_offset = 1``);
``trailing`` starts at t = 1 (diffusekit's ``trailing`` spacing); ``clip`` clips x0_hat to [-1, 1] at
every step (DDPM's ``clip_denoised``, diffusers' ``clip_sample``; ``threshold="static"`` here).

Measured per row: the per-sample mean brightness (pixels in [-1, 1]) against that of the training images:
std and its ratio to the data's, 5th / 95th percentiles, min / max, the 1-D Wasserstein distance W1, the
fractions of samples darker than the data's 10th percentile and brighter than its 90th (10 % each if the
model matches the data), the fraction of pixels at -1 or +1, and the correlation of each sample's brightness
with the mean of its initial noise. ``predicted`` is the spread ratio a perfect model would reach from that
grid's first step, in the Gaussian picture of the image mean alone: 1 / sqrt(1 + P alpha^2 / sigma^2
var(m_data)), P pixels (the mean of x_t carries the data's mean at SNR P alpha^2 / sigma^2; pure noise
lacks that part of its variance). Per model, a probe: the RMS error of x0_hat's brightness on 500 held-out
test images (with their intensity) noised to t, unguided, against the data's brightness std (what
predicting the mean brightness would give).

Measured result and reading: docs/objectives.md, "Zero terminal SNR: the brightness experiment" (at 16x16
the eps model's samples go to black and white rather than medium grey, and v-prediction alone fixes it).

Writes ``benchmarks/results/ztsnr_brightness.json`` and PNG grids of every n/100-th sample sorted by
brightness (darkest top left, on grey) under ``benchmarks/results/ztsnr/``.

Usage::

    .venv/bin/python benchmarks/ztsnr_brightness.py --threads 1               # ~22 minutes on one busy core
    .venv/bin/python benchmarks/ztsnr_brightness.py --models ddpm-eps,ztsnr-v --n 500
    .venv/bin/python benchmarks/ztsnr_brightness.py --work-dir runs/ztsnr --reuse  # re-sample trained runs
    .venv/bin/python benchmarks/ztsnr_brightness.py --quick                   # ~1 minute smoke run, not a result
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffusekit.data import load_training_data
from diffusekit.data.intensity import mean_brightness
from diffusekit.generate import class_major_labels, load_model
from diffusekit.guidance import GuidanceSettings, apply_guidance, null_condition
from diffusekit.images import make_grid, save_png
from diffusekit.sampling import sample, timesteps

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent
INTENSITY = [-1.0, 0.8]

MODELS = {
    "ddpm-eps": {"description": "linear_vp (DDPM betas), eps", "schedule_options": {"discrete": True},
                 "parameterization": "eps"},
    "ddpm-v": {"description": "linear_vp (DDPM betas), v", "schedule_options": {"discrete": True},
               "parameterization": "v"},
    "ztsnr-v": {"description": "linear_vp (DDPM betas) + zero terminal SNR, v",
                "schedule_options": {"discrete": True, "zero_terminal_snr": True}, "parameterization": "v"},
    "sd-eps": {"description": "linear_vp (SD end points 0.00085..0.012), eps",
               "schedule_options": {"discrete": True, "beta_start": 0.00085, "beta_end": 0.012},
               "parameterization": "eps"},
}
DEFAULT_MODELS = ("ddpm-eps", "ddpm-v", "ztsnr-v")

# (row name, model, spacing, GuidanceSettings keywords besides the scale)
ROWS = [
    ("ddpm-eps leading", "ddpm-eps", "leading", {}),
    ("ddpm-eps leading + clip", "ddpm-eps", "leading", {"threshold": "static"}),
    ("ddpm-eps trailing + clip", "ddpm-eps", "trailing", {"threshold": "static"}),
    ("sd-eps leading + clip", "sd-eps", "leading", {"threshold": "static"}),
    ("ddpm-v leading", "ddpm-v", "leading", {}),
    ("ztsnr-v trailing", "ztsnr-v", "trailing", {}),
    ("ztsnr-v trailing + rescale 0.7", "ztsnr-v", "trailing", {"rescale": 0.7}),
]
PROBE_TIMES = (1.0, 0.95, 0.9, 0.8, 0.6, 0.4)


def common_config(args) -> dict:
    """Everything but the objective's schedule and parameterization: identical for every model."""
    return {
        "data": {"name": "mnist", "resolution": args.resolution, "limit": args.limit, "intensity": INTENSITY},
        "objective": {"time_distribution": "uniform", "time_mode": "stratified", "weighting": "unit",
                      "noise_conditioning": "timestep", "p_uncond": 0.1},
        "network": {"kind": "unet", "preset": "tiny",
                    "options": {"model_channels": args.width, "channel_mult": [1, 2, 2], "num_blocks": 1,
                                "attn_resolutions": [args.resolution // 2], "dropout": 0.0}},
        "optim": {"batch_size": 32, "lr": 2e-3, "warmup_images": min(2_000, args.images // 10), "decay": "cosine"},
        "ema": {"half_lives": {"ema": max(100.0, args.images / 10)}, "rampup": 0.1},
        "run": {"total_images": args.images, "checkpoint_every": args.images, "log_every": max(64, args.images // 20),
                "sample_every": None, "seed": 0},
        "sample": {"sampler": "ddim", "options": {}, "steps": args.steps, "spacing": "trailing",
                   "guidance": args.guidance, "grid_columns": 10},
        "eval": {"loss_every": None},
    }


def model_config(args, name: str) -> dict:
    config = common_config(args)
    spec = MODELS[name]
    config["objective"].update(schedule="linear_vp", schedule_options=spec["schedule_options"],
                               parameterization=spec["parameterization"])
    return config


def train(args, name: str, work: Path, log) -> dict:
    run_dir = work / name
    config_path = work / f"{name}.json"
    config_path.write_text(json.dumps(model_config(args, name), indent=1))
    done = run_dir / "checkpoints"
    if args.reuse and done.is_dir() and any(done.iterdir()):
        log(f"{name}: reusing {run_dir}")
        return {"run_dir": str(run_dir), "reused": True}
    command = [sys.executable, "-m", "diffusekit", "train", "--preset", "tiny", "--config", str(config_path),
               "--run-dir", str(run_dir), "--threads", str(args.threads), "--quiet"]
    log("$ " + " ".join(command))
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return {"run_dir": str(run_dir), "train_s": round(time.perf_counter() - started, 1), "reused": False}


def leading(schedule, steps: int) -> torch.Tensor:
    """diffusers' DDIM 'leading' grid with steps_offset = 1 (SD): timesteps k = i * (T // N) + 1, descending,
    at t = (k + 1) / T (diffusekit's discrete convention), then 0."""
    T = schedule.T
    k = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (T // steps) + 1
    return torch.cat([(k + 1) / T, torch.zeros(1, dtype=torch.float64)])


def grid_for(schedule, spacing: str, steps: int) -> torch.Tensor:
    return leading(schedule, steps) if spacing == "leading" else timesteps(schedule, steps, spacing)


def initial_noise(shape: tuple[int, ...], first: int, count: int) -> torch.Tensor:
    """The start of samples first..first+count-1: sample i from a generator seeded by i (the same in every row)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(first + j)) for j in range(count)])


@torch.no_grad()
def draw(model, ts: torch.Tensor, n: int, guidance: GuidanceSettings, batch: int = 250):
    """n class-major samples by DDIM on ``ts`` (clamped to [-1, 1]) and the mean of each one's initial noise."""
    schedule = model.denoiser.schedule
    labels = class_major_labels(n, model.num_classes)
    denoise = apply_guidance(model.denoiser, guidance, ts=ts, schedule=schedule, null=null_condition(model.num_classes))
    out, noise_means = [], []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        noise = initial_noise(model.image_shape, start, count)
        x = sample(denoise, noise, ts, schedule, "ddim", cond={"labels": labels[start:start + count]})
        out.append(x.float().clamp(-1, 1))
        noise_means.append(noise.mean((1, 2, 3)))
    return torch.cat(out), torch.cat(noise_means).numpy()


@torch.no_grad()
def probe(model, x0: torch.Tensor, labels: torch.Tensor) -> dict:
    """RMS error of x0_hat's mean brightness on ``x0`` noised to each of PROBE_TIMES (one noise draw, unguided)."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(12_345))
    truth = x0.mean((1, 2, 3))
    out = {}
    for t in PROBE_TIMES:
        at = model.denoiser.schedule(torch.tensor(t, dtype=torch.float64))
        x_t = float(at.alpha) * x0 + float(at.sigma) * noise
        x0_hat = model.denoiser(x_t, torch.full((len(x0),), t), labels)
        out[f"{t:g}"] = {"alpha": float(at.alpha),
                         "brightness_rmse": float((x0_hat.mean((1, 2, 3)) - truth).pow(2).mean().sqrt())}
    return out


def brightness_stats(m: np.ndarray, data: np.ndarray) -> dict:
    lo, hi = np.quantile(data, [0.1, 0.9])
    q = np.linspace(0, 1, 201)
    return {"mean": float(m.mean()), "std": float(m.std()), "std_ratio": float(m.std() / data.std()),
            "p5": float(np.quantile(m, 0.05)), "p95": float(np.quantile(m, 0.95)),
            "min": float(m.min()), "max": float(m.max()),
            "w1": float(np.abs(np.quantile(m, q) - np.quantile(data, q)).mean()),
            "below_data_p10": float((m < lo).mean()), "above_data_p90": float((m > hi).mean())}


def predicted_ratio(schedule, t0: float, pixels: int, data_var: float) -> float:
    at = schedule(torch.tensor(t0, dtype=torch.float64))
    snr = float(at.alpha) ** 2 / float(at.sigma) ** 2
    return 1.0 / math.sqrt(1.0 + pixels * snr * data_var)


def sorted_grid(images: torch.Tensor, path: Path, count: int = 100) -> None:
    m = mean_brightness(images.numpy())
    order = np.argsort(m, kind="stable")
    pick = order[np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int)]
    save_png(make_grid(images[torch.from_numpy(pick)], columns=10, background=128), path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--images", type=int, default=20_000, help="training images per model")
    parser.add_argument("--limit", type=int, default=12_000, help="MNIST training images used")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--width", type=int, default=16, help="the U-Net's model_channels")
    parser.add_argument("--n", type=int, default=1000, help="samples per row")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, help="run directories (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="sample existing runs in --work-dir, no training")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budget, not a result")
    parser.add_argument("--output", default=str(RESULTS / "ztsnr_brightness.json"))
    parser.add_argument("--grids", type=Path, default=RESULTS / "ztsnr")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.limit, args.n, args.steps, args.width = 512, 512, 50, 5, 8
        args.output = str(Path(tempfile.gettempdir()) / "ztsnr_brightness_quick.json")
        args.grids = Path(tempfile.gettempdir()) / "ztsnr_quick"
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ztsnr-"))
    work.mkdir(parents=True, exist_ok=True)
    args.grids.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from diffusekit.config import DataConfig

    data_config = DataConfig(**model_config(args, models[0])["data"])
    data = load_training_data(data_config)
    data_m = mean_brightness(data.images)
    pixels = int(np.prod(data.images.shape[1:]))
    data_x = torch.from_numpy(data.images[:args.n].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
    sorted_grid(data_x, args.grids / "data.png")
    held_out = load_training_data(dataclasses.replace(data_config, split="test", limit=500))
    probe_x, probe_labels = held_out.tensors()
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "intensity": INTENSITY, "pixels": pixels, "common_config": common_config(args),
              "models": {m: {**MODELS[m]} for m in models},
              "data": {"count": len(data_m), **brightness_stats(data_m, data_m),
                       "saturated_pixels": saturation(data_x),
                       "test_brightness_std": float(probe_x.mean((1, 2, 3)).std())},
              "rows": [], "versions": {"python": platform.python_version(), "torch": torch.__version__}}
    for name in models:
        result["models"][name].update(train(args, name, work, log))
        result["models"][name]["probe"] = probe(load_model(work / name), probe_x.float(), probe_labels)
        log(f"{name}: {json.dumps(result['models'][name]['probe'])}")
    for row, name, spacing, keywords in ROWS:
        if name not in models:
            continue
        model = load_model(work / name)
        ts = grid_for(model.denoiser.schedule, spacing, args.steps)
        guidance = GuidanceSettings(scale=args.guidance, **keywords)
        t0 = time.perf_counter()
        images, noise_means = draw(model, ts, args.n, guidance)
        m = mean_brightness(images.numpy())
        entry = {"row": row, "model": name, "spacing": spacing, "t_first": float(ts[0]),
                 "alpha_first": float(model.denoiser.schedule(ts[0]).alpha), "guidance": guidance.describe(),
                 "sampling_s": round(time.perf_counter() - t0, 1),
                 "predicted_std_ratio": predicted_ratio(model.denoiser.schedule, float(ts[0]), pixels,
                                                        float(data_m.var())),
                 **brightness_stats(m, data_m), "saturated_pixels": saturation(images),
                 "corr_noise_mean": float(np.corrcoef(noise_means, m)[0, 1])}
        grid = args.grids / (row.replace(" + ", "-").replace(" ", "-") + ".png")
        sorted_grid(images, grid)
        entry["grid"] = str(grid.relative_to(ROOT)) if grid.is_relative_to(ROOT) else str(grid)
        result["rows"].append(entry)
        log(json.dumps(entry))
        result["runtime_s"] = round(time.perf_counter() - started, 1)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


def saturation(images: torch.Tensor) -> float:
    """The fraction of pixels at -1 or +1 (uint8 0 or 255)."""
    return float(((images <= -1 + 1 / 255) | (images >= 1 - 1 / 255)).float().mean())


def table(result: dict) -> str:
    head = ["| samples | first t (alpha) | std (ratio) | predicted | p5 | p95 | min | max | W1 | < data p10 | "
            "> data p90 | pixels at +-1 | corr. noise mean |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    d = result["data"]
    lines = [f"| data ({d['count']:,} training images) | | {d['std']:.3f} | | {d['p5']:.2f} | {d['p95']:.2f} | "
             f"{d['min']:.2f} | {d['max']:.2f} | | 10% | 10% | {d['saturated_pixels']:.0%} | |"]
    for r in result["rows"]:
        lines.append(f"| {r['row']} | {r['t_first']:.3f} ({r['alpha_first']:.4f}) | {r['std']:.3f} "
                     f"({r['std_ratio']:.2f}) | {r['predicted_std_ratio']:.2f} | {r['p5']:.2f} | {r['p95']:.2f} | "
                     f"{r['min']:.2f} | {r['max']:.2f} | {r['w1']:.3f} | {r['below_data_p10']:.1%} | "
                     f"{r['above_data_p90']:.1%} | {r['saturated_pixels']:.0%} | {r['corr_noise_mean']:+.2f} |")
    probe_head = ["", "x0_hat brightness RMSE on held-out images (data std "
                  f"{d['test_brightness_std']:.3f}):", "",
                  "| model | " + " | ".join(f"t = {t:g}" for t in PROBE_TIMES) + " |",
                  "|---|" + "---:|" * len(PROBE_TIMES)]
    probes = [f"| {name} | " + " | ".join(f"{m['probe'][f'{t:g}']['brightness_rmse']:.3f}" for t in PROBE_TIMES)
              + " |" for name, m in result["models"].items() if "probe" in m]
    return "\n".join(head + lines + probe_head + probes)


if __name__ == "__main__":
    sys.exit(main())
