"""Checkpoints that cannot run code, cannot be half-written, and say when they are damaged.

A checkpoint is a directory ``ckpt-<cur_nimg, 12 digits>/`` holding:

- ``weights.safetensors``: the model (``model.*``) and every EMA (``ema.<name>.*``): tensors only;
- ``state.pt``: optimizer state, RNG states, data position and counters, read back with
  ``torch.load(weights_only=True)`` (no unpickling of arbitrary objects);
- ``meta.json``: the image count and the SHA-256 of both files.

It is written into a temporary sibling directory, flushed to disk, and renamed into place (atomic on
POSIX), so a kill at any moment leaves either the previous set of checkpoints or the new one.
``latest_valid`` returns the newest checkpoint whose checksums match and warns about any newer damaged
one. ``prune`` keeps the newest ``keep`` checkpoints plus milestones (every ``milestone_every`` images).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .._files import file_digest, fsync_file
from ..errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "verify_checkpoint", "latest_valid", "prune", "remove_partial_writes",
           "CheckpointError"]

_PREFIX = "ckpt-"
FORMAT_VERSION = 1


def _flatten_weights(model_state: dict, ema_states: dict[str, dict]) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    for name, state in ema_states.items():
        if "." in name:
            raise ValueError(f"EMA names may not contain '.', got {name!r}")
        tensors.update({f"ema.{name}.{k}": v for k, v in state.items()})
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def save_checkpoint(directory: str | Path, cur_nimg: int, model_state: dict, ema_states: dict[str, dict],
                    training_state: dict) -> Path:
    """Write a checkpoint atomically under ``directory``; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{_PREFIX}{cur_nimg:012d}"
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_flatten_weights(model_state, ema_states), tmp / "weights.safetensors")
        torch.save(training_state, tmp / "state.pt")
        meta = {"format": FORMAT_VERSION, "cur_nimg": int(cur_nimg),
                "sha256": {name: file_digest(tmp / name) for name in ("weights.safetensors", "state.pt")}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for name in ("weights.safetensors", "state.pt", "meta.json"):
            fsync_file(tmp / name)
        if final.exists():  # re-saving the same image count (e.g. a preemption right after a save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_file(directory)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        previous = _checkpoints(directory)
        raise CheckpointError(f"no space left on the device writing checkpoint {final}; the earlier checkpoints are "
                              f"intact (newest: {previous[-1] if previous else 'none'}): free space, then continue "
                              "with --resume auto") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete the temporary directories of checkpoint writes that a killed process left in ``directory``
    (never a finished checkpoint); returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(f".tmp-{_PREFIX}")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def verify_checkpoint(path: Path) -> dict:
    """The meta.json of a checkpoint whose files match their checksums; :class:`CheckpointError` otherwise."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        for name, expected in meta["sha256"].items():
            if file_digest(path / name) != expected:
                raise CheckpointError(f"{path / name} does not match its checksum (truncated or altered)")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is incomplete or damaged: {e}") from None
    return meta


def load_checkpoint(path: str | Path) -> tuple[int, dict, dict[str, dict], dict]:
    """(cur_nimg, model_state, ema_states, training_state) of a verified checkpoint."""
    path = Path(path)
    meta = verify_checkpoint(path)
    try:
        tensors = load_file(path / "weights.safetensors")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a malformed file
        message = f"{path / 'weights.safetensors'} is not a safetensors file (refused to load): {e}"
        raise CheckpointError(message) from None
    model_state, ema_states = {}, {}
    for key, value in tensors.items():
        kind, rest = key.split(".", 1)
        if kind == "model":
            model_state[rest] = value
        else:
            name, param = rest.split(".", 1)
            ema_states.setdefault(name, {})[param] = value
    try:
        training_state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refuses pickled code with various errors
        message = f"{path / 'state.pt'} holds more than tensors and numbers (refused to load): {e}"
        raise CheckpointError(message) from None
    return meta["cur_nimg"], model_state, ema_states, training_state


def _checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))


def latest_valid(directory: str | Path) -> Path | None:
    """The newest checkpoint that verifies; newer damaged ones are skipped with a warning naming them."""
    for path in reversed(_checkpoints(Path(directory))):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            warnings.warn(f"skipping damaged checkpoint: {e}", stacklevel=2)
    return None


def prune(directory: str | Path, keep: int, milestone_every: int | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints and the milestones; returns what was removed."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    checkpoints = _checkpoints(Path(directory))
    removed = []
    for path in checkpoints[:-keep]:
        nimg = int(path.name[len(_PREFIX):])
        if milestone_every and nimg % milestone_every == 0:
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed
