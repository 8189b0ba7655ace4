"""A folder decoded once into resized uint8 shards on disk, read back memory-mapped (``data.storage: cache``).

Layout: ``<cache root>/<folder name>-<hash of the folder's path and the transform>/`` holds ``manifest.json``
and ``shard-00000.npy`` ... (each a uint8 ``[n, R, R, C]`` array of at most ``SHARD_BYTES``), read back
memory-mapped read-only, so memory holds only the pages being read.

The manifest's ``digest`` covers every indexed file's relative path, size and modification time, the
transform settings and the format version; a cache whose digest differs (a file added, removed, edited, or
other settings) is stale and built again. A build writes into a temporary directory beside the cache and
renames it into place only when every shard and the manifest are complete, so an interrupted build or a full
disk never leaves a cache that is used. Files that fail to decode are recorded in the manifest and left out
(as in memory storage).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._files import cache_dir
from .folder_files import DECODE_ERRORS, TooSmall, read_image
from .folder_transform import FolderTransform
from .lazy_images import LazyImages

__all__ = ["FORMAT", "SHARD_BYTES", "ShardedImages", "cache_digest", "cached_folder", "default_cache_root"]

FORMAT = 1
SHARD_BYTES = 256 << 20


def default_cache_root() -> Path:
    """``$DIFFUSEKIT_CACHE/image-folders`` if that variable is set, else ``~/.cache/diffusekit/image-folders``."""
    return cache_dir("image-folders")


def cache_digest(root: Path, files: list[Path], keys: list[str], transform: FolderTransform) -> str:
    """sha256 over the format, the transform settings and each file's relative path, size and mtime."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT, **transform.settings()}, sort_keys=True).encode())
    for file, key in zip(files, keys, strict=True):
        stat = file.stat()
        digest.update(f"{key}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


class ShardedImages(LazyImages):
    """The images of a cache directory, read from its memory-mapped shards."""

    def __init__(self, directory: Path, shard_sizes: list[int], item_shape: tuple[int, int, int]):
        self.directory, self.shard_sizes = Path(directory), list(shard_sizes)
        self.shape = (int(sum(shard_sizes)), *item_shape)
        self._starts = np.cumsum([0, *shard_sizes])
        self._shards: list[np.ndarray] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_shards"] = None  # maps are reopened in each process
        return state

    def _open(self) -> list[np.ndarray]:
        if self._shards is None:
            self._shards = [np.load(self.directory / f"shard-{k:05d}.npy", mmap_mode="r", allow_pickle=False)
                            for k in range(len(self.shard_sizes))]
        return self._shards

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        shards = self._open()
        which = np.searchsorted(self._starts, indices, side="right") - 1
        out = np.empty((len(indices), *self.shape[1:]), np.uint8)
        for k in np.unique(which):
            rows = which == k
            offsets = indices[rows] - self._starts[k]
            order = np.argsort(offsets, kind="stable")  # ascending reads: sequential where the batch allows
            out[np.flatnonzero(rows)[order]] = shards[k][offsets[order]]
        return out


def _load(directory: Path, digest: str) -> tuple[ShardedImages, list[int]] | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("digest") != digest or manifest.get("format") != FORMAT:
        return None
    images = ShardedImages(directory, manifest["shard_sizes"], tuple(manifest["item_shape"]))
    if not all((directory / f"shard-{k:05d}.npy").is_file() for k in range(len(images.shard_sizes))):
        return None
    return images, manifest["failed"]


def _build(tmp: Path, files: list[Path], keys: list[str], transform: FolderTransform, digest: str,
           workers: int, log) -> None:
    r, c = transform.resolution, transform.channels
    per_shard = max(1, SHARD_BYTES // (r * r * c))

    def decode(i: int) -> np.ndarray | None:
        try:
            return read_image(files[i], 0, transform=transform, key=keys[i])
        except (TooSmall, *DECODE_ERRORS):  # recorded in the manifest, left out
            return None

    failed, sizes, shard, filled = [], [], None, 0

    def close_shard():
        nonlocal shard
        if shard is not None:
            shard.flush()
            del shard
            shard = None

    chunk = max(workers * 16, 64)
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(files), chunk):
            positions = range(start, min(start + chunk, len(files)))
            for i, image in zip(positions, pool.map(decode, positions), strict=True):
                if image is None:
                    failed.append(i)
                    continue
                if shard is None or filled == per_shard:
                    close_shard()
                    remaining = len(files) - i
                    size = min(per_shard, remaining)
                    shard = np.lib.format.open_memmap(tmp / f"shard-{len(sizes):05d}.npy", "w+", np.uint8,
                                                      (size, r, r, c))
                    sizes.append(size)
                    filled = 0
                shard[filled] = image
                filled += 1
            if log is not None and len(files) > chunk:
                log(f"image cache: {min(start + chunk, len(files))}/{len(files)} files decoded")
    if sizes and filled != sizes[-1]:  # failures near the end: the last shard holds fewer than planned
        last = np.array(shard[:filled])
        close_shard()
        np.save(tmp / f"shard-{len(sizes) - 1:05d}.npy", last)
        sizes[-1] = filled
    close_shard()
    manifest = {"format": FORMAT, "digest": digest, "item_shape": [r, r, c], "shard_sizes": sizes,
                "failed": failed, "files": len(files)}
    (tmp / "manifest.json").write_text(json.dumps(manifest))


def cached_folder(root: Path, files: list[Path], keys: list[str], transform: FolderTransform,
                  cache_root: str | Path | None = None, workers: int | None = None,
                  log=None) -> tuple[ShardedImages, list[int]]:
    """The images of ``files`` from their cache (built first when missing or stale; module docstring) and the
    positions of the files that failed to decode (left out of the images)."""
    base = Path(cache_root).expanduser() if cache_root else default_cache_root()
    place = hashlib.sha256(json.dumps([str(root.resolve()), transform.settings()]).encode()).hexdigest()[:16]
    directory = base / f"{root.name}-{place}"
    digest = cache_digest(root, files, keys, transform)
    found = _load(directory, digest)
    if found is not None:
        return found
    if log is not None:
        log(f"building the image cache of {root} ({len(files)} files) in {directory}")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{directory.name}.tmp-"))
    try:
        _build(tmp, files, keys, transform, digest, workers or min(4, os.cpu_count() or 1), log)
        if directory.exists():  # stale: moved aside first, so the rename below lands on a free name
            stale = Path(tempfile.mkdtemp(dir=base, prefix=f".{directory.name}.stale-"))
            os.replace(directory, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = _load(directory, digest)
    if found is None:
        raise OSError(f"the image cache {directory} was written but cannot be read back")
    return found
