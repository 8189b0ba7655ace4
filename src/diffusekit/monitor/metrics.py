"""A run's metrics as JSON Lines: one object per line, appended and flushed, readable while the run goes on.

JSON Lines survives being killed: every complete line is a complete record, and a run killed mid-write
leaves at most one partial last line, which :func:`read_metrics` ignores and :class:`MetricsLog` cuts off
when it reopens the file. On resume, :meth:`MetricsLog.truncate_after` drops the records written after
the checkpoint, so the resumed run does not log the same images twice.

Values are made JSON-safe on the way in: tensors and NumPy scalars/arrays become Python numbers/lists
(``.tolist()``), tuples become lists. Non-finite floats are written as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (bare ``NaN`` is not JSON, and ``null`` would hide a diverged run);
:func:`read_metrics` turns those three strings back into floats.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "read_metrics", "to_json_safe"]

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _float_to_json(x: float) -> float | str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def to_json_safe(value: Any) -> Any:
    """``value`` with tensors, NumPy values and non-finite floats replaced by JSON-writable ones."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return _float_to_json(value)
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, np.ndarray, np.generic: tolist() gives Python scalars/lists
        return to_json_safe(value.tolist())
    raise TypeError(f"cannot write {type(value).__name__} to the metrics log: {value!r}")


def _from_json(value: Any) -> Any:
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _parse_lines(text: str, path: Path) -> list[dict]:
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(_from_json(json.loads(line)))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: the write was cut short by a kill
                break
            raise ValueError(f"{path}:{i + 1}: damaged metrics record: {line[:80]!r}") from None
    return records


def read_metrics(path: str | Path) -> list[dict]:
    """Every complete record of a metrics log (a missing file reads as none), ignoring a cut-off last line."""
    path = Path(path)
    if not path.exists():
        return []
    return _parse_lines(path.read_text(encoding="utf-8", errors="replace"), path)


def _complete_length(path: Path) -> int:
    """Bytes up to and including the last newline: what remains once a partial last line is cut off."""
    data = path.read_bytes()
    return data.rfind(b"\n") + 1


class MetricsLog:
    """Append-only JSONL log; each :meth:`append` is one line, flushed so that readers and kills see it.

    Flushed, not fsynced: a killed process loses nothing, a power cut may lose the last lines.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_tail()
        self._file = open(self.path, "a", encoding="utf-8")

    def _drop_partial_tail(self) -> None:
        """Cut a line left unfinished by a kill, which the next append would otherwise glue onto."""
        if self.path.exists():
            keep = _complete_length(self.path)
            if keep != self.path.stat().st_size:
                os.truncate(self.path, keep)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` as one JSON line and flush it (ASCII-escaped, so a cut never splits a character)."""
        line = json.dumps(to_json_safe(dict(record)), allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()

    def truncate_after(self, key: str, value: float) -> int:
        """Keep only records with ``record[key] <= value`` (and those without ``key``, such as a config record);
        return how many remain.

        Called on resume with the checkpoint's position (``"cur_nimg"``), so the lines the killed run wrote
        after its last checkpoint are not duplicated. The file is rewritten atomically (temp + rename).
        """
        kept = [r for r in read_metrics(self.path) if key not in r or r[key] <= value]
        self._file.close()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in kept:
                f.write(json.dumps(to_json_safe(r), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        return len(kept)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
