"""``diffusekit tune-grid``: time grids tuned for a trained model, its sampler and its guidance, one per NFE budget
(:mod:`diffusekit.sampling.grid_tuning`), saved as JSON for ``diffusekit sample --grid``."""

from __future__ import annotations

import json
import sys
import time

import torch

from ..errors import UsageError
from ..generate import class_major_labels, image_noise, load_model
from ..guidance import GuidanceSettings, apply_guidance, null_condition
from ..models import load_guide
from ..sampling import nfe, same_sampler, sampler_name, timesteps
from ..sampling.grid_files import TunedGrid, save_grids
from ..sampling.grid_tuning import is_deterministic, reference_samples, tune_grid
from .flags import (
    add_guidance_arguments,
    check_sampling,
    device_name,
    guidance_from_args,
    parse_options,
    positive_int,
    set_threads,
)

__all__ = ["add_parser", "cmd_tune_grid", "tune_model_grids", "steps_for_nfe"]

FIT_SEED = 7_777  # the fitting batch's images draw noise from (7777, i): no evaluation seed of the docs uses it


def steps_for_nfe(sampler: str, budget: int) -> int:
    """The steps at which ``sampler`` makes ``budget`` evaluations; ValueError if it cannot."""
    steps = (budget + 1) // 2 if nfe(sampler, 3) == 5 else budget
    if steps < 2 or nfe(sampler, steps) != budget:
        raise ValueError(f"{sampler} cannot make exactly {budget} evaluations on a grid of 2 or more steps")
    return steps


def tune_model_grids(model, budgets: list[int], *, sampler: str, options: dict, guidance: GuidanceSettings,
                     n: int, seed: int = FIT_SEED, reference_steps: int | None = 100, t_start: float | None = None,
                     max_evals: int = 100, restarts: int = 1, device: str = "cpu", log=None) -> list[TunedGrid]:
    """One tuned grid per NFE budget for ``model`` (a :class:`~diffusekit.models.LoadedModel`): ``n`` images of
    class-major labels from noise seeded by (seed, i), sampled with ``guidance`` as the run samples, fitted
    against a reference solve of the same noise (``reference_steps`` multistep steps, None: the adaptive
    ``reference_solve``). The searches start from the Karras and log-SNR grids and from the run's own spacing."""
    schedule = model.denoiser.schedule
    if not is_deterministic(sampler, options):
        raise ValueError(f"sampler {sampler!r} with {options or 'its defaults'} is stochastic: grids are tuned to "
                         "follow the probability-flow ODE; choose a deterministic sampler (multistep, dpmpp_2m, ...)")
    if guidance.weight_schedule != "constant":
        raise ValueError(f"guidance weight schedule {guidance.weight_schedule!r} follows the steps of the grid being "
                         "tuned; tune with a constant weight (--guidance-schedule constant)")
    steps = [steps_for_nfe(sampler, b) for b in budgets]
    labels = class_major_labels(n, model.num_classes) if model.num_classes else None
    if labels is None and guidance.autoguide is None:
        guidance = guidance.unguided()  # classifier-free guidance needs classes
    guide = load_guide(guidance, model.image_shape, model.num_classes, device)
    # the weight is constant, so the grid passed here only sets the guidance's step lookup, which it never uses
    denoise = apply_guidance(model.denoiser, guidance, ts=timesteps(schedule, 2), schedule=schedule,
                             null=null_condition(model.num_classes) if model.num_classes else None, guide=guide)
    cond = {} if labels is None else {"labels": labels.to(device)}
    noise = image_noise(model.image_shape, seed, 0, n).to(device)
    if t_start is None:
        t_start = float(timesteps(schedule, 2, model.config.sample.spacing)[0])
    started = time.perf_counter()
    with torch.no_grad():
        reference = reference_samples(denoise, noise, schedule, t_start, cond=cond, steps=reference_steps)
    described = (f"multistep order 3 + corrector, {reference_steps} log-SNR steps" if reference_steps
                 else "reference_solve (DOP853, 1e-10)")
    if log is not None:
        log(f"reference ({described}) from t = {t_start:g}: {time.perf_counter() - started:.1f}s")
    spacings = dict.fromkeys(["karras", "logsnr", model.config.sample.spacing])  # the run's own grid starts too
    grids = []
    for k in steps:
        starts = {name: timesteps(schedule, k, name) for name in spacings}
        result = tune_grid(denoise, noise, schedule, sampler, k, reference=reference, options=options, cond=cond,
                           t_start=t_start, starts=starts, max_evals=max_evals, restarts=restarts, log=log)
        grids.append(TunedGrid.create(
            result.times, schedule, sampler, options=dict(options),
            error={"fit_rmse": result.error, "start": result.start, "starts_fit_rmse": result.start_errors,
                   "sampler_runs": result.evaluations},
            batch={"seed": seed, "n": n, "noise": "image i from seed (seed, i), as diffusekit sample draws it",
                   "labels": "class-major" if labels is not None else "none"},
            reference=f"{described} from t = {t_start:g}",
            settings={"checkpoint": str(model.checkpoint), "weights": model.weights,
                      "guidance": guidance.describe()}))
    return grids


def cmd_tune_grid(args) -> int:
    set_threads(args)
    try:
        budgets = [int(v) for v in args.nfe.split(",")]
    except ValueError:
        raise UsageError(f"--nfe must be comma-separated integers, e.g. 5,8,10; got {args.nfe!r}") from None
    device = args.device or "cpu"
    model = load_model(args.source, ema=args.ema, device=device)
    if model.is_video:
        raise UsageError("tune-grid: video models are not supported yet")
    s = model.config.sample
    try:
        sampler = sampler_name(args.sampler or s.sampler)
    except ValueError as e:
        raise UsageError(str(e)) from None
    options = dict(s.options) if same_sampler(sampler, s.sampler) else {}
    options.update(parse_options(args.option))
    guidance = guidance_from_args(args, s)
    check_sampling(model.denoiser.schedule, sampler, 2, "karras", options)
    started = time.perf_counter()
    log = None if args.quiet else (lambda message: print(f"[{time.perf_counter() - started:6.1f}s] {message}",
                                                          file=sys.stderr, flush=True))
    try:
        grids = tune_model_grids(model, budgets, sampler=sampler, options=options, guidance=guidance, n=args.n,
                                 seed=args.seed, reference_steps=args.reference_steps or None,
                                 t_start=args.t_start, max_evals=args.max_evals, restarts=args.restarts,
                                 device=device, log=log)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    save_grids(grids, args.out)
    summary = {"out": args.out, "sampler": sampler, "grids": [
        {"nfe": g.nfe, "steps": g.steps, "fit_rmse": g.error["fit_rmse"], "start": g.error["start"],
         "starts_fit_rmse": g.error["starts_fit_rmse"]} for g in grids],
        "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary), file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("tune-grid", help="fit a sampler's time grid to a trained model, one per NFE budget "
                       "(docs/samplers.md); use it with `sample --grid`")
    s.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT")
    s.add_argument("--nfe", required=True, help="comma-separated NFE budgets, e.g. 5,8,10")
    s.add_argument("--out", required=True, help="the grids' JSON file")
    s.add_argument("--sampler", help="a deterministic sampler (default: the run's sample.sampler)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler option (default: the run's sample.options for its own sampler)")
    s.add_argument("--n", type=positive_int, default=256, help="images in the fitting batch (class-major labels)")
    s.add_argument("--seed", type=int, default=FIT_SEED,
                   help=f"the fitting batch's noise seed (default {FIT_SEED}); evaluate on other seeds")
    s.add_argument("--reference-steps", type=int, default=100, metavar="K",
                   help="reference: multistep order 3 with the corrector, K log-SNR steps (default 100); 0: the "
                        "adaptive DOP853 solve at 1e-10 (exact, but thousands of network calls)")
    s.add_argument("--t-start", type=float, metavar="T",
                   help="the grids' first time (default: where the run's spacing starts, t = 1 for uniform)")
    s.add_argument("--max-evals", type=positive_int, default=100,
                   help="sampler runs per Nelder-Mead search (default 100); one search per start grid (Karras, "
                        "log-SNR, the run's spacing) and restart")
    s.add_argument("--restarts", type=int, default=1, metavar="R",
                   help="restarts of each search from where it stopped, with a fresh simplex (default 1)")
    add_guidance_arguments(s)
    s.add_argument("--ema", help="EMA name, or 'model' for the raw weights (default: the run's sample.ema / first EMA)")
    s.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N")
    s.add_argument("--threads", type=positive_int)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_tune_grid)
