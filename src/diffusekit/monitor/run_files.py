"""A run directory read back for reporting: its logs split by kind, its sample grids, evaluations and sweeps.

Only files are read (``config.yaml`` as YAML, never through the config schema), so that a run written by an
older or newer diffusekit, or one still training, can be shown. What cannot be read is kept as a note in
:attr:`RunFiles.problems` instead of failing: a report of a live run must survive a file being rewritten.

The records of ``metrics.jsonl`` (see :mod:`diffusekit.training.rundir`) are told apart by their keys:

- a training log: ``loss``, ``lr``, ``img_per_s``, ``peak_rss_mb`` ... (an autoencoder adds ``ae/...``);
- per-noise-level losses: ``noise/{train,val,gap}/<bin>`` and ``.../mean`` (``eval.loss_every``);
- reconstruction quality of an autoencoder: ``reconstruction/{train,val}/{psnr,l1,kl}``;
- sample metrics: ``fid``, ``kid``, ``best_fid``, ``best_nimg`` (``eval.every``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import MissingFileError, UsageError
from .metrics import read_metrics

__all__ = ["RunFiles", "read_run", "SWEEP_FILE"]

SWEEP_FILE = Path("posthoc") / "sweep.json"  # the post-hoc EMA sweep: {"rows": [...], "best": {...}}
_GRID = re.compile(r"grid-(\d+)\.png")


@dataclass
class RunFiles:
    """What a run directory holds, as plain Python values; every list is in training order."""

    path: Path
    config_text: str | None = None  # config.yaml as written
    config: dict = field(default_factory=dict)  # the same, parsed ({} when missing or unreadable)
    sessions: list[dict] = field(default_factory=list)  # environment.json: one entry per start or resume
    logs: list[dict] = field(default_factory=list)  # training log records
    noise: list[dict] = field(default_factory=list)  # per-noise-level loss records
    reconstruction: list[dict] = field(default_factory=list)  # an autoencoder's reconstruction records
    evaluations: list[dict] = field(default_factory=list)  # FID / KID records
    grids: list[tuple[int, Path]] = field(default_factory=list)  # (training images, samples/grid-*.png)
    animation: Path | None = None  # samples.gif of a video run
    eval_results: list[tuple[str, dict, Path]] = field(default_factory=list)  # eval/<name>/results.json
    sweep: dict | None = None  # posthoc/sweep.json
    problems: list[str] = field(default_factory=list)  # files that exist but could not be read

    def setting(self, dotted: str, default=None):
        """A config value by its dotted key (``"eval.loss_every"``), ``default`` when absent."""
        value = self.config
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    @property
    def kind(self) -> str:
        """``"autoencoder"``, ``"video"``, ``"latent"`` or ``"image"``."""
        if self.setting("network.kind") == "autoencoder":
            return "autoencoder"
        if self.setting("video.frames") is not None:
            return "video"
        if self.setting("latent.autoencoder") is not None:
            return "latent"
        return "image"

    @property
    def cur_nimg(self) -> int:
        """Training images of the newest record (0 before the first log)."""
        records = self.logs + self.noise + self.reconstruction + self.evaluations
        return max((int(r["cur_nimg"]) for r in records), default=0)

    @property
    def empty(self) -> bool:
        return not (self.logs or self.noise or self.reconstruction or self.evaluations or self.grids)


def _is_run_directory(path: Path) -> bool:
    return any((path / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints"))


def _classify(records: list[dict], run: RunFiles) -> None:
    for record in records:
        if not isinstance(record.get("cur_nimg"), int | float):
            continue
        keys = record.keys()
        if any(k.startswith("noise/") for k in keys):
            run.noise.append(record)
        elif any(k.startswith("reconstruction/") for k in keys):
            run.reconstruction.append(record)
        elif "fid" in record or "kid" in record:
            run.evaluations.append(record)
        else:
            run.logs.append(record)


def _read_json(path: Path, run: RunFiles):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        run.problems.append(f"{path.relative_to(run.path)}: unreadable ({e})")
        return None


def _read_sweep(path: Path, run: RunFiles) -> dict | None:
    """The sweep file, checked for the fields a chart needs; a malformed one becomes a problem note."""
    data = _read_json(path, run)
    if data is None:
        return None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("sigma_rel"), int | float)
                                             and isinstance(r.get("fid"), int | float) for r in rows):
        run.problems.append(f"{SWEEP_FILE}: expected {{\"rows\": [{{\"sigma_rel\": ..., \"fid\": ...}}, ...]}}")
        return None
    best = data.get("best")
    return {"rows": sorted(rows, key=lambda r: r["sigma_rel"]), "best": best if isinstance(best, dict) else None}


def read_run(path: str | Path) -> RunFiles:
    """Read the run directory ``path``. Raises MissingFileError when it does not exist and UsageError when it holds
    none of ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/`` (not a run directory)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such run directory")
    if not path.is_dir() or not _is_run_directory(path):
        raise UsageError(f"{path} is not a run directory (no config.yaml, metrics.jsonl or checkpoints/); "
                         "give the --run-dir of `diffusekit train`")
    run = RunFiles(path)
    config_path = path / "config.yaml"
    if config_path.exists():
        try:
            run.config_text = config_path.read_text(encoding="utf-8")
            parsed = yaml.safe_load(run.config_text)
            run.config = parsed if isinstance(parsed, dict) else {}
        except (OSError, ValueError, yaml.YAMLError) as e:
            run.problems.append(f"config.yaml: unreadable ({str(e).splitlines()[0]})")
    env_path = path / "environment.json"
    if env_path.exists():
        env = _read_json(env_path, run)
        sessions = env.get("sessions") if isinstance(env, dict) else None
        run.sessions = [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []
    try:
        _classify(read_metrics(path / "metrics.jsonl"), run)
    except (OSError, ValueError) as e:
        run.problems.append(f"metrics.jsonl: {e}")
    for grid in (path / "samples").glob("grid-*.png"):
        match = _GRID.fullmatch(grid.name)
        if match:
            run.grids.append((int(match.group(1)), grid))
    run.grids.sort()
    if (path / "samples.gif").is_file():
        run.animation = path / "samples.gif"
    for results in sorted((path / "eval").glob("*/results.json")):
        data = _read_json(results, run)
        if isinstance(data, dict):
            run.eval_results.append((results.parent.name, data, results.parent))
    if (path / SWEEP_FILE).exists():
        run.sweep = _read_sweep(path / SWEEP_FILE, run)
    return run
