"""File helpers shared by checkpoints, metrics caches and statistics files: digests, atomic writes, the cache."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["file_digest", "atomic_write", "cache_dir", "fsync_file"]


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: str | Path) -> None:
    """Flush a written file to the disk, so a rename that follows it never publishes data still in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], Any], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place: an interrupted write
    never leaves a torn file, and the temporary file is removed on failure. ``suffix`` ends the temporary name
    (``np.savez`` appends ``.npz`` unless the name already ends with it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cache_dir(name: str) -> Path:
    """``$DIFFUSEKIT_CACHE/<name>`` if that variable is set, else ``~/.cache/diffusekit/<name>``."""
    root = os.environ.get("DIFFUSEKIT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "diffusekit") / name
