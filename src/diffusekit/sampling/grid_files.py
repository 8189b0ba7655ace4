"""Tuned time grids as JSON files: the times and where they came from.

A file holds one grid per NFE budget::

    {"format": "diffusekit-grids", "version": 1,
     "grids": [{"sampler": "multistep", "options": {"order": 2}, "nfe": 5, "steps": 5,
                "times": [1.0, ..., 0.0],                 # steps + 1, strictly decreasing, ending in 0
                "logsnr": [...],                          # the schedule's log-SNR at the nonzero times
                "schedule": "RectifiedFlow()",
                "error": {"fit_rmse": ..., "starts": {"karras": ..., "logsnr": ...}},
                "batch": {"seed": ..., "n": ...}, "reference": "...", ...}]}

``logsnr`` identifies the noise levels the grid was tuned for: a model whose schedule puts other levels at
those times (another schedule) is refused, since the same times would mean other steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..errors import BadFileError
from ..schedules import Schedule
from . import SAMPLERS, nfe
from .grid import check_grid

__all__ = ["TunedGrid", "save_grids", "load_grids", "select_grid", "FORMAT"]

FORMAT = "diffusekit-grids"
VERSION = 1
LOGSNR_TOLERANCE = 1e-6  # absolute, on log-SNR: float64 round trips of one schedule agree far below it


@dataclass
class TunedGrid:
    sampler: str
    nfe: int
    steps: int
    times: list[float]
    logsnr: list[float]
    schedule: str
    options: dict = field(default_factory=dict)
    error: dict = field(default_factory=dict)
    batch: dict = field(default_factory=dict)
    reference: str = ""
    settings: dict = field(default_factory=dict)  # guidance, labels, the run: what the tuning sampled with

    @classmethod
    def create(cls, times: Tensor, schedule: Schedule, sampler: str, **provenance) -> TunedGrid:
        ts = check_grid(times)
        logsnr = schedule.logsnr(ts[:-1]).tolist()
        return cls(sampler=sampler, nfe=nfe(sampler, len(ts) - 1), steps=len(ts) - 1, times=ts.tolist(),
                   logsnr=logsnr, schedule=repr(schedule)[:300], **provenance)

    def ts(self) -> Tensor:
        return torch.tensor(self.times, dtype=torch.float64)

    def check_schedule(self, schedule: Schedule) -> None:
        """ValueError unless ``schedule`` puts the grid's times at the noise levels it was tuned for."""
        got = schedule.logsnr(self.ts()[:-1]).tolist()
        pairs = zip(got, self.logsnr, strict=True)  # -inf at t = 1 of a zero-terminal-SNR schedule matches itself
        worst = max(abs(a - b) if math.isfinite(a) or math.isfinite(b) else 0.0 for a, b in pairs)
        if not worst <= LOGSNR_TOLERANCE:
            raise ValueError(f"the {self.nfe}-NFE grid was tuned for another schedule ({self.schedule}): "
                             f"{schedule!r} puts its times at other noise levels (log-SNR off by {worst:.3g})")


def save_grids(grids: list[TunedGrid], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": FORMAT, "version": VERSION, "grids": [_jsonable(asdict(g)) for g in grids]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(path)


def _jsonable(value):
    """Infinite floats (log-SNR at t = 1 of a zero-terminal-SNR schedule) as the strings 'inf' / '-inf'."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _number(value, where: str) -> float:
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadFileError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _parse_grid(entry, where: str) -> TunedGrid:
    if not isinstance(entry, dict):
        raise BadFileError(f"{where}: a grid must be an object, got {type(entry).__name__}")
    missing = [k for k in ("sampler", "nfe", "steps", "times", "logsnr") if k not in entry]
    if missing:
        raise BadFileError(f"{where}: missing {', '.join(missing)}")
    sampler = entry["sampler"]
    if sampler not in SAMPLERS:
        raise BadFileError(f"{where}: unknown sampler {sampler!r}")
    if not isinstance(entry["times"], list) or not isinstance(entry["logsnr"], list):
        raise BadFileError(f"{where}: times and logsnr must be lists of numbers")
    times = [_number(t, f"{where} times") for t in entry["times"]]
    logsnr = [_number(v, f"{where} logsnr") for v in entry["logsnr"]]
    try:
        check_grid(torch.tensor(times, dtype=torch.float64))
    except ValueError as e:
        raise BadFileError(f"{where}: {e}") from None
    steps = len(times) - 1
    if entry["steps"] != steps or len(logsnr) != steps:
        raise BadFileError(f"{where}: {len(times)} times and {len(logsnr)} log-SNR values for steps = "
                           f"{entry['steps']!r} (need steps + 1 times and steps values)")
    if entry["nfe"] != nfe(sampler, steps):
        raise BadFileError(f"{where}: nfe = {entry['nfe']!r}, but {sampler} makes {nfe(sampler, steps)} "
                           f"evaluations on {steps} steps")
    known = {k: entry[k] for k in ("options", "error", "batch", "reference", "settings", "schedule") if k in entry}
    if not isinstance(known.get("options", {}), dict):
        raise BadFileError(f"{where}: options must be an object")
    return TunedGrid(sampler=sampler, nfe=entry["nfe"], steps=steps, times=times, logsnr=logsnr,
                     schedule=str(known.pop("schedule", "")), **known)


def load_grids(path: str | Path) -> list[TunedGrid]:
    """The grids of a file written by :func:`save_grids`; BadFileError (one line) for anything else."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadFileError(f"{path}: not a grid file ({type(e).__name__}: {e})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BadFileError(f"{path}: not a grid file (no \"format\": \"{FORMAT}\"; make one with "
                           "`diffusekit tune-grid`)")
    if body.get("version") != VERSION:
        raise BadFileError(f"{path}: grid file version {body.get('version')!r}, this diffusekit reads {VERSION}")
    grids = body.get("grids")
    if not isinstance(grids, list) or not grids:
        raise BadFileError(f"{path}: \"grids\" must be a non-empty list")
    return [_parse_grid(g, f"{path} grid {i}") for i, g in enumerate(grids)]


def select_grid(grids: list[TunedGrid], schedule: Schedule, *, sampler: str | None = None,
                steps: int | None = None) -> TunedGrid:
    """The grid for ``sampler`` (None: any) with ``steps`` steps (None: the only one), checked against the
    model's ``schedule``; ValueError (one line) naming what the file holds otherwise."""
    held = ", ".join(f"{g.sampler} {g.steps} steps" for g in grids)
    matches = [g for g in grids if (sampler is None or g.sampler == sampler) and (steps is None or g.steps == steps)]
    if not matches:
        wanted = " ".join(filter(None, [sampler, f"{steps} steps" if steps else None]))
        raise ValueError(f"no grid for {wanted} in the file (it holds: {held})")
    if len(matches) > 1:
        raise ValueError(f"the file holds several grids ({held}): choose one with --steps")
    matches[0].check_schedule(schedule)
    return matches[0]
