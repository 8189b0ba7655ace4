"""``diffusekit restore``: inpainting, super-resolution and deblurring with a trained model as the prior
(:mod:`diffusekit.inverse`; docs/inverse.md, "Command line").

The input holds the measurements (or, with ``--degrade``, clean images that the command measures first, so that
the restorations can be scored against them). Every ``--method`` restores the same measurements from the same
start noise; the outputs are a PNG grid (measurement, one row per method, truth) and / or an .npz.
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import torch

from ..errors import InverseProblemError, UsageError
from ..generate import load_model
from ..inverse import METHODS, method_options, solve
from ..inverse.masks import box_mask, half_mask, load_mask, random_pixel_mask, stroke_mask
from ..inverse.operators import Blur, Downsample, Inpaint
from ..metrics.perceptual import SSIM_MIN_SIZE, ssim_distance
from ..models import cascade_settings
from ..sampling import timesteps
from ..training.autoencoder import psnr
from .flags import device_name, parse_options, positive_int, progress_bar, set_threads
from .restore_io import check_outputs, read_images, write_grid, write_npz

__all__ = ["add_parser", "cmd_restore", "build_operator", "check_gradients", "start_noise", "CountingDenoiser",
           "scores"]

TASKS = ("inpaint", "super-resolution", "deblur")
MASKS = ("box", "half", "random", "strokes")
# the option --guidance sets, per method: the step size of the gradient methods, the weight of reconstruction
# guidance (also through ccdf's consistency step)
GUIDANCE_OPTION = {"dps": "scale", "mcg": "scale", "reconstruction": "weight"}
GRADIENT_METHODS = tuple(GUIDANCE_OPTION)  # they differentiate the residual through the denoiser (and decoder)


def _mask(args, h: int, w: int) -> torch.Tensor:
    spec = args.mask or "box"
    generator = torch.Generator().manual_seed(args.seed)
    if spec == "box":
        return box_mask(h, w)
    if spec == "half":
        return half_mask(h, w)
    if spec == "random":
        return random_pixel_mask(h, w, generator=generator)
    if spec == "strokes":
        return stroke_mask(h, w, generator=generator)
    if spec.lower().endswith(".npy"):  # the library's convention: True = observed, any broadcastable shape
        try:
            return torch.from_numpy(np.load(spec, allow_pickle=False)).bool()
        except FileNotFoundError:
            raise InverseProblemError(f"--mask {spec}: no such file") from None
        except (OSError, ValueError) as e:
            raise InverseProblemError(f"--mask {spec}: not a readable .npy array ({e})") from None
    return load_mask(spec, h, w)


def build_operator(args, image_shape: tuple[int, int, int]):
    """The measurement operator of --task and its flags, checked against the model's image shape."""
    given = {"--mask": args.mask, "--factor": args.factor, "--kind": args.kind, "--blur-sigma": args.blur_sigma}
    allowed = {"inpaint": {"--mask"}, "super-resolution": {"--factor", "--kind"}, "deblur": {"--blur-sigma"}}
    stray = [flag for flag, value in given.items() if value is not None and flag not in allowed[args.task]]
    if stray:
        raise UsageError(f"{', '.join(stray)} does not apply to --task {args.task} (it takes "
                         f"{', '.join(sorted(allowed[args.task]))})")
    if args.sigma_y < 0:
        raise UsageError(f"--sigma-y must be >= 0, got {args.sigma_y}")
    _, h, w = image_shape
    if args.task == "inpaint":
        operator = Inpaint(_mask(args, h, w), sigma_y=args.sigma_y)
    elif args.task == "super-resolution":
        operator = Downsample(args.factor or 4, kind=args.kind or "box", sigma_y=args.sigma_y)
    else:
        sigma = 1.5 if args.blur_sigma is None else args.blur_sigma
        if sigma <= 0:
            raise UsageError(f"--blur-sigma must be > 0, got {sigma}")
        operator = Blur(sigma, sigma_y=args.sigma_y)
    operator.check(tuple(image_shape))
    return operator


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def measurements(args, operator, images: torch.Tensor, image_shape: tuple[int, int, int]):
    """(y, truth or None): the input as measurements, or with --degrade the input measured (seeded noise)."""
    expected = tuple(image_shape) if args.degrade or args.task == "inpaint" else \
        tuple(operator.measurement_shape(tuple(image_shape)))
    if tuple(images.shape[1:]) != expected:
        what = "clean images (--degrade)" if args.degrade else f"{args.task} measurements"
        hint = "" if args.degrade or args.task == "inpaint" else \
            (" (full-size clean images: add --degrade)" if tuple(images.shape[1:]) == tuple(image_shape) else "")
        raise InverseProblemError(f"--input {args.input} holds {_shape(images.shape[1:])} images, but the model's "
                                  f"{what} are {_shape(expected)}{hint}")
    if not args.degrade:
        # inpainting reads full-size images: only the observed pixels are measurements
        return (operator.forward(images) if args.task == "inpaint" else images), None
    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + 104_729)
    return operator.measure(images, generator=generator), images


def _consistency(method: str, options: dict) -> str:
    """The method whose steps run: ccdf's consistency step, else the method itself."""
    return options.get("consistency", method_options("ccdf")["consistency"]) if method == "ccdf" else method


def _known(method: str, options: dict) -> dict:
    """The options ``method`` takes and their defaults (ccdf: its consistency method's too)."""
    inner = _consistency(method, options)
    if inner not in METHODS:
        raise UsageError(f"--option consistency={inner}: not a method; choose from {', '.join(METHODS)}")
    return {**(method_options(inner) if inner != method else {}), **method_options(method)}


def _check_value(method: str, key: str, value, default) -> None:
    """An option's value of its default's type (a float option also takes an integer); a tensor option (ccdf's
    init) cannot be written on the command line."""
    if default is None:
        raise UsageError(f"--option {key}: {method}'s {key} is an array, which the command line does not set")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = number and isinstance(value, int)
    elif isinstance(default, float):
        ok = number and math.isfinite(value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a finite number"}.get(type(default), "a name")
        raise UsageError(f"--option {key}={value}: {method}'s {key} must be {kind} (default {default})")


def _takes(methods: list[str], known: dict[str, set[str]]) -> str:
    return "; ".join(f"{m} takes {', '.join(sorted(known[m])) or 'none'}" for m in methods)


def method_settings(args, methods: list[str]) -> dict[str, dict]:
    """Each method's keyword options, refused before the model is loaded where no method takes them.

    ``--option METHOD.KEY=VALUE`` sets one method's option; a plain ``--option KEY=VALUE``, ``--guidance`` (the
    step size or weight, :data:`GUIDANCE_OPTION`) and ``--particles`` go to every method that takes them, and
    must be taken by one."""
    parsed = {k: v for k, v in parse_options(args.option).items() if not k.startswith("sampler.")}
    settings: dict[str, dict] = {m: {} for m in methods}
    plain = {}
    for key, value in parsed.items():
        method, _, name = key.rpartition(".")
        if not method:
            plain[key] = value
        elif method not in settings:
            raise UsageError(f"--option {key}: {method} is not a --method of this command ({', '.join(methods)})")
        else:
            settings[method][name] = value
    for options in settings.values():  # ccdf's consistency step decides which options it takes
        if "consistency" in plain and "consistency" not in options:
            options["consistency"] = plain["consistency"]
    known = {m: _known(m, settings[m]) for m in methods}
    for m in methods:
        unknown = sorted(set(settings[m]) - set(known[m]))
        if unknown:
            raise UsageError(f"--option {', '.join(unknown)}: not an option of method {m} ({_takes([m], known)})")
    extra = {**plain}
    if args.particles is not None:
        extra["particles"] = args.particles
    # "method pocs has no ...", or with several methods "none of the methods has ..."
    no = f"method {methods[0]} has no" if len(methods) == 1 else "none of the methods has"
    for key, value in extra.items():
        takers = [m for m in methods if key in known[m]]
        if not takers:
            flag = "--particles" if key == "particles" else f"--option {key}"
            raise UsageError(f"{flag}: {no} option {key} ({_takes(methods, known)})")
        for m in takers:
            settings[m].setdefault(key, value)
    if args.guidance is not None:
        if not math.isfinite(args.guidance):
            raise UsageError(f"--guidance must be a finite number, got {args.guidance}")
        takers = [m for m in methods if GUIDANCE_OPTION.get(_consistency(m, settings[m])) is not None]
        if not takers:
            raise UsageError(f"--guidance: {no} step size or weight (the gradient methods "
                             f"{', '.join(GRADIENT_METHODS)} have)")
        for m in takers:
            settings[m].setdefault(GUIDANCE_OPTION[_consistency(m, settings[m])], args.guidance)
    for m in methods:
        for key, value in settings[m].items():
            _check_value(m, key, value, known[m][key])
    return settings


def check_gradients(denoise, decode, shape, cond, method: str, device="cpu") -> None:
    """Refuse a gradient method (--method or ccdf's consistency) when the denoiser, or a latent model's decoder,
    gives no gradient with respect to its input: one network call on one sample, before any sampling."""
    x = torch.zeros(1, *shape, device=device, requires_grad=True)
    with torch.enable_grad():
        out = denoise(x, torch.full((1,), 0.5, device=device), _select(cond, 0, 1, device))
        if decode is not None:
            out = decode(out)
    if not out.requires_grad:
        part = "denoiser or decoder" if decode is not None else "denoiser"
        raise InverseProblemError(f"method {method} differentiates the measurement residual through the model, but "
                                  f"this model's {part} gives no gradients: use a method without gradients "
                                  f"({', '.join(m for m in METHODS if m not in GRADIENT_METHODS)})")


def _sampler_options(args) -> dict:
    return {k.removeprefix("sampler."): v for k, v in parse_options(args.option).items() if k.startswith("sampler.")}


def _condition(args, model, n: int) -> dict | None:
    """A class-conditional model's labels: --class for every image, else the null class (unconditional)."""
    if model.config.data.captions or cascade_settings(model.config) is not None:
        raise UsageError(f"{args.source}: restore needs an unconditional or class-conditional model; this one "
                         "is text-conditioned or a cascade stage")
    if not model.num_classes:
        if args.class_ is not None:
            raise UsageError("--class was given but the model is unconditional")
        return None
    label = model.num_classes  # the null class of classifier-free training
    if args.class_ is not None:
        names = model.class_names
        try:
            label = names.index(args.class_) if args.class_ in names else int(args.class_)
        except ValueError:
            raise UsageError(f"--class {args.class_!r}: not a class; classes: {', '.join(names)}") from None
        if not 0 <= label < model.num_classes:
            raise UsageError(f"--class {label}: out of range 0..{model.num_classes - 1}")
    return {"labels": torch.full((n,), label, dtype=torch.long)}


def start_noise(shape, seed: int, n: int) -> torch.Tensor:
    """Start noise of image i seeded by (seed, i), as ``diffusekit sample`` draws it."""
    out = torch.empty((n, *shape))
    for i in range(n):
        out[i] = torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
    return out


class CountingDenoiser:
    """The denoiser, counting images through the network (NFE per image = count / images restored)."""

    def __init__(self, denoise):
        self.denoise, self.schedule, self.images = denoise, denoise.schedule, 0

    def __call__(self, x, t, cond=None):
        self.images += x.shape[0]
        return self.denoise(x, t, cond)


def _select(cond: dict | None, start: int, stop: int, device) -> dict | None:
    return None if cond is None else {k: v[start:stop].to(device) for k, v in cond.items()}


def restore(args, model, operator, y, method: str, options: dict, cond, bar) -> tuple[torch.Tensor, dict]:
    """One method's restorations of every measurement, batch by batch, and its NFE and seconds per image."""
    device = args.device or "cpu"
    schedule = model.denoiser.schedule
    try:
        ts = timesteps(schedule, args.steps, args.spacing or model.config.sample.spacing)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    noise = start_noise(model.image_shape, args.seed, len(y))
    counting = CountingDenoiser(model.denoiser)
    out, started = [], time.perf_counter()
    for start in range(0, len(y), args.batch_size):
        stop = min(start + args.batch_size, len(y))
        generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + start + 7_919)
        try:
            x = solve(counting, schedule, operator, y[start:stop].to(device), noise[start:stop].to(device),
                      ts, method, generator, cond=_select(cond, start, stop, device), sampler=args.sampler,
                      sampler_options=_sampler_options(args), decode=model.decode, **options)
        except TypeError as e:  # an option value of the wrong type
            raise UsageError(f"--method {method}: {e}") from None
        out.append(x.detach().float().cpu())
        bar.update(stop - start)
    seconds = time.perf_counter() - started
    return torch.cat(out), {"nfe_per_image": counting.images / len(y), "s_per_image": seconds / len(y)}


def scores(x: torch.Tensor, y: torch.Tensor, truth: torch.Tensor | None, operator) -> dict:
    """Mean residual ||A x - y|| and, against the truth, PSNR (dB) and SSIM (images of at least 11 x 11)."""
    out = {"residual": float(operator.residual(x, y).mean())}
    if truth is not None:
        out["psnr"] = float(psnr(x, truth).mean())
        if min(x.shape[-2:]) >= SSIM_MIN_SIZE:
            out["ssim"] = float((1 - ssim_distance(x.clamp(-1, 1), truth)).mean())
    return out


_COLUMNS = (("PSNR", "psnr", ".2f"), ("SSIM", "ssim", ".4f"), ("residual", "residual", ".4f"),
            ("NFE / image", "nfe_per_image", "g"), ("s / image", "s_per_image", ".3f"))


def _table(rows: dict[str, dict]) -> str:
    lines = ["| method | " + " | ".join(c[0] for c in _COLUMNS) + " |", "|---|" + "---:|" * len(_COLUMNS)]
    for name, r in rows.items():
        cells = [format(r[key], spec) if key in r else "-" for _, key, spec in _COLUMNS]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def cmd_restore(args) -> int:
    set_threads(args)
    methods = list(dict.fromkeys(m for text in args.method for m in text.split(",") if m))
    for method in methods:
        if method not in METHODS:
            raise UsageError(f"--method {method!r}: unknown; choose from {', '.join(METHODS)}")
    settings = method_settings(args, methods)
    outs = check_outputs(args.out, [args.input, args.mask if args.mask not in MASKS else None])
    model = load_model(args.source, ema=args.ema, device=args.device or "cpu")
    model.require_images("diffusekit restore")
    shape = tuple(model.output_shape)  # the operator measures images: a latent model's decoded ones
    operator = build_operator(args, shape)
    images = read_images(args.input, shape[0])
    y, truth = measurements(args, operator, images, shape)
    cond = _condition(args, model, len(y))
    for method in methods:
        if _consistency(method, settings[method]) in GRADIENT_METHODS:
            check_gradients(model.denoiser, model.decode, model.image_shape, cond, method, args.device or "cpu")
    restored, rows = {}, {}
    if truth is not None:  # the measurement itself, shown as an image: what a restoration must beat
        rows["(measurement, lifted)"] = scores(operator.lift(y), y, truth, operator)
    with progress_bar(len(y) * len(methods), args.quiet) as bar:
        for method in methods:
            restored[method], cost = restore(args, model, operator, y, method, settings[method], cond, bar)
            rows[method] = {**scores(restored[method], y, truth, operator), **cost}
    meta = {"checkpoint": str(model.checkpoint), "weights": model.weights, "task": args.task, "mask": args.mask,
            "factor": args.factor, "kind": args.kind, "blur_sigma": args.blur_sigma, "sigma_y": args.sigma_y,
            "degrade": args.degrade, "methods": methods, "options": settings, "steps": args.steps,
            "sampler": args.sampler, "seed": args.seed, "class": args.class_, "scores": rows}
    mask = getattr(operator, "mask", None) if args.task == "inpaint" else None
    for out in outs:
        if out.suffix.lower() == ".png":
            grid = [operator.lift(y).float().cpu(), *restored.values()] + ([truth] if truth is not None else [])
            write_grid(out, grid, args.columns)
        else:
            write_npz(out, restored, y, truth, mask, meta)
    print(_table(rows))
    print(json.dumps({"out": [str(o) for o in outs], "n": len(y), "checkpoint": str(model.checkpoint),
                      "scores": rows}), file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("restore", help="inpaint, super-resolve or deblur images with a model as the prior")
    s.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT")
    s.add_argument("--task", choices=TASKS, required=True)
    s.add_argument("--method", action="append", required=True, metavar="NAME",
                   help=f"{', '.join(METHODS)}; repeatable (or comma-separated): every method restores the same "
                        "measurements from the same noise")
    s.add_argument("--input", required=True, metavar="IMAGES",
                   help="an image file, a folder of images or an .npz ('images': uint8 NHWC or float NCHW in "
                        "[-1, 1]): the measurements (super-resolution: low-resolution images; inpaint: full-size "
                        "images, the missing part ignored; deblur: blurred images), or clean images with --degrade")
    s.add_argument("--out", required=True, action="append", metavar="FILE",
                   help="FILE.png (grid: measurement, a row per method, truth) or FILE.npz; repeatable")
    s.add_argument("--degrade", action="store_true",
                   help="the input holds clean images: measure them first (with --sigma-y noise, seeded), then "
                        "score the restorations against them (PSNR, SSIM)")
    g = s.add_argument_group("the measurement")
    g.add_argument("--mask", metavar="FILE|" + "|".join(MASKS),
                   help="inpaint: box (the centre square missing; default), half (the bottom half), random (half "
                        "the pixels), strokes, an image file (white = missing) or a .npy array (True = observed)")
    g.add_argument("--factor", type=positive_int, help="super-resolution: the downsampling factor (default 4)")
    g.add_argument("--kind", choices=("box", "bicubic"), help="super-resolution: the downsampling (default box)")
    g.add_argument("--blur-sigma", type=float, metavar="S", help="deblur: the Gaussian blur's sigma, pixels (1.5)")
    g.add_argument("--sigma-y", type=float, default=0.0, metavar="S",
                   help="measurement noise std, images in [-1, 1] (default 0)")
    m = s.add_argument_group("the solver")
    m.add_argument("--steps", type=positive_int, default=50)
    m.add_argument("--spacing", help="time grid spacing: uniform, karras, logsnr, trailing (default: the run's)")
    m.add_argument("--sampler", default="ddpm", help="the sampler the methods step with (default ddpm)")
    m.add_argument("--guidance", type=float, metavar="W",
                   help="the gradient methods' step size (dps, mcg: scale) or reconstruction's weight")
    m.add_argument("--particles", type=positive_int, metavar="K", help="smc: particles per image")
    m.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. jump_length=10, resamples=5, t0=0.5, consistency=pocs; "
                        "sampler.KEY=VALUE for the sampler")
    s.add_argument("--class", dest="class_", metavar="C",
                   help="a class-conditional model: restore as this class (default: the null class, unconditional)")
    s.add_argument("--seed", type=int, default=0, help="image i starts from noise seeded by (seed, i)")
    s.add_argument("--ema", help="EMA name, or 'model' for the raw weights (default: the run's sample.ema)")
    s.add_argument("--batch-size", type=positive_int, default=50)
    s.add_argument("--columns", type=positive_int, default=10, help="images per row of the .png grid")
    s.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N")
    s.add_argument("--threads", type=positive_int)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_restore)
