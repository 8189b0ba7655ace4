"""The ``diffusekit`` command (also ``python -m diffusekit``): train, sample, presets, info, and the evaluation
commands fid, ref-stats and eval (:mod:`diffusekit.cli_metrics`)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# -- train ------------------------------------------------------------------------------------------
def _train_config(args):
    from .config import apply_override, merge, parse_override, preset, read_file, validate
    from .training.rundir import stored_config

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
                 "data.strict": True if getattr(args, "strict", False) else None}
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
        raise CLIError(f"--run-dir {run_dir} is a file, not a directory; choose another --run-dir")
    if not any(run_dir.iterdir()):
        return False
    is_run = (run_dir / "config.yaml").is_file() or (run_dir / "checkpoints").is_dir()
    if not is_run:
        raise CLIError(f"{run_dir} exists and is not a diffusekit run directory (no config.yaml or checkpoints/); "
                       "choose a new or empty --run-dir (nothing was changed)")
    if args.overwrite:
        if args.resume not in ("auto", "never"):
            raise CLIError("--overwrite starts the run over: it cannot also --resume from a checkpoint")
        return True
    if args.resume == "never":
        raise CLIError(f"{run_dir} already holds a run; continue it with --resume auto, or start it over with "
                       "--overwrite (nothing was changed)")
    return True


@contextlib.contextmanager
def _preemptible(trainer, log):
    """SIGINT / SIGTERM: the first asks the trainer to finish its step, checkpoint and return (the preemption
    path); a second exits at once through KeyboardInterrupt. Every write is atomic (temporary file, then rename),
    so an exit at any point leaves the previous files whole."""
    import signal

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
    import subprocess

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
    import os

    from . import distributed

    if args.nproc is not None:
        if args.nproc < 1:
            raise CLIError(f"--nproc must be >= 1, got {args.nproc}")
        if "WORLD_SIZE" not in os.environ and args.nproc > 1:
            return _torchrun(args)
    config = _train_config(args)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    opt = config.optim
    if opt.batch_size % (world * opt.accumulation):
        raise CLIError(f"optim.batch_size {opt.batch_size} is not divisible by {world} processes x "
                       f"optim.accumulation {opt.accumulation}: choose a batch size that is a multiple of "
                       f"{world * opt.accumulation}")
    context = distributed.init(config.run.device)
    try:
        return _train(args, config, context)
    finally:
        distributed.shutdown()


def _train(args, config, context) -> int:
    import shutil
    import signal

    import torch

    from . import distributed
    from .monitor import ProgressBar
    from .data import load_training_data
    from .models import latest_valid
    from .training.loop import Trainer
    from .training.rundir import RunDirectory

    main_process = context.main

    def say(message: str) -> None:
        if main_process:
            print(message, file=sys.stderr)

    run_dir = Path(args.run_dir)
    existing = _check_run_dir(run_dir, args)
    rundir = RunDirectory(run_dir, config)
    if existing and not args.overwrite:
        rundir.check_resume()  # a different recipe is refused before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = load_training_data(config.data)
    if existing and args.overwrite:
        if main_process:
            shutil.rmtree(run_dir)
        distributed.barrier()
        say(f"--overwrite: removed the earlier run in {run_dir}")
    trainer = Trainer(config, data, run_dir)
    resume_from = None if args.resume in ("auto", "never") else Path(args.resume)
    if args.resume != "never" and trainer.resume(resume_from):
        say(f"resumed from {resume_from or latest_valid(run_dir / 'checkpoints')} at {trainer.cur_nimg:,} images")
    hooks = rundir if main_process else None
    if main_process:
        rundir.open(trainer.cur_nimg, trainer.device)
    params = sum(p.numel() for p in trainer.network.parameters())
    processes = f" x {context.world_size} processes" if context.distributed else ""
    say(f"training {config.network.kind} ({params / 1e6:.2f}M parameters) on {config.data.name} "
        f"({len(data):,} images {tuple(trainer.info['image_shape'])}, {trainer.num_classes} classes) for "
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
               **_peak(trainer.device)}
    if context.distributed:
        summary["processes"] = context.world_size
    say(json.dumps(summary))
    return 0


def _peak(device):
    from .training.rundir import peak_memory_mb

    return peak_memory_mb(device)


# -- sample -----------------------------------------------------------------------------------------
def _labels(args, model):
    import torch

    from .generate import class_major_labels

    if args.class_ is not None:
        if not model.num_classes:
            raise CLIError("--class was given but the model is unconditional")
        names = model.class_names
        label = names.index(args.class_) if args.class_ in names else None
        if label is None:
            try:
                label = int(args.class_)
            except ValueError:
                raise CLIError(f"--class {args.class_!r}: not a class; classes: {', '.join(names)}") from None
        if not 0 <= label < model.num_classes:
            raise CLIError(f"--class {label}: out of range 0..{model.num_classes - 1}")
        return torch.full((args.n,), label, dtype=torch.long)
    return class_major_labels(args.n, model.num_classes) if model.num_classes else None


def _text_condition(args, model, condition):
    """(condition with the --prompt text, prompt index per image) for a caption-conditioned run
    (``data.captions``); (condition, None) otherwise. One prompt is used for every image; several give class-major
    rows, one prompt per row."""
    from .generate import class_major_labels

    prompts = args.prompt or []
    if not model.config.data.captions:
        if prompts:
            raise CLIError(f"--prompt: {args.source} is not text-conditioned (its data.captions is off)")
        return condition, None
    if not prompts:
        raise CLIError(f"{args.source} is text-conditioned (data.captions): give what to draw with --prompt TEXT, "
                       "e.g. --prompt 'a handwritten seven' (repeat it for one row per prompt)")
    if any(not p.strip() for p in prompts):
        raise CLIError("--prompt: empty prompt; the text must say what to draw")
    from .text import TextEncoder, TextEncoderNotInstalled

    try:
        encoding = TextEncoder().encode(prompts)
    except TextEncoderNotInstalled as e:
        raise CLIError(f"--prompt needs the text encoder: {e}") from None
    which = class_major_labels(args.n, len(prompts))
    text = {"text": encoding.states[which], "text_mask": encoding.mask[which], "text_pooled": encoding.pooled[which]}
    return {**(condition or {}), **text}, which


def add_guidance_arguments(parser) -> None:
    """The guidance flags of `sample` and `eval` (docs/guidance.md); unset flags keep the run's sample.* keys."""
    from .guidance import GUIDANCE_SCHEDULES, THRESHOLDS

    g = parser.add_argument_group("guidance (docs/guidance.md; unset: the run's sample.* settings)")
    g.add_argument("--guidance", type=float, metavar="W",
                   help="guidance weight w (1 = none): classifier-free, or autoguidance with --autoguide")
    g.add_argument("--guidance-rescale", type=float, metavar="PHI",
                   help="CFG rescale phi in [0, 1] (Lin et al. 2023; 0.7 there): counters over-saturation at large w")
    g.add_argument("--guidance-schedule", choices=GUIDANCE_SCHEDULES,
                   help="w over the steps: constant, increasing (Muse: 1 -> w) or oscillating (Imagen Video)")
    g.add_argument("--guidance-low", type=float, metavar="W", help="oscillating: the low weight (default 1)")
    g.add_argument("--guidance-warmup", type=int, metavar="K",
                   help="oscillating: steps at the high weight before alternating (default 0)")
    g.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="guide only where LO < ve_sigma <= HI (Kynkaanniemi et al. 2024); elsewhere one network call")
    g.add_argument("--threshold", choices=THRESHOLDS,
                   help="x0_hat thresholding: static (clip to [-1, 1]) or dynamic (Imagen; for large w)")
    g.add_argument("--threshold-percentile", type=float, metavar="P", help="dynamic thresholding's p (default 0.995)")
    g.add_argument("--eps-scale", type=float, metavar="LAMBDA",
                   help="epsilon scaling (Ning et al. 2024): the predicted noise divided by LAMBDA at every step "
                        "(1 = off; the mnist preset uses 0.99)")
    g.add_argument("--autoguide", metavar="RUN_OR_CKPT",
                   help="autoguidance (EDM2): guide with this weaker model of the same task, e.g. an early checkpoint")
    g.add_argument("--autoguide-ema", metavar="NAME", help="the guide's EMA, or 'model' (default: its own default)")


def guidance_from_args(args, sample):
    """:class:`GuidanceSettings` from the run's sample section and the flags of :func:`add_guidance_arguments`."""
    from .guidance import GuidanceSettings

    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    return GuidanceSettings.from_sample(sample, scale=args.guidance, rescale=args.guidance_rescale,
                                        weight_schedule=args.guidance_schedule, low=args.guidance_low,
                                        warmup=args.guidance_warmup, interval=interval, threshold=args.threshold,
                                        percentile=args.threshold_percentile, autoguide=args.autoguide,
                                        autoguide_ema=args.autoguide_ema, eps_scale=args.eps_scale)


def _cascade_condition(args, model, labels):
    """(condition, labels) for a super-resolution stage from --low-res (the first stage's samples .npz, whose
    labels are kept unless --class is given); (None, labels) otherwise."""
    import numpy as np
    import torch

    from .cascade import sampling_condition
    from .models import cascade_settings

    settings = cascade_settings(model.config)
    if settings is None:
        if args.low_res:
            raise CLIError(f"--low-res: {args.source} is not a cascade stage (its cascade.low_resolution is unset)")
        return None, labels
    r = settings.low_resolution
    if not args.low_res:
        raise CLIError(f"this run is a super-resolution stage conditioned on {r}x{r} images: give them with "
                       "--low-res SAMPLES.npz (e.g. the first stage's `diffusekit sample --out SAMPLES.npz`)")
    with np.load(args.low_res, allow_pickle=False) as data:  # never unpickle: a hostile file could run code
        if "images" not in data.files:
            raise CLIError(f"--low-res {args.low_res} has no 'images' array (it holds {', '.join(data.files)}); give "
                           "a `diffusekit sample --out X.npz` file")
        images = torch.from_numpy(np.asarray(data["images"], dtype=np.float32))
        file_labels = torch.from_numpy(np.asarray(data["labels"], dtype=np.int64)) if "labels" in data else None
    expected = (model.image_shape[0], r, r)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or len(images) < args.n:
        raise CLIError(f"--low-res {args.low_res}: need at least {args.n} float images of shape [N, "
                       f"{', '.join(map(str, expected))}], got {list(images.shape)}")
    images = images[:args.n]
    if labels is not None and args.class_ is None and file_labels is not None and bool((file_labels >= 0).all()):
        labels = file_labels[:args.n]  # stage 2 draws the classes stage 1 drew
    return sampling_condition(images, settings, model.image_shape[-1], seed=args.seed), labels


def cmd_sample(args) -> int:
    import torch

    from .config import parse_override
    from .generate import generate, load_model
    from .monitor import ProgressBar

    if args.threads:
        torch.set_num_threads(args.threads)
    outs = [Path(o) for o in args.out]
    for out in outs:
        if out.suffix.lower() not in (".png", ".npz", ""):
            raise CLIError(f"--out {out}: write a .png grid, a .npz array file or a directory of PNGs")
    device = args.device or "cpu"
    model = load_model(args.source, ema=args.ema, device=device)
    s = model.config.sample
    sampler = args.sampler or s.sampler
    options = dict(s.options) if sampler == s.sampler else {}
    for text in args.option:
        keys, value = parse_override(text)
        options[".".join(keys)] = value
    labels = _labels(args, model)
    condition, labels = _cascade_condition(args, model, labels)
    condition, prompt_index = _text_condition(args, model, condition)
    guidance = guidance_from_args(args, s)
    if labels is None and prompt_index is None and guidance.autoguide is None:
        if args.guidance not in (None, 1.0):
            raise CLIError("--guidance: classifier-free guidance needs a class- or text-conditional model; an "
                           "unconditional one can be guided with --autoguide")
        guidance = guidance.unguided()
    steps = args.steps or s.steps
    if args.reject_rounds is not None and not args.reject:
        raise CLIError("--reject-rounds needs --reject")
    if args.reject and condition is not None:
        raise CLIError("--reject does not support cascade stages yet (their low-resolution inputs are per image)")
    classifier = _rejection_classifier(args, model) if args.reject else None
    started = time.perf_counter()
    common = dict(sampler=sampler, steps=steps, spacing=args.spacing or s.spacing, guidance=guidance, options=options,
                  seed=args.seed, batch_size=args.batch_size, device=device)
    extra, rejection = {}, None
    with ProgressBar(args.n, unit="img", disable=args.quiet) as bar:
        if classifier is None:
            images = generate(model.denoiser, args.n, model.image_shape, labels=labels, num_classes=model.num_classes,
                              progress=bar.update, condition=condition, **common)
        else:
            from .rejection import generate_with_rejection

            def progress(count):  # redraws go beyond --n: the bar grows with them
                bar.total = max(bar.total, bar.n + count)
                bar.update(count)
            result = generate_with_rejection(model.denoiser, args.n, model.image_shape, labels=labels,
                                             num_classes=model.num_classes, classifier=classifier[0],
                                             max_rounds=args.reject_rounds or 10, progress=progress, **common)
            images, extra = result.images, {"accepted": result.accepted, "rounds_used": result.rounds_used}
            rejection = {"classifier": classifier[1], **result.describe()}
    wall = time.perf_counter() - started
    meta = {"checkpoint": str(model.checkpoint), "cur_nimg": model.cur_nimg, "weights": model.weights,
            "sampler": sampler, "steps": steps, "guidance": guidance.scale, "guidance_settings": guidance.describe(),
            "seed": args.seed, "options": options}
    if prompt_index is not None:
        meta["prompts"] = list(args.prompt)
    if rejection is not None:
        meta["rejection"] = rejection
    for out in outs:
        if prompt_index is not None:  # rows by prompt; a .npz stores the prompt index as the label
            _write_samples(out, images, prompt_index, meta, args, class_major=len(args.prompt) > 1,
                           num_classes=len(args.prompt), extra=extra)
            continue
        _write_samples(out, images, labels, meta, args, class_major=labels is not None and args.class_ is None,
                       num_classes=model.num_classes, extra=extra)
    summary = {"out": [str(o) for o in outs], "n": args.n, "checkpoint": str(model.checkpoint),
               "weights": model.weights, "sampler": sampler, "steps": steps, "guidance": guidance.scale,
               "wall_s": round(wall, 2)}
    if rejection is not None:
        summary["rejection"] = {k: v for k, v in rejection.items() if k != "unaccepted"}
        summary["rejection"]["unaccepted"] = len(rejection["unaccepted"])
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _rejection_classifier(args, model):
    """--reject: the digit classifier of the run's built-in dataset (trained and cached on first use) and a
    description of it for the metadata."""
    from .data import DATASETS
    from .metrics.classifier import load_or_train_classifier

    if args.reject_rounds is not None and args.reject_rounds < 1:
        raise CLIError(f"--reject-rounds must be >= 1, got {args.reject_rounds}")
    if not model.num_classes:
        raise CLIError("--reject needs a class-conditional model; this one is unconditional")
    name = model.config.data.name
    if name not in DATASETS:
        raise CLIError(f"--reject classifies with a classifier of the run's built-in dataset; {name!r} is not one "
                       f"({', '.join(DATASETS)})")
    if model.image_shape not in ((1, 28, 28), (1, 32, 32)):
        raise CLIError("--reject: the classifier (DigitCNN) reads one-channel 28x28 (or 32x32) images; this model "
                       f"draws {'x'.join(map(str, model.image_shape))}")
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr))
    try:
        classifier, info = load_or_train_classifier(name, log=log)
    except ValueError as e:
        raise CLIError(f"--reject: no classifier for {name!r}: {e}") from None
    if info["key"]["num_classes"] != model.num_classes:
        raise CLIError(f"--reject: the {name} classifier knows {info['key']['num_classes']} classes, the model "
                       f"{model.num_classes}")
    return classifier, {"dataset": name, "test_accuracy": info["test_accuracy"], "weights": info["weights"]}


def _write_samples(out: Path, images, labels, meta: dict, args, class_major: bool, num_classes: int,
                   extra: dict | None = None) -> None:
    """One output: a .png grid (a row per class for class-major samples, at most --columns of each), a .npz
    with the float images, labels (-1: unconditional), the sampling metadata and the ``extra`` arrays (--reject:
    ``accepted`` and ``rounds_used``), or a directory of PNGs."""
    import numpy as np
    import torch

    from .images import make_grid, save_png, to_uint8

    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".png":
        if class_major and len(images) >= num_classes:
            per_class = len(images) // num_classes
            shown = min(per_class, args.columns or 10)
            rows = [images[labels == c][:shown] for c in range(num_classes)]
            save_png(make_grid(torch.cat(rows), shown), out)
        else:
            save_png(make_grid(images, args.columns or math.ceil(math.sqrt(len(images)))), out)
    elif suffix == ".npz":
        tmp = out.with_name(f".{out.name}.tmp.npz")
        stored = labels if labels is not None else torch.full((len(images),), -1)
        arrays = {k: v.numpy() for k, v in (extra or {}).items()}
        np.savez(tmp, images=images.numpy(), labels=stored.numpy(), meta=json.dumps(meta), **arrays)
        tmp.replace(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        pixels = to_uint8(images)
        for i in range(len(images)):
            save_png(pixels[i], out / f"{i:06d}.png")


# -- presets / info ---------------------------------------------------------------------------------
def cmd_presets(args) -> int:
    from .config import PRESETS, dump_yaml, preset
    from .config import presets as presets_module

    if args.show:
        print(dump_yaml(preset(args.show)), end="")
        return 0
    descriptions = {}
    for line in (presets_module.__doc__ or "").splitlines():
        if line.startswith("- ``") and "``:" in line:
            name, text = line[4:].split("``:", 1)
            descriptions[name] = text.strip()
    for name in PRESETS:
        c = preset(name)
        print(f"{name:14s} {c.data.name:14s} {c.network.kind}:{c.network.preset:16s} "
              f"{c.run.total_images:>12,} img  {descriptions.get(name, '')}")
    print("\nshow one in full: diffusekit presets --show NAME", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from .monitor import read_metrics
    from .models import CheckpointError, verify_checkpoint
    from .training.rundir import stored_config

    run_dir = Path(args.run_dir)
    config = stored_config(run_dir)
    if config is None:
        raise CLIError(f"{run_dir} is not a run directory (no config.yaml)")
    checkpoints = []
    ckpt_dir = run_dir / "checkpoints"
    for path in sorted(ckpt_dir.glob("ckpt-*")) if ckpt_dir.is_dir() else []:
        try:
            verify_checkpoint(path)
            status = "ok"
        except CheckpointError as e:
            status = f"DAMAGED: {e}"
        size = sum(f.stat().st_size for f in path.iterdir())
        checkpoints.append({"path": str(path), "cur_nimg": int(path.name[5:]), "mb": round(size / 2**20, 2),
                            "status": status})
    metrics = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    env = json.loads((run_dir / "environment.json").read_text()) if (run_dir / "environment.json").exists() else {}
    info = {"run_dir": str(run_dir), "data": config.data.name,
            "network": f"{config.network.kind}:{config.network.preset}",
            "objective": f"{config.objective.schedule}/{config.objective.parameterization}",
            "total_images": config.run.total_images, "checkpoints": checkpoints,
            "last_metrics": next((r for r in reversed(metrics) if "loss" in r), None),
            "last_evaluation": next((r for r in reversed(metrics) if "fid" in r), None),
            "sessions": len(env.get("sessions", [])),
            "samples": sorted(str(p) for p in (run_dir / "samples").glob("*.png"))[-3:]}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"run {run_dir}: {info['network']} on {info['data']}, {info['objective']}, "
          f"{config.run.total_images:,} images planned, {info['sessions']} session(s)")
    last = info["last_metrics"]
    if last:
        print(f"  last log: {last.get('cur_nimg', 0):,} images, loss {last.get('loss')}, "
              f"{last.get('img_per_s')} img/s, peak RSS {last.get('peak_rss_mb')} MiB")
    evaluation = info["last_evaluation"]
    if evaluation:
        best = evaluation.get("best_fid")
        print(f"  last evaluation: {evaluation['cur_nimg']:,} images, FID {evaluation['fid']:.3f} "
              f"({evaluation.get('extractor')})"
              + (f", best {best:.3f} at {evaluation.get('best_nimg'):,} images" if best is not None else ""))
    for c in checkpoints:
        print(f"  {c['path']}  {c['cur_nimg']:>12,} img  {c['mb']:8.2f} MiB  {c['status']}")
    if not checkpoints:
        print("  no checkpoints yet")
    for s in info["samples"]:
        print(f"  samples: {s}")
    return 0


# -- parser -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusekit", description="Train and sample diffusion and flow-matching "
                                     "models. Durations and intervals count training images.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (or continue a run)",
                       description="Train from a preset, config files and --set overrides (applied in that order).")
    t.add_argument("--preset", help="named starting config (see `diffusekit presets`; default mnist, or the run's "
                   "stored config when continuing a run)")
    t.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML/TOML/JSON config laid over the preset (repeatable)")
    t.add_argument("--run-dir", required=True, help="directory for config, logs, samples and checkpoints")
    t.add_argument("--data", help="built-in dataset name or an image folder (sets data.name)")
    t.add_argument("--images", type=int, help="training duration in images (sets run.total_images)")
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
    t.add_argument("--device", help="cpu, cuda or cuda:N (sets run.device)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set optim.lr=1e-3 (repeatable; value read as YAML)")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine: runs this command "
                   "under torchrun (one process per GPU with run.device=cuda, else gloo on the CPU); several "
                   "machines: see docs/distributed.md")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate images from a run or checkpoint")
    s.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT")
    s.add_argument("--n", type=int, required=True, help="number of images")
    s.add_argument("--out", required=True, action="append", help="FILE.png (grid; a row per class), FILE.npz (float "
                   "images + labels + metadata) or DIR (one PNG per image); repeatable: one sampling, several outputs")
    s.add_argument("--sampler", help="sampler name (default: the run's sample.sampler)")
    s.add_argument("--steps", type=int, help="sampling steps (default: the run's sample.steps)")
    s.add_argument("--spacing", help="time grid spacing: uniform, karras, logsnr, trailing")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="sampler option, e.g. order=3")
    add_guidance_arguments(s)
    s.add_argument("--low-res", metavar="SAMPLES.npz",
                   help="a cascade stage's low-resolution inputs: a .npz of float images [N, C, r, r] (and labels), "
                        "e.g. the first stage's `sample --out`; noise-augmented at the run's cascade.sample_snr")
    s.add_argument("--prompt", action="append", metavar="TEXT",
                   help="what to draw, for a text-conditioned run (data.captions), e.g. 'a handwritten seven'; "
                        "repeatable: one prompt per grid row (class-major), or one prompt for all --n images")
    s.add_argument("--class", dest="class_", metavar="C", help="class index or name (default: every class in turn)")
    s.add_argument("--seed", type=int, default=0, help="image i uses noise seeded by (seed, i)")
    s.add_argument("--reject", action="store_true",
                   help="classifier rejection sampling: redraw images that the run's dataset classifier (mnist, "
                   "fashion-mnist; trained and cached on first use) reads as another class than requested; "
                   "accepted images of the first round are the plain ones; stats go to the .npz meta and stderr")
    s.add_argument("--reject-rounds", type=int, metavar="N",
                   help="with --reject: at most N draws per image (first round included; default 10); an image "
                   "still rejected keeps its last draw; a .npz also holds accepted and rounds_used per image")
    s.add_argument("--ema", help="EMA name, or 'model' for the raw weights (default: the run's sample.ema / first EMA)")
    s.add_argument("--batch-size", type=int, default=250)
    s.add_argument("--columns", type=int, help="grid columns for .png output (per class row: at most this many, "
                   "default 10)")
    s.add_argument("--device", help="cpu, cuda or cuda:N")
    s.add_argument("--threads", type=int)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sample)

    p = sub.add_parser("presets", help="list the named presets")
    p.add_argument("--show", metavar="NAME", help="print one preset's full config as YAML")
    p.set_defaults(func=cmd_presets)

    i = sub.add_parser("info", help="summarise a run directory")
    i.add_argument("run_dir", metavar="RUN_DIR")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    from .cli_metrics import add_commands

    add_commands(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from .config import ConfigError
    from .data import DatasetNotInstalled
    from .distributed import DistributedError
    from .metrics.inception import FeatureExtractorNotInstalled
    from .models import CheckpointError
    from .training.loop import NonFiniteError

    try:
        return args.func(args)
    except (CLIError, ConfigError, DatasetNotInstalled, CheckpointError, FeatureExtractorNotInstalled,
            FileNotFoundError, ValueError) as e:
        print(f"diffusekit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteError, DistributedError) as e:
        print(f"diffusekit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"diffusekit {args.command}: error: no space left on the device writing {e.filename or 'a file'}; "
              "files are replaced atomically, so what was written before is intact: free space and run it again "
              "(train: --resume auto)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"diffusekit {args.command}: interrupted", file=sys.stderr)
        return 130
