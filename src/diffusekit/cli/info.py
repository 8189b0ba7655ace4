"""``diffusekit presets`` and ``diffusekit info``: the named recipes, and what a run directory holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import PRESETS, dump_yaml, preset
from ..config import presets as presets_module
from ..errors import CheckpointError, UsageError
from ..models import verify_checkpoint
from ..monitor import read_metrics
from ..training.rundir import stored_config

__all__ = ["add_parsers", "cmd_presets", "cmd_info"]


def cmd_presets(args) -> int:
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
        network = f"{c.network.kind}:{c.network.preset}"
        print(f"{name:14s} {c.data.name:14s} {network:26s} "
              f"{c.run.total_images:>12,} img  {descriptions.get(name, '')}")
    print("\nshow one in full: diffusekit presets --show NAME", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    run_dir = Path(args.run_dir)
    config = stored_config(run_dir)
    if config is None:
        raise UsageError(f"{run_dir} is not a run directory (no config.yaml)")
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
            "samples": sorted(str(p) for p in (run_dir / "samples").glob("*.png"))[-3:],
            "latent_autoencoder": config.latent.autoencoder}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"run {run_dir}: {info['network']} on {info['data']}, {info['objective']}, "
          f"{config.run.total_images:,} images planned, {info['sessions']} session(s)")
    if config.latent.autoencoder is not None:
        print(f"  latent diffusion on the latents of the autoencoder {config.latent.autoencoder}")
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


def add_parsers(sub) -> None:
    p = sub.add_parser("presets", help="list the named presets")
    p.add_argument("--show", metavar="NAME", help="print one preset's full config as YAML")
    p.set_defaults(func=cmd_presets)

    i = sub.add_parser("info", help="summarise a run directory")
    i.add_argument("run_dir", metavar="RUN_DIR")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
