"""``diffusekit sample``: images from a run or checkpoint as a PNG grid, a .npz or a folder of PNGs; a video model's
clips go to :mod:`diffusekit.cli.sample_video`."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..cascade import sampling_condition
from ..data import DATASETS
from ..errors import BadFileError, UsageError, UserError
from ..generate import class_major_labels, generate, load_model
from ..images import ANIMATION_FORMATS, make_grid, save_png, to_uint8
from ..metrics.classifier import load_or_train_classifier
from ..metrics.stats import open_npz
from ..models import PRECISIONS, Execution, cascade_settings
from ..rejection import generate_with_rejection
from ..sampling import same_sampler, sampler_name
from ..sampling.grid_files import load_grids, select_grid
from .flags import (
    add_guidance_arguments,
    check_sampling,
    device_name,
    guidance_from_args,
    parse_options,
    positive_int,
    progress_bar,
    set_threads,
)
from .prompts import text_condition
from .sample_video import add_video_arguments, sample_clips

__all__ = ["add_parser", "cmd_sample"]


def _labels(args, model):

    if args.class_ is not None:
        if not model.num_classes:
            raise UsageError("--class was given but the model is unconditional")
        names = model.class_names
        label = names.index(args.class_) if args.class_ in names else None
        if label is None:
            try:
                label = int(args.class_)
            except ValueError:
                raise UsageError(f"--class {args.class_!r}: not a class; classes: {', '.join(names)}") from None
        if not 0 <= label < model.num_classes:
            raise UsageError(f"--class {label}: out of range 0..{model.num_classes - 1}")
        return torch.full((args.n,), label, dtype=torch.long)
    return class_major_labels(args.n, model.num_classes) if model.num_classes else None


def _read_low_res(path: str):
    """(float images, labels or None) of a --low-res .npz file."""
    with open_npz(path) as data:
        if "images" not in data.files:
            raise UsageError(f"--low-res {path} has no 'images' array (it holds {', '.join(data.files)}); give "
                             "a `diffusekit sample --out X.npz` file")
        try:
            images = torch.from_numpy(np.asarray(data["images"], dtype=np.float32))
            labels = torch.from_numpy(np.asarray(data["labels"], dtype=np.int64)) if "labels" in data else None
        except (TypeError, ValueError) as e:  # arrays of strings, or of shapes numpy cannot convert
            raise BadFileError(f"--low-res {path}: 'images' and 'labels' must be numeric arrays ({e})") from None
    return images, labels


def _cascade_condition(args, model, labels):
    """(condition, labels) for a super-resolution stage from --low-res (the first stage's samples .npz, whose
    labels are kept unless --class is given); (None, labels) otherwise."""

    settings = cascade_settings(model.config)
    if settings is None:
        if args.low_res:
            raise UsageError(f"--low-res: {args.source} is not a cascade stage (its cascade.low_resolution is unset)")
        return None, labels
    r = settings.low_resolution
    if not args.low_res:
        raise UsageError(f"this run is a super-resolution stage conditioned on {r}x{r} images: give them with "
                         "--low-res SAMPLES.npz (e.g. the first stage's `diffusekit sample --out SAMPLES.npz`)")
    images, file_labels = _read_low_res(args.low_res)
    expected = (model.image_shape[0], r, r)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or len(images) < args.n:
        raise UsageError(f"--low-res {args.low_res}: need at least {args.n} float images of shape [N, "
                         f"{', '.join(map(str, expected))}], got {list(images.shape)}")
    images = images[:args.n]
    if labels is not None and args.class_ is None and file_labels is not None and bool((file_labels >= 0).all()):
        labels = file_labels[:args.n]  # stage 2 draws the classes stage 1 drew
    return sampling_condition(images, settings, model.image_shape[-1], seed=args.seed), labels


def cmd_sample(args) -> int:
    set_threads(args)
    outs = [Path(o) for o in args.out]
    for out in outs:
        if out.suffix.lower() not in (".png", ".npz", "", *ANIMATION_FORMATS):
            raise UsageError(f"--out {out}: write a .png grid, a .npz array file, a directory of PNGs, or for a video "
                             "model a .gif or .mp4 animation")
    device = args.device or "cpu"
    execution = Execution(args.precision, args.channels_last, args.compile)
    model = load_model(args.source, ema=args.ema, device=device, execution=execution)
    if model.is_video:
        return sample_clips(args, model, outs, device, execution, _labels(args, model))
    video_only = [flag for flag, used in (("--frames", args.frames is not None), ("--context", args.context),
                                          ("--context-frames", args.context_frames is not None),
                                          ("--history-guidance", args.history_guidance is not None)) if used]
    video_only += [f"--out {o}" for o in outs if o.suffix.lower() in ANIMATION_FORMATS]
    if video_only:
        raise UsageError(f"{video_only[0]} is for video models, but {model.checkpoint} is {model.describe_kind()}")
    s = model.config.sample
    sampler = args.sampler or s.sampler
    options = dict(s.options) if same_sampler(sampler, s.sampler) else {}
    options.update(parse_options(args.option))
    labels = _labels(args, model)
    condition, labels = _cascade_condition(args, model, labels)
    condition, prompt_index = text_condition(args, model, condition)
    guidance = guidance_from_args(args, s)
    if labels is None and prompt_index is None and guidance.autoguide is None:
        if args.guidance not in (None, 1.0):
            raise UsageError("--guidance: classifier-free guidance needs a class- or text-conditional model; an "
                             "unconditional one can be guided with --autoguide")
        guidance = guidance.unguided()
    steps = args.steps or s.steps
    spacing = args.spacing or s.spacing
    tuned = None
    if args.grid:  # a tuned grid brings its sampler, options and steps
        tuned = _tuned_grid(args, model.denoiser.schedule)
        sampler, steps, options = tuned.sampler, tuned.steps, {**tuned.options, **parse_options(args.option)}
    check_sampling(model.denoiser.schedule, sampler, steps, spacing, options)
    if args.reject_rounds is not None and not args.reject:
        raise UsageError("--reject-rounds needs --reject")
    if args.reject and condition is not None:
        raise UsageError("--reject does not support cascade stages yet (their low-resolution inputs are per image)")
    classifier = _rejection_classifier(args, model) if args.reject else None
    started = time.perf_counter()
    common = dict(sampler=sampler, steps=steps, spacing=spacing, guidance=guidance, options=options,
                  seed=args.seed, batch_size=args.batch_size, device=device, decode=model.decode,
                  ts=None if tuned is None else tuned.ts())
    extra, rejection = {}, None
    with progress_bar(args.n, args.quiet) as bar:
        if classifier is None:
            images = generate(model.denoiser, args.n, model.image_shape, labels=labels, num_classes=model.num_classes,
                              progress=bar.update, condition=condition, **common)
        else:
            def progress(count):  # redraws go beyond --n: the bar grows with them
                bar.total = max(bar.total, bar.n + count)
                bar.update(count)
            result = generate_with_rejection(model.denoiser, args.n, model.image_shape, labels=labels,
                                             num_classes=model.num_classes, classifier=classifier[0],
                                             max_rounds=args.reject_rounds or 10, progress=progress, **common)
            images, extra = result.images, {"accepted": result.accepted, "rounds_used": result.rounds_used}
            rejection = {"classifier": classifier[1], **result.describe()}
    wall = time.perf_counter() - started
    if same_sampler(sampler, "adaptive"):  # it sets its own steps from the tolerance: --steps did not apply
        steps = None
    meta = {"checkpoint": str(model.checkpoint), "cur_nimg": model.cur_nimg, "weights": model.weights,
            "sampler": sampler, "steps": steps, "guidance": guidance.scale, "guidance_settings": guidance.describe(),
            "seed": args.seed, "options": options, "execution": execution.describe(device)}
    if tuned is not None:
        meta["grid"] = {"file": args.grid, "times": tuned.times}
    if model.latent is not None:  # which autoencoder decoded the latents
        meta["latent"] = {k: model.latent[k] for k in ("autoencoder", "weights", "digest")}
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


def _tuned_grid(args, schedule):
    """--grid FILE: the file's grid for --steps (or its only one) and --sampler (if given), on this schedule."""
    if args.spacing:
        raise UsageError("--spacing: --grid gives the times; leave --spacing out")
    try:
        return select_grid(load_grids(args.grid), schedule, sampler=args.sampler and sampler_name(args.sampler),
                           steps=args.steps)
    except ValueError as e:
        raise UsageError(f"--grid {args.grid}: {e}") from None


def _rejection_classifier(args, model):
    """--reject: the digit classifier of the run's built-in dataset (trained and cached on first use) and a
    description of it for the metadata."""
    if args.reject_rounds is not None and args.reject_rounds < 1:
        raise UsageError(f"--reject-rounds must be >= 1, got {args.reject_rounds}")
    if not model.num_classes:
        raise UsageError("--reject needs a class-conditional model; this one is unconditional")
    name = model.config.data.name
    if name not in DATASETS:
        raise UsageError(f"--reject classifies with a classifier of the run's built-in dataset; {name!r} is not one "
                         f"({', '.join(DATASETS)})")
    if model.output_shape not in ((1, 28, 28), (1, 32, 32)):
        raise UsageError("--reject: the classifier (DigitCNN) reads one-channel 28x28 (or 32x32) images; this model "
                         f"draws {'x'.join(map(str, model.output_shape))}")
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr))
    try:
        classifier, info = load_or_train_classifier(name, log=log)
    except UserError as e:
        raise UsageError(f"--reject: no classifier for {name!r}: {e}") from None
    if info["key"]["num_classes"] != model.num_classes:
        raise UsageError(f"--reject: the {name} classifier knows {info['key']['num_classes']} classes, the model "
                         f"{model.num_classes}")
    return classifier, {"dataset": name, "test_accuracy": info["test_accuracy"], "weights": info["weights"]}


def _write_samples(out: Path, images, labels, meta: dict, args, class_major: bool, num_classes: int,
                   extra: dict | None = None) -> None:
    """One output: a .png grid (a row per class for class-major samples, at most --columns of each), a .npz
    with the float images, labels (-1: unconditional), the sampling metadata and the ``extra`` arrays (--reject:
    ``accepted`` and ``rounds_used``), or a directory of PNGs."""

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


def add_parser(sub) -> None:
    s = sub.add_parser("sample", help="generate images (or a video model's clips) from a run or checkpoint")
    s.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT")
    s.add_argument("--n", type=positive_int, required=True, help="number of images")
    s.add_argument("--out", required=True, action="append", help="FILE.png (grid; a row per class), FILE.npz (float "
                   "images + labels + metadata) or DIR (one PNG per image); repeatable: one sampling, several outputs")
    s.add_argument("--sampler", help="sampler name (default: the run's sample.sampler)")
    s.add_argument("--steps", type=positive_int, help="sampling steps (default: the run's sample.steps)")
    s.add_argument("--spacing", help="time grid spacing: uniform, karras, logsnr, trailing")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="sampler option, e.g. order=3")
    s.add_argument("--grid", metavar="GRIDS.json",
                   help="a tuned time grid from `diffusekit tune-grid`: its sampler, options and times (the one "
                        "for --steps when the file holds several)")
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
    add_video_arguments(s)
    s.add_argument("--ema", help="EMA name, or 'model' for the raw weights (default: the run's sample.ema / first EMA)")
    s.add_argument("--batch-size", type=positive_int, default=250)
    s.add_argument("--columns", type=positive_int,
                   help="grid columns for .png output (per class row: at most this many, default 10)")
    s.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N")
    s.add_argument("--threads", type=positive_int)
    s.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default); bf16: autocast of the network; auto: bf16 where the device computes it "
                   "natively (CPUs with AVX512-BF16 or AMX, CUDA compute capability 8+), else fp32")
    s.add_argument("--channels-last", action="store_true", help="run the network in NHWC memory order")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the network (pays a compilation first; worth it for many samples)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sample)
