"""``diffusekit train``: a run from a preset, config files and overrides; resumable, preemptible, multi-process."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import distributed
from ..config import RunConfig, apply_override, merge, parse_override, preset, read_file, validate
from ..errors import UsageError
from ..models import latest_valid
from ..monitor import ProgressBar
from ..training.make import INIT_REPORT, make_trainer, training_data
from ..training.rundir import RunDirectory, peak_memory_mb, stored_config
from .flags import positive_int, set_threads

__all__ = ["add_parser", "cmd_train"]


def _train_config(args):
    run_dir = Path(args.run_dir)
    stored = stored_config(run_dir) if (run_dir / "config.yaml").exists() else None
    if stored is not None and args.preset is None and not args.config:
        config = stored  # continuing a run with its own recipe
    else:
        config = preset(args.preset or "mnist")
        for path in args.config:
            config = merge(config, read_file(path))
    shortcuts = {"data.name": args.data, "run.total_images": args.images, "optim.batch_size": args.batch_size,
                 "run.checkpoint_every": args.checkpoint_every, "run.seed": args.seed, "run.device": args.device,
                 "data.strict": True if getattr(args, "strict", False) else None,
                 "run.init_from": args.init_from, "run.init_weights": args.init_weights,
                 "run.init_optimizer": True if args.init_optimizer else None}
    for key, value in shortcuts.items():
        if value is not None:
            config = apply_override(config, key.split("."), value)
    for text in args.set:
        keys, value = parse_override(text)
        config = apply_override(config, keys, value)
    return validate(config)


def _check_run_dir(run_dir: Path, args) -> bool:
    """Whether ``run_dir`` holds an earlier run; refuses (before any work) what would overwrite something: a
    folder that is not a run, or a run with ``--resume never``, unless ``--overwrite`` (runs only)."""
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} is a file, not a directory; choose another --run-dir")
    if not any(run_dir.iterdir()):
        return False
    is_run = (run_dir / "config.yaml").is_file() or (run_dir / "checkpoints").is_dir()
    if not is_run:
        raise UsageError(f"{run_dir} exists and is not a diffusekit run directory (no config.yaml or checkpoints/); "
                         "choose a new or empty --run-dir (nothing was changed)")
    if args.overwrite:
        if args.resume not in ("auto", "never"):
            raise UsageError("--overwrite starts the run over: it cannot also --resume from a checkpoint")
        return True
    if args.resume == "never":
        raise UsageError(f"{run_dir} already holds a run; continue it with --resume auto, or start it over with "
                         "--overwrite (nothing was changed)")
    return True


def _initialisation(run_dir: Path, config, args, say):
    """``config`` with ``run.init_*`` as they apply: a run that already has checkpoints continues from its own and
    keeps the ``run.init_*`` it was started with (one line says so when another start was asked for)."""
    newest = latest_valid(run_dir / "checkpoints") if run_dir.is_dir() and not args.overwrite else None
    if newest is None:
        if config.run.init_from is not None and args.resume not in ("auto", "never"):
            raise UsageError("--resume CHECKPOINT continues a run, --init-from (run.init_from) starts a new one from "
                             "another's weights: give one of them")
        return config
    stored = stored_config(run_dir)
    started = stored.run if stored is not None else RunConfig()
    if config.run.init_from is not None:
        say(f"{run_dir} has checkpoints: it continues from its own ({newest.name}); run.init_from "
            f"{config.run.init_from} is not applied again")
    run = dataclasses.replace(config.run, init_from=started.init_from, init_weights=started.init_weights,
                              init_optimizer=started.init_optimizer)
    return dataclasses.replace(config, run=run)


@contextlib.contextmanager
def _preemptible(trainer, log):
    """SIGINT / SIGTERM: the first asks the trainer to finish its step, checkpoint and return (the preemption
    path); a second exits at once through KeyboardInterrupt. Every write is atomic (temporary file, then rename),
    so an exit at any point leaves the previous files whole."""
    def handler(signum, frame):
        name = signal.Signals(signum).name
        if trainer.stop_signal is not None:
            raise KeyboardInterrupt(name)
        trainer.stop_signal = name
        log(f"{name}: finishing the current step, then writing a checkpoint (send it again to exit at once)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _torchrun(args) -> int:
    """``train --nproc N``: this same command under torchrun, N processes on this machine (one per GPU, or gloo
    processes on the CPU). Several machines: run torchrun yourself (docs/distributed.md)."""
    rest, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               "-m", "diffusekit", "--", *rest]  # "--": torchrun would take abbreviations such as --n as its own
    print("running: " + " ".join(command), file=sys.stderr)
    return subprocess.run(command, check=False).returncode


def cmd_train(args) -> int:

    if args.nproc is not None:
        if args.nproc < 1:
            raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
        if "WORLD_SIZE" not in os.environ and args.nproc > 1:
            return _torchrun(args)
    config = _train_config(args)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    opt = config.optim
    if opt.batch_size % (world * opt.accumulation):
        raise UsageError(f"optim.batch_size {opt.batch_size} is not divisible by {world} processes x "
                         f"optim.accumulation {opt.accumulation}: choose a batch size that is a multiple of "
                         f"{world * opt.accumulation}")
    context = distributed.init(config.run.device)
    try:
        return _train(args, config, context)
    finally:
        distributed.shutdown()


def _train(args, config, context) -> int:


    main_process = context.main

    def say(message: str) -> None:
        if main_process:
            print(message, file=sys.stderr)

    run_dir = Path(args.run_dir)
    existing = _check_run_dir(run_dir, args)
    config = _initialisation(run_dir, config, args, say)
    rundir = RunDirectory(run_dir, config)
    if existing and not args.overwrite:
        rundir.check_resume()  # a different recipe is refused before any work
    set_threads(args)
    started = time.perf_counter()
    data = training_data(config)
    if existing and args.overwrite:
        if main_process:
            shutil.rmtree(run_dir)
        distributed.barrier()
        say(f"--overwrite: removed the earlier run in {run_dir}")
    trainer = make_trainer(config, data, run_dir, log=say)
    if trainer.init_report is not None:  # printed once, at the start from the source's weights
        if main_process:
            trainer.init_report.write(run_dir / INIT_REPORT)
        say(f"{trainer.init_report.summary()}\n  (the whole report: {run_dir / INIT_REPORT})")
    resume_from = None if args.resume in ("auto", "never") else Path(args.resume)
    if args.resume != "never" and trainer.resume(resume_from):
        say(f"resumed from {resume_from or latest_valid(run_dir / 'checkpoints')} at {trainer.cur_nimg:,} images")
    hooks = rundir if main_process else None
    if main_process:
        rundir.open(trainer.cur_nimg, trainer.device)
    params = sum(p.numel() for p in trainer.network.parameters())
    processes = f" x {context.world_size} processes" if context.distributed else ""
    items = "clips" if config.video.frames else "images"
    say(f"training {config.network.kind} ({params / 1e6:.2f}M parameters) on {config.data.name} "
        f"({len(data):,} {items} {tuple(trainer.info['image_shape'])}, {trainer.num_classes} classes) for "
        f"{config.run.total_images:,} images on {trainer.device}{processes}; run directory {run_dir}")
    rundir.progress = ProgressBar(config.run.total_images, initial=trainer.cur_nimg, unit="img",
                                  disable=args.quiet or not main_process)
    try:
        with _preemptible(trainer, rundir.log if main_process else (lambda message: None)):
            trainer.run(hooks=hooks)
    except RuntimeError as e:
        if not context.distributed or isinstance(e, distributed.DistributedError):
            raise
        # DDP's gradient all-reduce reports a peer that died as a RuntimeError from inside backward()
        raise distributed.DistributedError(f"process {context.rank} of {context.world_size}: training failed, another "
                                           f"process has probably ended ({str(e).splitlines()[0]}); the newest "
                                           "checkpoint is intact: continue with --resume auto") from None
    except KeyboardInterrupt:
        newest = latest_valid(run_dir / "checkpoints")
        say(f"\ninterrupted at {trainer.cur_nimg:,} images; newest checkpoint: {newest}; continue with --resume auto")
        return 130
    finally:
        if main_process:
            rundir.close()
    if trainer.stop_requested is not None and trainer.cur_nimg < config.run.total_images:
        newest = latest_valid(run_dir / "checkpoints")
        say(f"stopped by {trainer.stop_requested} at {trainer.cur_nimg:,} images with a checkpoint ({newest}); "
            "continue with --resume auto")
        return 128 + int(getattr(signal, trainer.stop_requested, signal.SIGTERM))
    summary = {"run_dir": str(run_dir), "cur_nimg": trainer.cur_nimg, "wall_s": round(time.perf_counter() - started, 1),
               **peak_memory_mb(trainer.device)}
    if context.distributed:
        summary["processes"] = context.world_size
    say(json.dumps(summary))
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model (or continue a run)",
                       description="Train from a preset, config files and --set overrides (applied in that order).")
    t.add_argument("--preset", help="named starting config (see `diffusekit presets`; default mnist, or the run's "
                   "stored config when continuing a run)")
    t.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML/TOML/JSON config laid over the preset (repeatable)")
    t.add_argument("--run-dir", required=True, help="directory for config, logs, samples and checkpoints")
    t.add_argument("--data", help="built-in dataset name, or an image folder (a video run: a clip dataset or a folder "
                   "of videos); sets data.name")
    t.add_argument("--images", type=int, help="training duration in images, or clips for a video run (sets "
                   "run.total_images)")
    t.add_argument("--batch-size", type=int, help="images per optimizer step (sets optim.batch_size)")
    t.add_argument("--checkpoint-every", type=int, help="checkpoint interval in images (sets run.checkpoint_every)")
    t.add_argument("--seed", type=int, help="sets run.seed")
    t.add_argument("--resume", default="auto", help="auto: continue the run in --run-dir from its newest valid "
                   "checkpoint (from the start if it has none) (default); never: refuse if --run-dir already holds "
                   "a run; or a checkpoint path")
    t.add_argument("--overwrite", action="store_true", help="start over: delete the run already in --run-dir (only "
                   "a diffusekit run directory; without this flag a run is never overwritten)")
    t.add_argument("--strict", action="store_true", help="an image folder with unreadable, tiny or non-image files "
                   "is an error (sets data.strict; default: skip them with a warning that counts them)")
    t.add_argument("--init-from", metavar="RUN_OR_CKPT", help="fine-tune: start a new run from the weights of this "
                   "run directory (its newest valid checkpoint) or checkpoint; tensors of another name or shape start "
                   "fresh, listed in <run-dir>/init_from.json (sets run.init_from; a run with checkpoints resumes "
                   "from its own)")
    t.add_argument("--init-weights", metavar="NAME", help="which of the source's weights: model (raw) or an EMA "
                   "name (sets run.init_weights; default: the EMA the source samples with)")
    t.add_argument("--init-optimizer", action="store_true", help="also take the source's optimizer state (Adam's "
                   "moments); every parameter must match in shape (sets run.init_optimizer; default: fresh)")
    t.add_argument("--device", help="cpu, cuda or cuda:N (sets run.device)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set optim.lr=1e-3 (repeatable; value read as YAML)")
    t.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine: runs this command "
                   "under torchrun (one process per GPU with run.device=cuda, else gloo on the CPU); several "
                   "machines: see docs/distributed.md")
    t.set_defaults(func=cmd_train)
