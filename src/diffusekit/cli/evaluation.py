"""``diffusekit fid | ref-stats | eval``: FID between image sets, reference statistics, a model's metrics."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .. import distributed
from ..config import DataConfig
from ..data import load_training_data
from ..errors import UsageError
from ..generate import class_major_labels, load_model
from ..images import save_png
from ..metrics import inception
from ..metrics.evaluate import (
    METRICS,
    SamplingSettings,
    as_json,
    distributed_evaluation_features,
    feature_metrics,
    memorization_metrics,
    preview_grid,
    reference_for_data,
    sample_for_evaluation,
)
from ..metrics.features import array_batches, compute_stats, open_source
from ..metrics.fid import fid_from_stats
from ..metrics.likelihood import (
    CONDITIONS,
    LIKELIHOOD_METRICS,
    LikelihoodSettings,
    check_likelihood_model,
    likelihood_metrics,
)
from ..metrics.stats import load_stats
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

__all__ = ["add_parsers", "cmd_fid", "cmd_ref_stats", "cmd_eval"]

MEMORIZATION_RESOLUTION = 96  # inception-fast input for feature-space copies: 60k MNIST in ~16 min on 2 CPU cores


def _extractor(args, name: str | None = None, device: str | None = None):
    return inception.get_extractor(name or args.extractor, args.preprocess, args.resolution,
                         device=device or args.device or "cpu")


def _print(result: dict, json_output: bool, lines: list[str]) -> None:
    if json_output:
        print(json.dumps(as_json(result), indent=1))
    else:
        print("\n".join(lines))


def _stats_of(source: str, extractor, args, label: str):
    opened = open_source(source, args.batch_size)
    if opened[0] == "stats":
        return opened[1]
    _, count, batches = opened
    with progress_bar(count, args.quiet, f"{label} features") as bar:
        # small sets keep their features: the Frechet trace then comes from an n x n SVD (fid.py)
        return compute_stats(extractor, batches, keep_features=count <= extractor.dim, progress=bar.update,
                             source=str(source))


def cmd_fid(args) -> int:
    set_threads(args)
    started = time.perf_counter()
    extractor = _extractor(args)
    a = _stats_of(args.a, extractor, args, "A")
    b = _stats_of(args.b, extractor, args, "B")
    for stats, source in ((a, args.a), (b, args.b)):
        if stats.meta.get("config_hash") not in (None, extractor.config_hash):
            raise UsageError(f"{source} was computed with other settings ({stats.describe()}) than "
                             f"--extractor {args.extractor} --preprocess {args.preprocess}: pass those, or recompute")
    value = fid_from_stats(a, b)
    result = {"fid": value, "a": args.a, "b": args.b, "n_a": a.count, "n_b": b.count, **extractor.describe(),
              "seconds": round(time.perf_counter() - started, 2)}
    note = "" if extractor.comparable else "  (not comparable to published FIDs)"
    _print(result, args.json, [f"FID: {value:.4f}{note}"])
    return 0


def cmd_ref_stats(args) -> int:
    set_threads(args)
    out = Path(args.out)
    if out.suffix.lower() != ".npz":
        raise UsageError(f"--out {out}: statistics are written as .npz")
    data = load_training_data(DataConfig(name=args.dataset, split=args.split, limit=args.n,
                                         resolution=args.data_resolution, channels=args.channels, resize=args.resize))
    extractor = _extractor(args)
    started = time.perf_counter()
    with progress_bar(len(data), args.quiet, f"{args.dataset}:{args.split} features") as bar:
        stats = compute_stats(extractor, array_batches(data.images, args.batch_size, nhwc=True),
                              progress=bar.update, dataset=str(args.dataset), split=args.split,
                              resolution=int(data.images.shape[1]), channels=int(data.images.shape[3]))
    stats.save(out, include_features=not args.no_features)
    result = {"out": str(out), "count": stats.count, **extractor.describe(),
              "seconds": round(time.perf_counter() - started, 2)}
    _print(result, args.json, [f"wrote {out}: {stats.describe()}"])
    return 0


def _eval_out_dir(args, model) -> Path:
    if args.out:
        out = Path(args.out)
        for path in (out, *out.parents):  # checked before sampling, not after minutes of it
            if path.exists() and not path.is_dir():
                raise UsageError(f"--out {out}: {path} is a file, not a directory; --out names the directory for "
                                 f"results.json and samples.png")
        return out
    checkpoint = Path(model.checkpoint)
    run_dir = checkpoint.parent.parent if checkpoint.parent.name in ("checkpoints", "best") else checkpoint.parent
    return run_dir / "eval" / f"{checkpoint.name}-{model.weights}"


def cmd_eval(args) -> int:
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    known = METRICS + LIKELIHOOD_METRICS
    unknown = sorted(set(metrics) - set(known))
    if unknown or not metrics:
        raise UsageError(f"--metrics: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    set_threads(args)
    context = distributed.init(args.device or "cpu")  # under torchrun: each process draws a share of the samples
    try:
        return _evaluate(args, metrics, context)
    finally:
        distributed.shutdown()


def _evaluate(args, metrics: tuple[str, ...], context) -> int:

    device = distributed.device_for(args.device or "cpu")
    model = load_model(args.source, ema=args.ema, device=device)
    model.require_images("diffusekit eval")
    likelihoods = _likelihoods(args, model, metrics, context, device)  # first: refuses a model without a likelihood
    if not any(m in METRICS for m in metrics):
        return _write_likelihoods(args, model, likelihoods, context)
    options = parse_options(args.option)
    settings = SamplingSettings.from_config(model.config.sample, sampler=args.sampler, steps=args.steps,
                                            spacing=args.spacing,
                                            guidance=guidance_from_args(args, model.config.sample),
                                            options=options or None, seed=args.seed, batch_size=args.batch_size)
    check_sampling(model.denoiser.schedule, settings.sampler, settings.steps, settings.spacing, settings.options)
    g = settings.guidance
    if g.active and g.autoguide is None and not model.num_classes:
        raise UsageError(f"--guidance {g.scale}: classifier-free guidance needs a conditional model and "
                         f"{model.checkpoint} has no classes; use --guidance 1, or --autoguide CHECKPOINT "
                         "(autoguidance works without labels)")
    out_dir = _eval_out_dir(args, model)
    started = time.perf_counter()
    quiet = args.quiet or not context.main
    with progress_bar(args.n, quiet, "sampling") as bar:
        images, _, index = sample_for_evaluation(model.denoiser, model.image_shape, model.num_classes, args.n,
                                                 settings, device=device, rank=context.rank,
                                                 world_size=context.world_size, progress=bar.update,
                                                 decode=model.decode)
    sampling_s = time.perf_counter() - started
    feature_names = tuple(m for m in metrics if m in METRICS and m != "memorization")
    extractor = _extractor(args, device=device) if feature_names else None
    with progress_bar(args.n, quiet or extractor is None, "sample features") as bar:
        images, features = distributed_evaluation_features(images, index, extractor,
                                                           batch_size=args.feature_batch_size, progress=bar.update)
    if not context.main:  # process 0 scores the gathered samples and writes the results
        return 0
    labels = class_major_labels(args.n, model.num_classes) if model.num_classes else None
    out_dir.mkdir(parents=True, exist_ok=True)
    save_png(preview_grid(images, labels), out_dir / "samples.png")
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    result: dict = {"checkpoint": str(model.checkpoint), "cur_nimg": model.cur_nimg, "weights": model.weights,
                    "n": args.n, **settings.describe(), "sampling_s": round(sampling_s, 2),
                    "processes": context.world_size}
    if feature_names:
        if args.ref:
            reference = load_stats(args.ref)
        else:
            count = args.ref_n or args.n
            with progress_bar(count, args.quiet, "reference features") as bar:
                reference = reference_for_data(model.config.data, extractor, count, args.ref_split,
                                               batch_size=args.feature_batch_size, progress=bar.update, log=log)
        values, _ = feature_metrics(images, feature_names, reference, extractor, features=features)
        result.update(values)
    if "memorization" in metrics:
        extractor = None
        if args.memorization_space != "pixel":
            extractor = inception.get_extractor("inception-fast", args.preprocess, MEMORIZATION_RESOLUTION, device)
        result["memorization"] = memorization_metrics(images, model.config.data, feature_extractor=extractor,
                                                      out_dir=out_dir, batch_size=args.feature_batch_size, log=log)
    result.update(likelihoods)
    result["seconds"] = round(time.perf_counter() - started, 2)
    (out_dir / "results.json").write_text(json.dumps(as_json(result), indent=1))
    result["out_dir"] = str(out_dir)
    lines = [f"{model.checkpoint} ({model.weights}, {model.cur_nimg:,} images), {args.n} samples, "
             f"{settings.sampler} {settings.steps} steps, guidance {settings.guidance.describe()}"]
    if "fid" in result:
        lines.append(f"FID {result['fid']:.3f}" + ("" if result["comparable_to_published"] else " (not comparable)"))
    if "kid" in result:
        lines.append(f"KID {result['kid']:.5f} +- {result['kid_std']:.5f}")
    if "precision" in result:
        lines.append(f"precision {result['precision']:.3f}, recall {result['recall']:.3f}")
    for space, summary in result.get("memorization", {}).items():
        lines.append(f"memorization ({space}): {summary['flagged']}/{summary['n']} flagged "
                     f"({100 * summary['fraction']:.1f}%), median d1/d2 {summary['ratio_quantiles']['p50']:.3f}")
    lines.extend(_likelihood_lines(likelihoods))
    lines.append(f"results in {out_dir}")
    _print(result, args.json, lines)
    return 0


def _likelihood_settings(args) -> LikelihoodSettings:
    return LikelihoodSettings(n=args.nll_n, batch_size=args.nll_batch_size, cond=args.nll_cond, seed=args.seed,
                              rtol=args.nll_rtol, atol=args.nll_atol, divergence=args.nll_divergence,
                              probes=args.nll_probes, nll_t_min=args.nll_t_min, samples=args.elbo_samples,
                              time=args.elbo_time, nodes=args.elbo_nodes, elbo_t_min=args.elbo_t_min)


def _likelihoods(args, model, metrics: tuple[str, ...], context, device) -> dict:
    """The nll / elbo results on the held-out images, computed by process 0 (empty when none is asked for)."""
    names = tuple(m for m in metrics if m in LIKELIHOOD_METRICS)
    if not names:
        return {}
    settings = _likelihood_settings(args)
    check_likelihood_model(model, settings.cond)
    if not context.main:
        return {}
    bars = {name: progress_bar(settings.n, args.quiet, f"{name} (bits/dim)") for name in names}
    try:
        return likelihood_metrics(model, names, settings, device=device,
                                  progress=lambda name, count: bars[name].update(count))
    finally:
        for bar in bars.values():
            bar.close()


def _write_likelihoods(args, model, values: dict, context) -> int:
    """results.json of an evaluation with likelihood metrics only (no sampling)."""
    if not context.main:
        return 0
    out_dir = _eval_out_dir(args, model)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(model.checkpoint), "cur_nimg": model.cur_nimg, "weights": model.weights, **values}
    (out_dir / "results.json").write_text(json.dumps(as_json(result), indent=1))
    result["out_dir"] = str(out_dir)
    lines = [f"{model.checkpoint} ({model.weights}, {model.cur_nimg:,} images)", *_likelihood_lines(values),
             f"results in {out_dir}"]
    _print(result, args.json, lines)
    return 0


def _likelihood_lines(values: dict) -> list[str]:
    lines = []
    for name, summary in values.items():
        parts = ", ".join(f"{key[:-4]} {summary[key]:.3f}" for key in summary
                          if key.endswith("_bpd") and key not in ("mc_stderr_bpd",))
        lines.append(f"{name}: {summary['bpd']:.4f} +- {summary['bpd_stderr']:.4f} bits/dim on {summary['n']} "
                     f"{summary['split']} images ({summary['dequantization']} dequantisation; {parts})")
    return lines


def _extractor_arguments(parser, default_extractor: str = "inception") -> None:
    parser.add_argument("--extractor", default=default_extractor, choices=("inception", "inception-fast"),
                        help="inception: the standard FID network at 299 (default); inception-fast: the same at "
                             "--resolution (default 128), several times cheaper, NOT comparable to published FIDs")
    parser.add_argument("--preprocess", default="pytorch", choices=("pytorch", "tf"),
                        help="pytorch: pytorch-fid's bilinear resize and [-1, 1] (default); tf: NVlabs/clean-fid "
                             "legacy TF resize and range")
    parser.add_argument("--resolution", type=positive_int, help="input size of inception-fast")
    parser.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parsers(sub) -> None:
    f = sub.add_parser("fid", help="FID between two image folders, sample .npz files or statistics .npz files",
                       description="Frechet Inception Distance between A and B, each an image folder, a sample file "
                                   "from `diffusekit sample --out X.npz`, or statistics from `diffusekit ref-stats` "
                                   "(pytorch-fid's .npz files work too). About 4 img/s on 2 CPU cores at 299.")
    f.add_argument("a", metavar="A")
    f.add_argument("b", metavar="B")
    f.add_argument("--batch-size", type=positive_int, default=50)
    _extractor_arguments(f)
    f.set_defaults(func=cmd_fid)

    r = sub.add_parser("ref-stats", help="feature statistics of a dataset (for FID/KID references)",
                       description="Write mean, covariance and features of a dataset's images as .npz, with metadata "
                                   "(dataset, split, resolution, count, extractor, preprocessing hash).")
    r.add_argument("dataset", metavar="DATASET", help="built-in dataset name or an image folder")
    r.add_argument("--out", required=True, metavar="STATS.npz")
    r.add_argument("--split", default="train", help="train or test (folders: train)")
    r.add_argument("--n", type=positive_int, help="use the first N images (default: all)")
    r.add_argument("--data-resolution", type=positive_int,
                   help="resize the images to this size first (folders need it)")
    r.add_argument("--channels", type=int, choices=(1, 3))
    r.add_argument("--resize", default="resize", choices=("resize", "pad"))
    r.add_argument("--no-features", action="store_true", help="store only mean and covariance (no KID / P-R)")
    r.add_argument("--batch-size", type=positive_int, default=50)
    _extractor_arguments(r)
    r.set_defaults(func=cmd_ref_stats)

    e = sub.add_parser("eval", help="sample from a run or checkpoint and compute FID / KID / memorization",
                       description="Draw --n samples (image i from noise seeded by (seed, i), classes balanced), then "
                                   "compute the metrics. Without --ref the reference is the first --ref-n images "
                                   "(default --n) of the run's dataset, split --ref-split, cached. Memorization "
                                   "compares with the whole training set. Results go to --out (default "
                                   "RUN/eval/<checkpoint>-<weights>/).")
    e.add_argument("source", metavar="RUN_OR_CKPT")
    e.add_argument("--metrics", default="fid,kid",
                   help="comma-separated: fid, kid, precision_recall, memorization, nll, elbo (bits/dim of held-out "
                        "images: PF-ODE likelihood, variational bound)")
    e.add_argument("--n", type=positive_int, default=1000, help="number of samples (default 1000)")
    e.add_argument("--sampler")
    e.add_argument("--steps", type=positive_int)
    e.add_argument("--spacing")
    add_guidance_arguments(e)
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="sampler option")
    e.add_argument("--ema", help="EMA name, or 'model' for the raw weights")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=positive_int, default=250, help="sampling batch size")
    e.add_argument("--feature-batch-size", type=positive_int, default=50)
    e.add_argument("--ref", metavar="STATS.npz", help="reference statistics (from `diffusekit ref-stats`)")
    e.add_argument("--ref-split", default="test", help="split of the run's dataset used as reference (default test)")
    e.add_argument("--ref-n", type=positive_int, help="reference images (default: --n)")
    e.add_argument("--memorization-space", default="both", choices=("pixel", "both"),
                   help="both: pixels and inception-fast-96 features (training features computed once, cached)")
    e.add_argument("--out", help="directory for results.json, samples.png and memorization grids")
    _likelihood_arguments(e)
    _extractor_arguments(e)
    e.set_defaults(func=cmd_eval)


def _likelihood_arguments(e) -> None:
    defaults = LikelihoodSettings()
    e.add_argument("--nll-n", type=positive_int, default=defaults.n,
                   help=f"nll / elbo: held-out images (the run's test split; default {defaults.n})")
    e.add_argument("--nll-batch-size", type=positive_int, default=defaults.batch_size,
                   help=f"nll / elbo: images per batch (default {defaults.batch_size})")
    e.add_argument("--nll-cond", default=defaults.cond, choices=CONDITIONS,
                   help="class-conditional models: label: -log p(x | y) (default); null: unconditional through the "
                        "null label (needs objective.p_uncond > 0)")
    e.add_argument("--nll-rtol", type=float, default=defaults.rtol, help="nll: the ODE solver's relative tolerance")
    e.add_argument("--nll-atol", type=float, default=defaults.atol, help="nll: the ODE solver's absolute tolerance")
    e.add_argument("--nll-divergence", default=defaults.divergence, choices=("exact", "hutchinson"),
                   help="nll: Hutchinson's estimate (default) or the exact divergence (D vector-Jacobian products "
                   "per solver step: small data only)")
    e.add_argument("--nll-probes", type=positive_int, default=defaults.probes,
                   help="nll: Hutchinson probes per step (default 1)")
    e.add_argument("--nll-t-min", type=float, help="nll: where the ODE stops (default: ode_nll's)")
    e.add_argument("--elbo-samples", type=positive_int, default=defaults.samples,
                   help=f"elbo: noise draws per image (default {defaults.samples})")
    e.add_argument("--elbo-time", default=defaults.time, choices=("quadrature", "low_discrepancy", "uniform"),
                   help="elbo: the time integral by log-SNR quadrature (default) or Monte Carlo in t")
    e.add_argument("--elbo-nodes", type=positive_int, default=defaults.nodes,
                   help=f"elbo: quadrature points, a multiple of 8 (default {defaults.nodes})")
    e.add_argument("--elbo-t-min", type=float, help="elbo: the lower end of the time window (default: sigma / alpha "
                                                    "= 1e-3)")
