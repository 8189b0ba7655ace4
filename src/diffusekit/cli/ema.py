"""``diffusekit ema``: post-hoc EMA reconstructions of a run trained with ``ema.posthoc`` (docs/ema.md).

``--sigma-rel`` writes the reconstructions as a checkpoint that ``diffusekit sample`` / ``eval`` load (``--ema
phema_0p100``); ``--sweep`` scores each length by FID/KID on the same seeds, prints a table, writes
``<run>/posthoc/sweep.json`` and keeps the best one as a checkpoint.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from ..config import Config, from_dict
from ..data import DATASETS
from ..metrics.evaluate import as_json, reference_for_data
from ..models import load_checkpoint
from ..models.load import resolve_checkpoint
from ..posthoc_ema import half_life_of_sigma_rel
from ..training.posthoc import posthoc_directory, reconstruct, reconstructed_name, score_weights, write_reconstruction
from .evaluation import _extractor, _extractor_arguments
from .flags import positive_int, progress_bar, set_threads

__all__ = ["add_parser", "cmd_ema"]


def _describe(reconstruction, name: str) -> str:
    error = reconstruction.profile_errors[name]
    return f"{name}: profile error {100 * error:.2f}% (relative L2)"


def _reconstruct(args) -> int:
    result = reconstruct(args.run, args.sigma_rel, args.at)
    path = write_reconstruction(args.run, result, args.out)
    print(f"{len(result.snapshots)} snapshots up to {result.cur_nimg:,} images -> {path}")
    for sigma_rel in args.sigma_rel:
        name = reconstructed_name(sigma_rel)
        half_life = half_life_of_sigma_rel(sigma_rel, result.cur_nimg)
        print(f"  {_describe(result, name)}; like an EMA of half-life {half_life:,.0f} images")
    print(f"sample with: diffusekit sample {path} --ema {reconstructed_name(args.sigma_rel[0])} --out samples.png")
    return 0


def _sweep(args) -> int:
    set_threads(args)
    run = Path(args.run)
    result = reconstruct(run, args.sweep, args.at)
    scratch = write_reconstruction(run, result, posthoc_directory(run) / ".sweep")
    try:
        _, _, _, state = load_checkpoint(resolve_checkpoint(run))
        data = from_dict(Config, state["config"]).data
        extractor = _extractor(args)
        with progress_bar(args.n, args.quiet, "reference features") as bar:
            reference = reference_for_data(data, extractor, args.n, args.split, progress=bar.update)
        split = args.split if data.name in DATASETS else "train"
        rows = []
        for sigma_rel in args.sweep:
            name = reconstructed_name(sigma_rel)
            with progress_bar(args.n, args.quiet, f"sampling {name}") as bar:
                row = score_weights(scratch, name, reference, extractor, args.n, seed=args.seed,
                                    device=args.device or "cpu", batch_size=args.batch_size, progress=bar.update)
            rows.append({"sigma_rel": sigma_rel, **row, "profile_error": result.profile_errors[name],
                         "reference": f"{data.name}:{split}[0:{args.n}]"})
        best = min(rows, key=lambda r: r["fid"])
        kept = write_reconstruction(run, result, args.out or posthoc_directory(run) / "best", [best["weights"]])
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)
    summary = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "run": str(run), "cur_nimg": result.cur_nimg, "snapshots": len(result.snapshots), "seed": args.seed,
               "rows": rows, "best": {"sigma_rel": best["sigma_rel"], "fid": best["fid"], "weights": best["weights"],
                                      "checkpoint": str(kept)}}
    out = posthoc_directory(run) / "sweep.json"
    tmp = out.with_name(".sweep.json.tmp")
    tmp.write_text(json.dumps(as_json(summary), indent=1))
    tmp.replace(out)
    if args.json:
        print(json.dumps(as_json(summary), indent=1))
        return 0
    lines = [f"post-hoc EMA of {run} at {result.cur_nimg:,} images ({len(result.snapshots)} snapshots), {args.n} "
             f"samples, reference {rows[0]['reference']}, {rows[0]['extractor']}",
             "| sigma_rel | half-life (images) | FID | KID | profile error |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sigma_rel']:.3f} | {half_life_of_sigma_rel(r['sigma_rel'], result.cur_nimg):,.0f} | "
                     f"{r['fid']:.3f} | {r['kid']:.5f} | {100 * r['profile_error']:.2f}% |")
    lines += [f"best: sigma_rel {best['sigma_rel']} (FID {best['fid']:.3f}) -> {kept} --ema {best['weights']}",
              f"table: {out}"]
    print("\n".join(lines))
    return 0


def cmd_ema(args) -> int:
    return _sweep(args) if args.sweep else _reconstruct(args)


def add_parser(sub) -> None:
    p = sub.add_parser("ema", help="post-hoc EMA: reconstruct EMAs of any length from a run's snapshots, or sweep "
                                   "them by FID",
                       description="Reconstruct power-function EMAs of relative length sigma_rel (EDM2) from the "
                                   "snapshots of a run trained with ema.posthoc=true, as a checkpoint with EMAs named "
                                   "phema_<sigma_rel> (e.g. phema_0p100) that `diffusekit sample` and `diffusekit "
                                   "eval` load with --ema. --sweep scores each length by FID/KID (the same seeds for "
                                   "all), writes RUN/posthoc/sweep.json and keeps the best. docs/ema.md.")
    p.add_argument("run", metavar="RUN", help="a run directory trained with ema.posthoc=true")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--sigma-rel", type=float, nargs="+", metavar="S",
                      help="relative EMA lengths to reconstruct, in (0, 0.2887], e.g. 0.05 0.1 0.2")
    what.add_argument("--sweep", type=float, nargs="+", metavar="S", help="relative EMA lengths to score by FID")
    p.add_argument("--at", type=positive_int, metavar="IMAGES",
                   help="the averages end at this image count (default: the last snapshot)")
    p.add_argument("--out", metavar="DIR", help="directory the checkpoint ckpt-<images>/ is written in (default "
                                                "RUN/posthoc/reconstructed, or RUN/posthoc/best for --sweep)")
    p.add_argument("--n", type=positive_int, default=1000, help="--sweep: samples per length and reference images "
                                                               "(default 1000)")
    p.add_argument("--split", default="test", help="--sweep: the split of the run's dataset the reference comes "
                                                   "from (default test)")
    p.add_argument("--seed", type=int, default=0, help="--sweep: sample i is drawn from noise seeded by (seed, i)")
    p.add_argument("--batch-size", type=positive_int, default=250, help="--sweep: sampling batch size")
    _extractor_arguments(p)
    p.set_defaults(func=cmd_ema)
