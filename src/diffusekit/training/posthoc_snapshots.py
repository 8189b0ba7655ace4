"""The post-hoc EMA's snapshots: ``<run>/posthoc/phema-<cur_nimg, 12 digits>.safetensors``.

Each file holds, at one image count, every tracked power-function EMA (tensors ``<label>.<parameter>``, label as in
:func:`~diffusekit.posthoc_ema.sigma_rel_label`), with metadata ``format``, ``cur_nimg``, ``batch_size`` and the
JSON lists ``sigma_rels`` and ``gammas``. A file is written to a temporary name, flushed and renamed into place, so a
kill or a full disk never leaves a half-written snapshot under its final name.

**Disk budget.** Before a snapshot at ``n`` images is renamed into place, older ones are deleted until all fit in
the budget, by an age rule (ages in snapshot intervals ``every``): every snapshot younger than ``base`` intervals
is kept, those of age ``[base, 2 base)`` only at multiples of ``2 every``, of age ``[2 base, 4 base)`` at multiples
of ``4 every``, and so on, with the largest ``base`` whose survivors fit. About ``base`` snapshots survive per
doubling of age: the recent ones, which a reconstruction at the end of training leans on most, stay dense and the
early ones thin out geometrically but keep covering the run. A deleted snapshot is never needed again (the rule only
tightens as the run ages), and when even ``base = 1`` does not fit, the oldest go first.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from .._files import fsync_file
from ..config import Config, ConfigError
from ..errors import BadFileError
from ..posthoc_ema import gamma_of_sigma_rel, sigma_rel_label

__all__ = ["Snapshot", "snapshot_interval", "write_snapshot", "list_snapshots", "load_snapshot", "kept_by_age", "thin",
           "remove_snapshots_after", "snapshot_bytes", "check_budget"]

FORMAT_VERSION = 1
_PREFIX, _SUFFIX = "phema-", ".safetensors"
SNAPSHOTS_PER_RUN = 64  # the default interval: run.total_images / 64 (EDM2 kept a few hundred over long runs)


@dataclass(frozen=True)
class Snapshot:
    path: Path
    cur_nimg: int
    batch_size: int
    sigma_rels: tuple[float, ...]
    gammas: tuple[float, ...]


def snapshot_interval(config: Config) -> int:
    """Images between snapshots: ``ema.posthoc_every``, else the run's length / 64 (at least one step)."""
    every = config.ema.posthoc_every
    return every or max(config.optim.batch_size, math.ceil(config.run.total_images / SNAPSHOTS_PER_RUN))


def snapshot_bytes(states: dict[float, dict[str, torch.Tensor]]) -> int:
    """The tensor bytes of one snapshot (the file adds a small header)."""
    return sum(v.numel() * v.element_size() for state in states.values() for v in state.values())


def check_budget(budget_mb: float | None, states: dict[float, dict[str, torch.Tensor]]) -> None:
    """Refuse a budget that cannot hold two snapshots (a reconstruction needs more than the newest)."""
    if budget_mb is None:
        return
    size = snapshot_bytes(states)
    if budget_mb * 1e6 < 2 * size:
        raise ConfigError(f"ema.posthoc_budget_mb: {budget_mb} MB holds fewer than two snapshots of "
                         f"{size / 1e6:.3g} MB; raise it (or track fewer posthoc_sigma_rels)")


def kept_by_age(times: list[int], now: int, every: int, base: int) -> list[int]:
    """The image counts among ``times`` the age rule keeps at ``now``: a snapshot younger than ``base`` intervals is
    kept; one of age in ``[2^(j-1) base, 2^j base)`` intervals only when its image count is a multiple of
    ``2^j * every``."""
    kept = []
    for t in times:
        age = (now - t) / every
        level = 0 if age < base else int(math.floor(math.log2(age / base))) + 1
        if level == 0 or t % (every << level) == 0:
            kept.append(t)
    return kept


def thin(times: list[int], now: int, every: int, fits) -> list[int]:
    """The image counts of the snapshots (``times``, oldest first) to delete so that ``fits(kept)`` holds before the
    snapshot at ``now`` is added: the age rule with the largest ``base`` that fits, else the oldest go first."""
    if fits(times):
        return []
    longest = max(1, math.ceil((now - times[0]) / every)) if times else 1
    for base in range(longest, 0, -1):
        kept = kept_by_age(times, now, every, base)
        if fits(kept):
            return [t for t in times if t not in kept]
    kept = kept_by_age(times, now, every, 1)
    while kept and not fits(kept):
        kept.pop(0)
    return [t for t in times if t not in kept]


def _path(directory: Path, cur_nimg: int) -> Path:
    return directory / f"{_PREFIX}{cur_nimg:012d}{_SUFFIX}"


def write_snapshot(directory: str | Path, cur_nimg: int, batch_size: int,
                   states: dict[float, dict[str, torch.Tensor]], budget_mb: float | None = None,
                   every: int | None = None) -> Path:
    """Write the tracked EMAs ``{sigma_rel: state_dict}`` at ``cur_nimg`` images, thinning older snapshots to keep
    all within ``budget_mb`` (``every``: the interval the thinning counts ages in; default ``batch_size``). A full
    disk removes the temporary file and raises the OSError (ENOSPC): the earlier snapshots stay as they were, and
    ``diffusekit train`` stops with its one-line full-disk error."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sigma_rels = list(states)
    tensors = {f"{sigma_rel_label(s)}.{k}": v.detach().cpu().contiguous().clone()
               for s, state in states.items() for k, v in state.items()}
    metadata = {"format": str(FORMAT_VERSION), "cur_nimg": str(int(cur_nimg)), "batch_size": str(int(batch_size)),
                "sigma_rels": json.dumps(sigma_rels), "gammas": json.dumps([gamma_of_sigma_rel(s) for s in sigma_rels])}
    final = _path(directory, cur_nimg)
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    try:
        _write_file(tmp, save(tensors, metadata))
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    if budget_mb is not None:
        _thin(directory, cur_nimg, every or batch_size, tmp.stat().st_size, budget_mb * 1e6, keep=final)
    os.replace(tmp, final)
    fsync_file(directory)
    return final


def _write_file(path: Path, payload: bytes) -> None:
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _thin(directory: Path, now: int, every: int, new_bytes: int, budget: float, keep: Path) -> None:
    existing = {s.cur_nimg: s.path for s in list_snapshots(directory) if s.path != keep}
    sizes = {t: p.stat().st_size for t, p in existing.items()}
    for t in thin(sorted(existing), now, every, lambda kept: sum(sizes[k] for k in kept) + new_bytes <= budget):
        existing[t].unlink()


def _read_meta(path: Path) -> Snapshot:
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        return Snapshot(path, int(meta["cur_nimg"]), int(meta["batch_size"]),
                        tuple(float(s) for s in json.loads(meta["sigma_rels"])),
                        tuple(float(g) for g in json.loads(meta["gammas"])))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a malformed file
        raise BadFileError(f"{path} is not a post-hoc EMA snapshot (damaged or written by something else): "
                           f"{e}") from None


def list_snapshots(directory: str | Path) -> list[Snapshot]:
    """The snapshots in ``directory``, oldest first (temporary files of unfinished writes are not snapshots)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    paths = sorted(p for p in directory.iterdir() if p.name.startswith(_PREFIX) and p.name.endswith(_SUFFIX))
    return [_read_meta(p) for p in paths]


def load_snapshot(snapshot: Snapshot) -> dict[float, dict[str, torch.Tensor]]:
    """``{sigma_rel: state_dict}`` of a snapshot."""
    tensors = load_file(snapshot.path)
    states: dict[float, dict[str, torch.Tensor]] = {}
    for sigma_rel in snapshot.sigma_rels:
        prefix = f"{sigma_rel_label(sigma_rel)}."
        states[sigma_rel] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return states


def remove_snapshots_after(directory: str | Path, cur_nimg: int) -> list[Path]:
    """On resume: delete the snapshots newer than the checkpoint (training redoes them) and the temporary files of
    writes a kill interrupted; returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if p.name.startswith(f".tmp-{_PREFIX}")]
    removed += [s.path for s in list_snapshots(directory) if s.cur_nimg > cur_nimg]
    for path in removed:
        path.unlink(missing_ok=True)
    if not any(directory.iterdir()):
        directory.rmdir()
    return removed
