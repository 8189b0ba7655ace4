"""A run directory: everything a training run leaves behind, and the checks that keep it consistent.

```
RUN_DIR/
  config.yaml          the resolved configuration (what `diffusekit train` ran)
  environment.json     versions, git hash, host, device, world size, command line: one entry per start or resume
  metrics.jsonl        one record per log interval: cur_nimg, loss, lr, img/s, elapsed, peak memory
  tensorboard/         the same scalars as TensorBoard event files
  samples/grid-<nimg>.png   sample grids from the EMA, same noise every time; samples.png is the newest
                       (a video run: a row of frames per clip, and samples.gif plays the newest clips)
  loss.png             the loss curve (raw and smoothed), redrawn at each checkpoint
  checkpoints/ckpt-<nimg>/  weights (safetensors) + training state (weights_only) + checksums
  posthoc/phema-<nimg>.safetensors  with ema.posthoc: snapshots of the power-function EMAs (docs/ema.md)
  report.html          all of the above on one page, written by `diffusekit report`
```

On resume, records logged after the checkpoint are dropped from metrics.jsonl (and purged from
TensorBoard), newer post-hoc EMA snapshots are deleted (training writes them again), and the new config must
equal the stored one except in the fields that do not change what is trained (:data:`RESUMABLE_KEYS`): a run
never silently continues under a different recipe.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy
import torch

from .. import __version__, distributed
from ..cascade import downsample, sampling_condition
from ..config import Config, ConfigError, from_dict, read_file, to_dict, write_yaml
from ..generate import class_major_labels, generate
from ..guidance import GuidanceSettings
from ..images import clip_frames, clip_grid, make_grid, save_animation, save_png
from ..models import build_denoiser, native_bf16, remove_partial_writes
from ..monitor import MetricsLog, TensorBoardWriter, plot_loss_curve, read_metrics
from .posthoc_snapshots import remove_snapshots_after, snapshot_interval, write_snapshot

__all__ = ["RunDirectory", "RESUMABLE_KEYS", "config_differences", "environment", "stored_config"]

# Fields a resumed run may change: durations, intervals, where and how fast it runs, how it samples and evaluates.
RESUMABLE_KEYS = ("run.total_images", "run.checkpoint_every", "run.keep_checkpoints", "run.milestone_every",
                  "run.log_every", "run.sample_every", "run.device", "run.precision", "run.channels_last",
                  "run.compile",
                  "run.parallel", "run.dump_bad_batch", "optim.nonfinite_limit", "data.workers", "data.strict",
                  "sample.", "eval.", "ema.posthoc_every", "ema.posthoc_budget_mb")


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and not key.endswith("options") and key != "half_lives":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(old: Config, new: Config) -> list[tuple[str, object, object]]:
    """(key, old, new) for each field that differs and may not change on resume."""
    a, b = _flatten(to_dict(old)), _flatten(to_dict(new))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not any(key == r or (r.endswith(".") and key.startswith(r))
                                                for r in RESUMABLE_KEYS):
            diffs.append((key, a.get(key), b.get(key)))
    return diffs


def stored_config(run_dir: str | Path) -> Config | None:
    path = Path(run_dir) / "config.yaml"
    return from_dict(Config, read_file(path)) if path.exists() else None


def _git_hash() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def environment(device: torch.device) -> dict:
    env = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv, "host": platform.node(),
           "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__, "diffusekit": __version__, "git": _git_hash(), "device": str(device),
           "threads": torch.get_num_threads(), "native_bf16": native_bf16(device),  # what precision auto picked
           "world_size": distributed.context().world_size}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def peak_memory_mb(device: torch.device) -> dict:
    """Peak resident memory of this process (and of the GPU), in MiB."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    peak = {"peak_rss_mb": round(rss_kb / 1024, 1)}
    if device.type == "cuda":
        peak["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


class RunDirectory:
    """Writes a run's files; used as the trainer's ``hooks``."""

    def __init__(self, path: str | Path, config: Config, progress=None):
        self.path, self.config, self.progress = Path(path), config, progress
        self.samples_dir = self.path / "samples"
        self.metrics: MetricsLog | None = None
        self.tensorboard: TensorBoardWriter | None = None
        self._clock = time.perf_counter()
        self._last = (self._clock, 0)

    def check_resume(self) -> None:
        """Refuse to continue a run whose stored config differs in what is trained."""
        old = stored_config(self.path)
        if old is None:
            return
        diffs = config_differences(old, self.config)
        if diffs:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
            raise ConfigError(f"{self.path} holds a run with a different recipe ({listed}). Continue it with its own "
                              f"config (leave out --preset/--config/--set for those keys) or start a new --run-dir")

    def open(self, cur_nimg: int, device: torch.device) -> None:
        """Write config and environment; align the logs with the checkpoint at ``cur_nimg``."""
        self.path.mkdir(parents=True, exist_ok=True)
        for folder in ("checkpoints", "best"):  # what a kill in the middle of a checkpoint write left behind
            remove_partial_writes(self.path / folder)
        for stale in [*self.path.glob(".environment.json.tmp-*"), *self.path.glob(".config.yaml.tmp-*")]:
            stale.unlink(missing_ok=True)
        remove_snapshots_after(self.path / "posthoc", cur_nimg)
        write_yaml(self.config, self.path / "config.yaml")
        env_path = self.path / "environment.json"
        sessions = json.loads(env_path.read_text()).get("sessions", []) if env_path.exists() else []
        sessions.append({**environment(device), "start_nimg": cur_nimg})
        tmp = env_path.with_name(f".environment.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"sessions": sessions}, indent=1))
        os.replace(tmp, env_path)
        self.metrics = MetricsLog(self.path / "metrics.jsonl")
        self.metrics.truncate_after("cur_nimg", cur_nimg)
        self.tensorboard = TensorBoardWriter(self.path / "tensorboard", purge_step=cur_nimg or None)
        self._clock = time.perf_counter()
        self._last = (self._clock, cur_nimg)
        self._device = device

    def close(self) -> None:
        for writer in (self.metrics, self.tensorboard):
            if writer is not None:
                writer.close()
        if self.progress is not None:
            self.progress.close()

    # -- hooks called by Trainer.run ----------------------------------------------------------------
    def on_step(self, trainer, loss) -> None:
        if self.progress is not None:
            self.progress.update(trainer.config.optim.batch_size)

    def on_log(self, trainer, record: dict) -> None:
        now = time.perf_counter()
        last_time, last_nimg = self._last
        record = {**record, "img_per_s": round((trainer.cur_nimg - last_nimg) / max(now - last_time, 1e-9), 2),
                  "elapsed_s": round(now - self._clock, 2), **peak_memory_mb(trainer.device)}
        self._last = (now, trainer.cur_nimg)
        self.metrics.append(record)
        self.tensorboard.add_scalars({f"train/{k}": v for k, v in record.items() if k != "cur_nimg"},
                                     trainer.cur_nimg)
        if self.progress is not None and "loss" in record:
            self.progress.set_postfix(loss=record["loss"])

    def on_evaluate(self, trainer, record: dict) -> None:
        """FID/KID or per-noise-level records: into metrics.jsonl and TensorBoard (``eval/...``, ``noise/...``)."""
        started = time.perf_counter()
        self.metrics.append(record)
        scalars = {(k if k.startswith("noise/") else f"eval/{k}"): v for k, v in record.items()
                   if k != "cur_nimg" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.tensorboard.add_scalars(scalars, trainer.cur_nimg)
        if "fid" in record:
            message = (f"{trainer.cur_nimg:,} images: FID {record['fid']:.3f} ({record['extractor']}, "
                       f"{record['num_samples']} samples), best {record['best_fid']:.3f} at {record['best_nimg']:,}")
            self.log(message)
            if self.progress is not None:
                self.progress.set_postfix(fid=round(record["fid"], 2))
        # evaluation time is not training time: keep it out of img/s
        last_time, last_nimg = self._last
        self._last = (last_time + record.get("eval_s", 0.0) + time.perf_counter() - started, last_nimg)

    def log(self, message: str) -> None:
        """Messages (evaluations, skipped steps, signals) print with or without a progress bar (--quiet)."""
        if self.progress is not None and not self.progress.disable:
            self.progress.write(message)
        else:
            print(message, file=sys.stderr)

    def on_sample(self, trainer) -> Path:
        started = time.perf_counter()
        path = self.write_grid(trainer)
        # sampling time is not training time: keep it out of img/s
        last_time, last_nimg = self._last
        self._last = (last_time + time.perf_counter() - started, last_nimg)
        return path

    def on_posthoc_snapshot(self, trainer) -> Path:
        """The tracked power-function EMAs -> ``posthoc/phema-<nimg>.safetensors``, within ``ema.posthoc_budget_mb``."""
        return write_snapshot(self.path / "posthoc", trainer.cur_nimg, trainer.config.optim.batch_size,
                              trainer.posthoc_states(), self.config.ema.posthoc_budget_mb,
                              snapshot_interval(self.config))

    def on_checkpoint(self, trainer, path: Path) -> None:
        self.tensorboard.flush()
        self.plot_loss()

    # -- outputs ------------------------------------------------------------------------------------
    def write_grid(self, trainer) -> Path:
        config = self.config
        if hasattr(trainer, "grid_images"):  # an autoencoder: held-out images above their reconstructions
            images, columns = trainer.grid_images()
            return self._save_grid(trainer, make_grid(images, columns))
        ema_name = config.sample.ema or next(iter(trainer.emas.emas))
        denoiser = build_denoiser(config, trainer.emas[ema_name].model, trainer.loss.schedule)
        columns = config.sample.grid_columns
        video = config.video.frames is not None
        if video:  # a row per clip, its frames across: one clip per class, or 8
            columns = 1
        if trainer.num_classes:
            rows = min(trainer.num_classes, 10)
            labels = class_major_labels(rows * columns, rows)
        else:
            rows, labels = min(columns, 8), None
        condition = None
        if trainer.captions is not None:  # a text run: a row per class, drawn from its first train caption
            rows = min(trainer.captions.num_classes, 10)
            classes = class_major_labels(rows * columns, rows)
            condition = trainer.captions.condition(trainer.captions.start[classes], trainer.device)
        s = config.sample
        guidance = GuidanceSettings.from_sample(s)
        if (labels is None and condition is None) or guidance.autoguide is not None:
            guidance = guidance.unguided()  # CFG needs a condition; a guide model may not exist yet
        if trainer.cascade is not None:  # a super-resolution stage: upsample real training images
            real = real_images_for(trainer.data, labels, rows * columns)
            condition = {**(condition or {}), **sampling_condition(
                downsample(real, trainer.cascade.low_resolution), trainer.cascade, real.shape[-1],
                seed=config.run.seed)}
        images = generate(denoiser, rows * columns, tuple(trainer.info["image_shape"]), labels=labels,
                          num_classes=trainer.num_classes, sampler=s.sampler, steps=s.steps, spacing=s.spacing,
                          guidance=guidance, options=s.options, condition=condition,
                          seed=config.run.seed, device=trainer.device, decode=trainer.decode)
        if video:  # the grid, and the clips playing side by side in samples.gif
            save_animation(clip_frames(images, min(len(images), 5)), self.path / "samples.gif")
            return self._save_grid(trainer, clip_grid(images))
        return self._save_grid(trainer, make_grid(images, columns))

    def _save_grid(self, trainer, grid) -> Path:
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path = save_png(grid, self.samples_dir / f"grid-{trainer.cur_nimg:012d}.png")
        shutil.copyfile(path, self.path / ".samples.png.tmp")
        os.replace(self.path / ".samples.png.tmp", self.path / "samples.png")
        return path

    def plot_loss(self) -> Path | None:
        records = [r for r in read_metrics(self.path / "metrics.jsonl") if isinstance(r.get("loss"), float)]
        if len(records) < 2:
            return None
        # TensorBoard-style smoothing; lighter for short runs, where 0.9 would lag far behind the raw curve
        smoothing = 0.9 if len(records) >= 200 else 0.6
        return plot_loss_curve(self.path / "loss.png", [r["cur_nimg"] for r in records],
                               [r["loss"] for r in records], smoothing=smoothing)


def real_images_for(data, labels, n: int):
    """``n`` training images as float NCHW: for each requested label the next image of that class in
    dataset order (the first ``n`` images when unconditional)."""
    if labels is None:
        return data.tensors(list(range(min(n, len(data)))))[0]
    seen: dict[int, int] = {}
    indices = []
    for label in labels.tolist():
        of_class = (data.labels == label).nonzero()[0]
        indices.append(int(of_class[seen.get(label, 0) % len(of_class)]))
        seen[label] = seen.get(label, 0) + 1
    return data.tensors(indices)[0]
