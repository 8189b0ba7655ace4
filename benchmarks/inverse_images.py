"""Inverse problems on held-out images with a trained model as the prior: every method against the baselines.

The model's own dataset gives the images, from its *test* split (never trained on), in three disjoint parts:

| dataset | restored (--n) | validation (tune) | FID reference |
|---|---|---|---|
| mnist (the demo model, 28x28) | test[0:n] | test[6000:6000+--n-validation] | test[5000:6000] |
| emoji (64x64 RGB) | test[0:n] | test[300:300+--n-validation] | test[n:300] |

``tune``
    The step sizes of the gradient methods (dps and mcg: scale; reconstruction: weight) are chosen per task on the
    validation images from the grid --tune-grid (the same grid and budget for each method), by mean PSNR; the
    choice is stored in the output's ``tuning`` section, and ``restore`` uses it (the paper defaults otherwise).
    Figures are never reported on the images they were tuned on.

``restore`` (the default subcommand)
    The first --n held-out images are measured by three operators: the centre square missing (``inpaint-box``:
    the h/2 x w/2 box), the bottom half missing (``inpaint-half``) and x4 box downsampling (``sr4``: 28x28 -> 7x7,
    64x64 -> 16x16), noiseless unless --sigma-y. Every method of
    :data:`diffusekit.inverse.METHODS` restores them (--steps steps of --sampler, image i from noise seeded by
    (seed, i), the null class unless --class-conditional, which gives the true label), beside a baseline that
    needs no model: bicubic upsampling for super-resolution, the missing pixels filled with the image's mean
    observed value for inpainting. Per task and method:

    - PSNR (dB, images in [-1, 1]) and SSIM (Wang et al. 2004, 11x11 Gaussian window) against the truth;
    - the measurement residual ``||A x - y||`` (0 for a method that keeps the measurements exactly);
    - MNIST only: the accuracy of the MNIST classifier (``diffusekit.metrics.classifier``, trained and cached on
      first use) on the uint8 restorations against the digits' true labels (does the digit survive?);
    - FID of the restorations against the FID reference images (standard Inception, pytorch-fid
      preprocessing); with n = 100 an FID is far above its large-n value: compare rows with each other and with
      the ``truth`` row (the clean images themselves), not with published FIDs;
    - network evaluations (NFE) and seconds per image, with the baseline's seconds beside them.

``ccdf``
    Quality against NFE for CCDF (Chung et al. 2022, "Come-Closer-Diffuse-Faster") started at each t0 of --t0
    from the forward-noised pseudo-inverse ``A^+ y`` (its default initial estimate) with POCS as the consistency
    step, against POCS run the full length (--steps) and POCS run from t = 1 with as many steps as CCDF spends
    (equal NFE). Task --task (default sr4).

Results go to ``benchmarks/results/inverse_<dataset>.json`` (each subcommand replaces its own section) and the
table is printed; grids of the first 8 images (rows: the measurement shown as an image, the baseline, each method,
the truth) go to ``benchmarks/results/inverse_<dataset>/`` for the default output, else to a folder named after
--output, so that a trial run never replaces the published figures.

Usage::

    .venv/bin/python benchmarks/inverse_images.py tune --run runs/demo
    .venv/bin/python benchmarks/inverse_images.py restore --run runs/demo        # ~20 min on 2 cores
    .venv/bin/python benchmarks/inverse_images.py restore --n 10 --output /tmp/inverse.json   # a quick check
    .venv/bin/python benchmarks/inverse_images.py ccdf --run runs/demo --t0 0.2,0.4,0.6,0.8
    .venv/bin/python benchmarks/inverse_images.py --table --run runs/demo
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffusekit.cli.flags import parse_options
from diffusekit.cli.restore import CountingDenoiser, scores, start_noise
from diffusekit.data import load
from diffusekit.data.transform import resize_arrays
from diffusekit.errors import InverseProblemError
from diffusekit.generate import load_model
from diffusekit.images import make_grid, save_png
from diffusekit.inverse import METHODS, solve
from diffusekit.inverse.masks import box_mask, half_mask
from diffusekit.inverse.operators import Downsample, Inpaint
from diffusekit.metrics import classify, load_or_train_classifier
from diffusekit.metrics.evaluate import as_json, feature_metrics
from diffusekit.metrics.features import dataset_reference_stats
from diffusekit.metrics.inception import get_extractor, quantize
from diffusekit.sampling import timesteps

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("inpaint-box", "inpaint-half", "sr4")
SHOWN = 8
# the held-out (test) split's parts: validation images for tuning and the FID reference, apart from the restored
# images test[0:n]; the emoji FID reference takes what lies between the restored and the validation images
VALIDATION_START = {"mnist": 6000, "emoji": 300}
GUIDANCE_OPTION = {"dps": "scale", "mcg": "scale", "reconstruction": "weight"}


def default_output(dataset: str) -> Path:
    return RESULTS / f"inverse_{dataset}.json"


def fid_reference(dataset: str, n: int, count: int) -> tuple[int, int]:
    """(start, count) of the FID reference images in the test split."""
    if dataset == "mnist":
        return 5000, count
    return n, min(count, VALIDATION_START[dataset] - n)


def operator_for(task: str, h: int, w: int, sigma_y: float):
    if task == "inpaint-box":
        return Inpaint(box_mask(h, w), sigma_y=sigma_y)
    if task == "inpaint-half":
        return Inpaint(half_mask(h, w), sigma_y=sigma_y)
    if task == "sr4":
        return Downsample(4, "box", sigma_y=sigma_y)
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")


def baseline(task: str, operator, y: torch.Tensor) -> torch.Tensor:
    """Bicubic upsampling (super-resolution) or the image's mean observed value in the missing pixels."""
    if task == "sr4":
        return F.interpolate(y, scale_factor=operator.factor, mode="bicubic", align_corners=False).clamp(-1, 1)
    mask = operator.mask.to(y).expand_as(y)
    mean = (y * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)
    return torch.where(mask.bool(), y, mean.view(-1, 1, 1, 1))


def held_out(model, n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images start..start+n of the model's dataset at the model's size: float images in [-1, 1], labels."""
    data = load(model.config.data.name, "test")
    c, h, w = model.output_shape
    if tuple(data.images.shape[1:]) != (h, w, c):
        data = resize_arrays(data, h, c, model.config.data.resize)
    if start + n > len(data.images):
        raise SystemExit(f"{model.config.data.name}'s test split has {len(data.images)} images, not {start + n}")
    images = torch.from_numpy(np.array(data.images[start:start + n])).permute(0, 3, 1, 2).float()  # a copy
    return images / 127.5 - 1, torch.from_numpy(np.asarray(data.labels[start:start + n], dtype=np.int64))


class Judges:
    """The classifier and the FID reference, each optional (--no-classifier, --no-fid)."""

    def __init__(self, args, model):
        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        self.classifier = self.extractor = self.reference = None
        self.meta: dict = {}
        if not args.no_classifier and model.config.data.name == "mnist":
            self.classifier, info = load_or_train_classifier("mnist", log=log)
            self.meta["classifier_test_accuracy"] = info["test_accuracy"]
        if not args.no_fid:
            self.extractor = get_extractor("inception", "pytorch")
            dataset = model.config.data.name
            start, count = fid_reference(dataset, args.n, args.fid_reference)
            self.reference = dataset_reference_stats(
                self.extractor, dataset, "test", count, start=start,
                resolution=model.config.data.resolution, channels=model.config.data.channels,
                resize=model.config.data.resize, log=log)
            self.meta["fid_reference"] = f"{dataset} test[{start}:{start + count}], standard Inception"
        self.ready = time.perf_counter()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        out = {}
        pixels = quantize(images)  # uint8 NCHW, what a PNG holds
        if self.classifier is not None:
            x = pixels.float() / 127.5 - 1
            if x.shape[-1] not in (28, 32):  # the classifier reads 28x28 digits
                x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
            out["accuracy"] = float((classify(self.classifier, x) == labels).float().mean())
        if self.reference is not None and len(images) >= 2:
            values, _ = feature_metrics(pixels, ("fid",), self.reference, self.extractor)
            out["fid"] = values["fid"]
        return out


def method_settings(args) -> dict[str, dict]:
    """Each method's options: the sizes' flags, then --option METHOD.KEY=VALUE."""
    settings: dict[str, dict] = {m: {} for m in METHODS}
    settings.setdefault("repaint", {}).update(resamples=args.resamples, jump_length=args.jump_length)
    settings.setdefault("smc", {}).update(particles=args.particles)
    for key, value in parse_options(args.option).items():
        method, _, name = key.partition(".")
        if method not in METHODS or not name:
            raise SystemExit(f"--option {key}: write METHOD.KEY=VALUE with METHOD one of {', '.join(METHODS)}")
        settings[method][name] = value
    return settings


def run_method(args, model, operator, y, method: str, options: dict, cond, steps: int | None = None):
    """(restorations, NFE per image, seconds per image) of one method on every measurement, batch by batch."""
    schedule = model.denoiser.schedule
    ts = timesteps(schedule, steps or args.steps, args.spacing or model.config.sample.spacing)
    noise = start_noise(model.image_shape, args.seed, len(y))
    counting = CountingDenoiser(model.denoiser)
    out, started = [], time.perf_counter()
    for start in range(0, len(y), args.batch_size):
        stop = min(start + args.batch_size, len(y))
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + start + 7_919)
        batch_cond = None if cond is None else {k: v[start:stop] for k, v in cond.items()}
        x = solve(counting, schedule, operator, y[start:stop], noise[start:stop], ts, method, generator,
                  cond=batch_cond, sampler=args.sampler, decode=model.decode, **options)
        out.append(x.detach().float().cpu())
    seconds = time.perf_counter() - started
    return torch.cat(out), counting.images / len(y), seconds / len(y)


def condition(args, model, labels: torch.Tensor) -> dict | None:
    if not model.num_classes:
        return None
    if args.class_conditional:
        return {"labels": labels}
    return {"labels": torch.full_like(labels, model.num_classes)}  # the null class: unconditional


def _row(kind, task, method, images, y, truth, labels, operator, judges, **extra) -> dict:
    row = {"kind": kind, "task": task, "method": method, **scores(images, y, truth, operator),
           **judges(images, labels), **extra}
    print(json.dumps(as_json(row)), file=sys.stderr, flush=True)
    return row


def figures_dir(output: Path) -> Path:
    return RESULTS / output.stem if output.resolve().parent == RESULTS.resolve() else output.with_suffix("")


def save_grid(path: Path, rows: list[torch.Tensor]) -> None:
    save_png(make_grid(torch.cat([r[:SHOWN] for r in rows]), min(SHOWN, len(rows[0]))), path)


def restore_section(args, model, judges) -> dict:
    truth, labels = held_out(model, args.n)
    _, h, w = model.output_shape
    cond = condition(args, model, labels)
    tuning = _load(args.output).get("tuning", {}).get("chosen", {})
    rows = [{"kind": "truth", "task": None, "method": "truth", **judges(truth, labels)}]  # the ceiling and floor
    section = {"settings": {}, "tuned_on": _load(args.output).get("tuning", {}).get("images"), "rows": rows}
    methods = [m for m in args.methods.split(",") if m] if args.methods else list(METHODS)
    for task in args.tasks.split(","):
        settings = method_settings(args)
        for method, value in tuning.get(task, {}).items():  # chosen on the validation images, never these
            settings[method].setdefault(GUIDANCE_OPTION[method], value)
        section["settings"][task] = settings
        operator = operator_for(task, h, w, args.sigma_y)
        y = operator.measure(truth, generator=torch.Generator().manual_seed(args.seed + 1))
        started = time.perf_counter()
        base = baseline(task, operator, y)
        base_s = (time.perf_counter() - started) / len(y)
        name = "bicubic" if task == "sr4" else "mean-fill"
        rows.append(_row("baseline", task, name, base, y, truth, labels, operator, judges, nfe=0, s_per_image=base_s))
        shown = [operator.lift(y), base]
        for method in methods:
            try:
                images, nfe, seconds = run_method(args, model, operator, y, method, settings[method], cond)
            except InverseProblemError as e:  # a method that does not apply to this task
                rows.append({"kind": "method", "task": task, "method": method, "skipped": str(e)})
                continue
            rows.append(_row("method", task, method, images, y, truth, labels, operator, judges, nfe=nfe,
                             s_per_image=seconds, baseline_s_per_image=base_s))
            shown.append(images)
            write(args, model, judges, "restore", section)
        save_grid(figures_dir(args.output) / f"{task}.png", [*shown, truth])
    write(args, model, judges, "restore", section)
    return section


def tune_section(args, model, judges) -> dict:
    """The gradient methods' step sizes chosen per task by mean PSNR on the validation images."""
    start = VALIDATION_START[model.config.data.name]
    truth, labels = held_out(model, args.n_validation, start)
    _, h, w = model.output_shape
    cond = condition(args, model, labels)
    grid = [float(v) for v in args.tune_grid.split(",")]
    section = {"images": f"{model.config.data.name} test[{start}:{start + args.n_validation}]", "grid": grid,
               "psnr": {}, "chosen": {}}
    for task in args.tasks.split(","):
        operator = operator_for(task, h, w, args.sigma_y)
        y = operator.measure(truth, generator=torch.Generator().manual_seed(args.seed + 1))
        for method, option in GUIDANCE_OPTION.items():
            curve = {}
            for value in grid:
                images, _, _ = run_method(args, model, operator, y, method, {option: value}, cond)
                curve[value] = float(scores(images, y, truth, operator).get("psnr", float("nan")))
                print(json.dumps({"task": task, "method": method, option: value, "psnr": curve[value]}),
                      file=sys.stderr, flush=True)
            section["psnr"].setdefault(task, {})[method] = curve
            finite = {v: p for v, p in curve.items() if np.isfinite(p)}  # a step size that diverged never wins
            section["chosen"].setdefault(task, {})[method] = max(finite, key=finite.get) if finite else grid[0]
            write(args, model, judges, "tuning", section)
    return section


def ccdf_section(args, model, judges) -> dict:
    truth, labels = held_out(model, args.n)
    _, h, w = model.output_shape
    cond = condition(args, model, labels)
    operator = operator_for(args.task, h, w, args.sigma_y)
    y = operator.measure(truth, generator=torch.Generator().manual_seed(args.seed + 1))
    rows = []
    section = {"task": args.task, "consistency": "pocs", "rows": rows}
    base = baseline(args.task, operator, y)
    rows.append(_row("baseline", args.task, "bicubic" if args.task == "sr4" else "mean-fill", base, y, truth,
                     labels, operator, judges, nfe=0))
    images, nfe, seconds = run_method(args, model, operator, y, "pocs", {}, cond)
    rows.append(_row("full", args.task, "pocs", images, y, truth, labels, operator, judges, nfe=nfe,
                     s_per_image=seconds, steps=args.steps))
    shown = [operator.lift(y), base, images]
    for t0 in (float(v) for v in args.t0.split(",")):
        images, nfe, seconds = run_method(args, model, operator, y, "ccdf", {"t0": t0, "consistency": "pocs"}, cond)
        rows.append(_row("ccdf", args.task, "ccdf", images, y, truth, labels, operator, judges, nfe=nfe,
                         s_per_image=seconds, t0=t0))
        shown.append(images)
        steps = max(1, round(nfe))  # the same network evaluations, spent from t = 1
        images, nfe, seconds = run_method(args, model, operator, y, "pocs", {}, cond, steps=steps)
        rows.append(_row("equal-nfe", args.task, "pocs", images, y, truth, labels, operator, judges, nfe=nfe,
                         s_per_image=seconds, steps=steps, t0=t0))
        write(args, model, judges, "ccdf", section)
    save_grid(figures_dir(args.output) / f"ccdf-{args.task}.png", [*shown, truth])
    write(args, model, judges, "ccdf", section)
    return section


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write(args, model, judges, name: str, section: dict) -> None:
    """Replace section ``name`` of the output JSON (the other sections kept), with the settings and the wall time
    since the judges were ready (the classifier's training and the FID reference's statistics not counted)."""
    data = _load(args.output)
    section["wall_s"] = round(time.perf_counter() - judges.ready, 1)
    data[name] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "run": str(args.run), "dataset": model.config.data.name, "checkpoint": str(model.checkpoint),
                  "cur_nimg": model.cur_nimg,
                  "n": args.n, "steps": args.steps, "sampler": args.sampler, "seed": args.seed,
                  "sigma_y": args.sigma_y, "class_conditional": args.class_conditional, **judges.meta,
                  "threads": torch.get_num_threads(),
                  "versions": {"python": platform.python_version(), "torch": torch.__version__}, **section}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(as_json(data), indent=1) + "\n")


def _cell(row: dict, key: str, spec: str) -> str:
    value = row.get(key)
    return "-" if value is None else format(value, spec)


def table(data: dict) -> str:
    lines = []
    tuning = data.get("tuning")
    if tuning:
        lines.append(f"tuned on {tuning['images']} by PSNR over {tuning['grid']}:")
        lines += [f"  {task}: " + ", ".join(f"{m} {GUIDANCE_OPTION[m]}={v:g}" for m, v in chosen.items())
                  for task, chosen in tuning["chosen"].items()]
        lines.append("")
    restore = data.get("restore")
    if restore:
        lines.append(f"restore: n = {restore['n']} held-out {restore.get('dataset', '')} test images, "
                     f"{restore['steps']} steps of "
                     f"{restore['sampler']}, sigma_y = {restore['sigma_y']}, {restore['threads']} threads, "
                     f"{restore.get('wall_s', 0) / 60:.1f} min in all")
        lines += ["| task | method | PSNR | SSIM | residual | accuracy | FID | NFE | s / image (baseline) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in restore["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['task']} | {r['method']} | skipped: {r['skipped']} ||||||||")
                continue
            seconds = _cell(r, "s_per_image", ".3g")
            if r.get("baseline_s_per_image") is not None:
                seconds += f" ({r['baseline_s_per_image']:.2g})"
            lines.append(f"| {r['task'] or '-'} | {r['method']} | {_cell(r, 'psnr', '.2f')} | "
                         f"{_cell(r, 'ssim', '.3f')} | {_cell(r, 'residual', '.3f')} | {_cell(r, 'accuracy', '.0%')} | "
                         f"{_cell(r, 'fid', '.1f')} | {_cell(r, 'nfe', 'g')} | {seconds} |")
    ccdf = data.get("ccdf")
    if ccdf:
        lines += ["", f"ccdf: {ccdf['task']}, n = {ccdf['n']}, full length {ccdf['steps']} steps, "
                  f"{ccdf.get('wall_s', 0) / 60:.1f} min in all",
                  "| row | t0 | PSNR | SSIM | residual | accuracy | FID | NFE | s / image |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        names = {"baseline": "{method}", "full": "pocs, {steps} steps", "ccdf": "ccdf (pocs from t0)",
                 "equal-nfe": "pocs, {steps} steps (CCDF's NFE)"}
        for r in ccdf["rows"]:
            lines.append(f"| {names[r['kind']].format(**r)} | {_cell(r, 't0', 'g')} | {_cell(r, 'psnr', '.2f')} | "
                         f"{_cell(r, 'ssim', '.3f')} | {_cell(r, 'residual', '.3f')} | {_cell(r, 'accuracy', '.0%')} | "
                         f"{_cell(r, 'fid', '.1f')} | {_cell(r, 'nfe', 'g')} | {_cell(r, 's_per_image', '.3g')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("tune", "restore", "ccdf"))
    parser.add_argument("--run", default="runs/demo", help="the prior: an MNIST or emoji run (pixel or latent)")
    parser.add_argument("--n", type=int, default=100, help="held-out test images restored")
    parser.add_argument("--n-validation", type=int, default=20, help="tune: validation images")
    parser.add_argument("--tune-grid", default="0.03,0.1,0.3,1,3", help="tune: step sizes / weights tried")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--spacing", help="time grid spacing (default: the run's)")
    parser.add_argument("--sampler", default="ddpm")
    parser.add_argument("--sigma-y", type=float, default=0.0, help="measurement noise std (images in [-1, 1])")
    parser.add_argument("--tasks", default=",".join(TASKS), help="restore: comma-separated tasks")
    parser.add_argument("--methods", help="restore: comma-separated methods (default: all of METHODS)")
    parser.add_argument("--task", default="sr4", choices=TASKS, help="ccdf: the task")
    parser.add_argument("--t0", default="0.2,0.4,0.6,0.8", help="ccdf: comma-separated start times")
    parser.add_argument("--resamples", type=int, default=3, help="repaint: resamplings per jump (paper: 10)")
    parser.add_argument("--jump-length", type=int, default=5, help="repaint: steps per jump (paper: 10)")
    parser.add_argument("--particles", type=int, default=4, help="smc: particles per image")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="another method option, e.g. dps.scale=0.5")
    parser.add_argument("--class-conditional", action="store_true",
                        help="condition on the true labels (default: the null class, unconditional)")
    parser.add_argument("--fid-reference", type=int, default=1000,
                        help="FID reference images (mnist: test[5000:6000]; emoji: at most those between the "
                             "restored and the validation images)")
    parser.add_argument("--no-fid", action="store_true")
    parser.add_argument("--no-classifier", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="results JSON (default: benchmarks/results/inverse_<dataset>.json)")
    parser.add_argument("--table", action="store_true", help="print the stored table and stop")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.run)
    if model.config.data.name not in VALIDATION_START:
        raise SystemExit(f"{args.run} is a {model.config.data.name} model; this benchmark knows the held-out splits "
                         f"of {', '.join(VALIDATION_START)}")
    args.output = args.output or default_output(model.config.data.name)
    if args.table:
        print(table(_load(args.output)))
        return 0
    judges = Judges(args, model)
    sections = {"tune": tune_section, "restore": restore_section, "ccdf": ccdf_section}
    sections[args.command or "restore"](args, model, judges)
    print(table(_load(args.output)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
