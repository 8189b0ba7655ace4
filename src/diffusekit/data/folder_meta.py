"""Labels and captions written beside a folder's images, and its held-out split.

- ``labels.csv`` in the top folder: a header ``file_name,label``, then one row per image; ``file_name`` is the
  path relative to the folder (``/`` separators), ``label`` any text (the classes are the distinct labels,
  sorted; numerically when all are integers).
- ``metadata.jsonl`` in the top folder, Hugging Face's imagefolder convention: one JSON object per line with
  ``file_name`` (relative path) and optionally ``text`` (the caption) and ``label``.
- a caption may also be a same-named ``.txt`` file beside the image (``cat.png`` -> ``cat.txt``); the
  ``metadata.jsonl`` text wins where both exist.

The held-out split (:func:`is_held_out`) is fixed by a hash of each file's relative path, so a file stays in
its split when others are added or removed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import BadFileError
from .folder_transform import path_fraction

__all__ = ["LABELS_FILE", "METADATA_FILE", "FolderMetadata", "class_order", "is_held_out", "read_metadata"]

LABELS_FILE = "labels.csv"
METADATA_FILE = "metadata.jsonl"


class FolderMetadata:
    """What ``labels.csv`` and ``metadata.jsonl`` of ``root`` say, by relative path (posix)."""

    def __init__(self, labels: dict[str, str] | None = None, captions: dict[str, str] | None = None,
                 source: str | None = None):
        self.labels = labels  # relative path -> label text, None without a label file
        self.captions = captions or {}  # relative path -> caption from metadata.jsonl
        self.source = source  # which file gave the labels

    def named(self) -> set[str]:
        """Every file the metadata names."""
        return set(self.labels or ()) | set(self.captions)


def _read_labels_csv(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["file_name", "label"]:
        raise BadFileError(f"{path}: the first row must be the header file_name,label")
    labels = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip():
            raise BadFileError(f"{path} line {number}: expected file_name,label, got {','.join(row)!r}")
        labels[row[0].strip()] = row[1].strip()
    return labels


def _read_jsonl(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    labels, captions = {}, {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise BadFileError(f"{path} line {number}: not JSON ({error.msg})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
                raise BadFileError(f"{path} line {number}: each line must be an object with a file_name string")
            name = entry["file_name"]
            if "label" in entry:
                labels[name] = str(entry["label"])
            if "text" in entry:
                captions[name] = str(entry["text"])
    return labels, captions


def read_metadata(root: Path) -> FolderMetadata:
    """The labels (``labels.csv`` first, else ``metadata.jsonl``'s ``label``) and captions of ``root``."""
    labels, captions, source = None, {}, None
    if (root / METADATA_FILE).is_file():
        jsonl_labels, captions = _read_jsonl(root / METADATA_FILE)
        if jsonl_labels:
            labels, source = jsonl_labels, METADATA_FILE
    if (root / LABELS_FILE).is_file():
        labels, source = _read_labels_csv(root / LABELS_FILE), LABELS_FILE
    return FolderMetadata(labels, captions, source)


def class_order(names: set[str]) -> list[str]:
    """Class names sorted: numerically when every one is an integer, else as text."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def is_held_out(relative: str, fraction: float) -> bool:
    """Whether the file at ``relative`` (posix path) belongs to the held-out split of ``fraction`` of the files."""
    return fraction > 0 and path_fraction(relative, "split") < fraction
