"""The latent cache: a dataset encoded once by a frozen autoencoder, so training runs no encoder.

As fast-DiT does, the trainer encodes every training image (and, with ``flip``, its mirror image) once and
trains on the stored latents. The cache is a directory of safetensors shards (``latents`` float32
[n, C, h, w], ``labels`` int64 [n]) plus ``meta.json``, under a name that is the SHA-256 of everything the
latents depend on: the autoencoder's digest (weights and latent factors), the images and labels, the flip
setting and the cache format. A changed autoencoder or dataset therefore maps to another directory and is
encoded afresh; a directory whose meta or shards do not match its name (an interrupted or damaged write) is
rebuilt. A cache is written into a temporary sibling and renamed into place, so a kill never leaves a torn
one.

The shards hold the posterior means unscaled; :class:`LatentArrays` applies the autoencoder's
``(z - shift) * scale`` when it hands out a batch, so the cache does not depend on how the latents are scaled
(the scale is part of the digest all the same).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .._files import cache_dir
from ..data import ImageArrays
from .codec import LatentAutoencoder

__all__ = ["LatentArrays", "encode_dataset", "cache_key", "CACHE_FORMAT"]

CACHE_FORMAT = 1
SHARD_SIZE = 4096


@dataclass
class LatentArrays:
    """Training data for a latent model, indexed like :class:`~diffusekit.data.ImageArrays`: ``tensors`` gives
    normalised latents NCHW and labels. With flips, items ``n..2n-1`` are the mirror images of ``0..n-1``."""

    latents: Tensor  # float32 [N, C, h, w], unscaled posterior means
    labels: np.ndarray  # int64 [N]
    num_classes: int
    class_names: tuple[str, ...]
    shift: Tensor  # [C]
    scale: Tensor  # [C]
    path: Path | None = None  # the cache directory it was read from

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def item_shape(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[1:])

    def tensors(self, indices=None) -> tuple[Tensor, Tensor]:
        z = self.latents if indices is None else self.latents[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        labels = self.labels if indices is None else self.labels[np.asarray(indices)]
        z = (z - self.shift.view(1, -1, 1, 1)) * self.scale.view(1, -1, 1, 1)
        return z, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def _data_digest(data: ImageArrays) -> str:
    h = hashlib.sha256()
    images = np.ascontiguousarray(data.images)
    h.update(str((images.shape, images.dtype.str)).encode())
    h.update(images.tobytes())
    h.update(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    h.update(json.dumps([data.num_classes, list(data.class_names)]).encode())
    return h.hexdigest()


def cache_key(autoencoder: LatentAutoencoder, data: ImageArrays, flip: bool) -> str:
    """The SHA-256 naming a cache: the autoencoder, the images and labels, the flip setting, the format."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "autoencoder": autoencoder.digest, "data": _data_digest(data),
                         "flip": bool(flip)}, sort_keys=True).encode())
    return h.hexdigest()


def _read(directory: Path, key: str, count: int) -> tuple[Tensor, np.ndarray] | None:
    """The cache's latents and labels, or None when its meta or shards do not match ``key`` and ``count``."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("key") != key or meta.get("count") != count:
            return None
        shards = [load_file(str(directory / name)) for name in meta["shards"]]
        latents = torch.cat([s["latents"] for s in shards])
        labels = torch.cat([s["labels"] for s in shards]).numpy()
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):  # missing, torn or foreign files
        return None
    if len(latents) != count or len(labels) != count:
        return None
    return latents, labels


def _encode(autoencoder: LatentAutoencoder, data: ImageArrays, flip: bool, batch: int, log) -> Tensor:
    out = []
    n = len(data)
    for first in range(0, n, batch):
        x, _ = data.tensors(range(first, min(first + batch, n)))
        out.append(autoencoder.encode(x).float().cpu())
        if log is not None and (first // batch) % 20 == 19:
            log(f"latent cache: encoded {min(first + batch, n):,} of {n:,} images" + (" (and flips)" if flip else ""))
    if flip:  # the mirrored images, in the same order, after all originals
        for first in range(0, n, batch):
            x, _ = data.tensors(range(first, min(first + batch, n)))
            out.append(autoencoder.encode(torch.flip(x, dims=[3])).float().cpu())
    return torch.cat(out)


def encode_dataset(autoencoder: LatentAutoencoder, data: ImageArrays, *, flip: bool = True, batch: int = 64,
                   root: str | Path | None = None, log=None) -> LatentArrays:
    """``data`` as latents, from the cache under ``root`` (default ``$DIFFUSEKIT_CACHE/latents``) when a matching
    one exists, else encoded now and cached."""
    if autoencoder.image_shape is not None and tuple(autoencoder.image_shape) != _image_shape(data):
        raise ValueError(f"the autoencoder {autoencoder.source} was trained on {tuple(autoencoder.image_shape)} "
                         f"images, the data are {_image_shape(data)}: set data.resolution / data.channels to match")
    root = Path(root).expanduser() if root is not None else cache_dir("latents")
    key = cache_key(autoencoder, data, flip)
    directory = root / key[:24]
    count = len(data) * (2 if flip else 1)
    labels_all = np.concatenate([data.labels] * (2 if flip else 1)).astype(np.int64)
    found = _read(directory, key, count) if directory.exists() else None
    if found is None:
        if directory.exists() and log is not None:
            log(f"latent cache {directory} does not match its key (interrupted or damaged): rebuilding it")
        elif log is not None:
            log(f"latent cache: encoding {len(data):,} images{' and their mirror images' if flip else ''} "
                f"with {autoencoder.source} -> {directory}")
        latents = _encode(autoencoder, data, flip, batch, log)
        _write(directory, key, latents, labels_all, autoencoder)
        found = latents, labels_all
    latents, labels = found
    return LatentArrays(latents, labels, data.num_classes, tuple(data.class_names),
                        autoencoder.shift_factor.detach().float().cpu().clone(),
                        autoencoder.scaling_factor.detach().float().cpu().clone(), directory)


def _image_shape(data: ImageArrays) -> tuple[int, int, int]:
    _, height, width, channels = data.images.shape
    return int(channels), int(height), int(width)


def _write(directory: Path, key: str, latents: Tensor, labels: np.ndarray, autoencoder: LatentAutoencoder) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        names = []
        for i, first in enumerate(range(0, len(latents), SHARD_SIZE)):
            name = f"shard-{i:05d}.safetensors"
            save_file({"latents": latents[first:first + SHARD_SIZE].contiguous(),
                       "labels": torch.from_numpy(labels[first:first + SHARD_SIZE].copy())}, str(tmp / name))
            names.append(name)
        meta = {"key": key, "format": CACHE_FORMAT, "count": len(latents), "shape": list(latents.shape[1:]),
                "shards": names, **autoencoder.describe()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if directory.exists():  # a damaged cache of the same key: replaced
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
