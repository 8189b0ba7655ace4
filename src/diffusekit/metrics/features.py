"""Images in, feature statistics out: image sources (folders, sample files, datasets), batched extraction,
and the cache of reference statistics.

Every source becomes a stream of uint8 NCHW batches (generated float images are quantised first, as when
they are written as PNGs). Folder reading follows pytorch-fid: the files directly in the folder with an
image extension, in sorted order, converted to RGB (grayscale kept as one channel: the extractor repeats it,
which is what RGB conversion of a gray image does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .._files import cache_dir
from ..data import open_dataset
from ..errors import BadFileError, MissingFileError, UsageError
from .inception import InceptionV3, quantize
from .stats import FeatureStats, RunningStats, is_stats_file, load_stats, open_npz

__all__ = ["IMAGE_EXTENSIONS", "folder_images", "npz_images", "array_batches", "compute_stats", "stats_cache_dir",
           "dataset_reference_stats", "cached_image_stats", "dataset_label", "open_source"]

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")  # pytorch-fid's list


def _folder_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise BadFileError(f"{path} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("L" if image.mode in ("L", "I;16", "I", "1") else "RGB")
            array = np.asarray(image, dtype=np.uint8)
    except OSError as e:
        raise BadFileError(f"cannot read image {path}: {e}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def folder_images(path: str | Path, batch_size: int = 50) -> tuple[int, Iterator[Tensor]]:
    """(count, batches) of a folder's images. Consecutive images of one size and channel count share a
    batch; a new size starts a new batch (the extractor resizes every image on its own)."""
    files = _folder_files(Path(path))

    def batches():
        pending: list[np.ndarray] = []
        for file in files:
            image = _read_image(file)
            if pending and (image.shape != pending[0].shape or len(pending) == batch_size):
                yield torch.from_numpy(np.stack(pending))
                pending = []
            pending.append(image)
        if pending:
            yield torch.from_numpy(np.stack(pending))

    return len(files), batches()


def npz_images(path: str | Path) -> Tensor:
    """The ``images`` of a sample file written by ``diffusekit sample --out X.npz`` (float NCHW in [-1, 1]) or
    any ``.npz`` with uint8 NCHW / NHWC ``images``: uint8 NCHW."""
    with open_npz(path) as f:
        if "images" not in f.files:
            raise BadFileError(f"{path} has neither feature statistics (mu, sigma) nor 'images'; it holds "
                               f"{', '.join(f.files) or 'nothing'}")
        images = torch.from_numpy(f["images"])
    if images.ndim != 4:
        raise BadFileError(f"{path}: images must be 4-d, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)  # NHWC
    return quantize(images)


def array_batches(images: Tensor | np.ndarray, batch_size: int = 50, nhwc: bool = False) -> Iterator[Tensor]:
    """uint8 (or float in [-1, 1]) images in memory as uint8 NCHW batches."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # arrays read straight from a file buffer; torch wants writable memory
    images = torch.as_tensor(images)
    if nhwc:
        images = images.permute(0, 3, 1, 2)
    for first in range(0, images.shape[0], batch_size):
        yield quantize(images[first:first + batch_size])


def compute_stats(extractor: InceptionV3, batches: Iterable[Tensor], *, keep_features: bool = True, progress=None,
                  **meta) -> FeatureStats:
    """Stream ``batches`` (uint8 NCHW) through ``extractor``; ``meta`` (dataset, split, ...) goes into the stats."""
    stats = RunningStats(extractor.dim, keep_features=keep_features)
    for batch in batches:
        stats.update(extractor(batch).cpu())
        if progress is not None:
            progress(batch.shape[0])
    if stats.count < 2:
        raise UsageError(f"need at least 2 images for feature statistics, got {stats.count}")
    return stats.finish(**extractor.describe(), **meta)


def open_source(source: str | Path, batch_size: int = 50) -> tuple:
    """What ``diffusekit fid`` accepts: a folder of images, a sample ``.npz`` or a statistics ``.npz``.
    Returns ("stats", FeatureStats) or ("images", count, batches)."""
    path = Path(source)
    if path.is_dir():
        return ("images", *folder_images(path, batch_size))
    if not path.is_file():
        raise MissingFileError(f"{source}: no such file or folder (give an image folder, a sample .npz or a stats "
                               ".npz)")
    if path.suffix.lower() != ".npz":
        raise UsageError(f"{source}: expected an image folder or an .npz file, got a {path.suffix or 'plain'} file")
    if is_stats_file(path):
        return "stats", load_stats(path)
    images = npz_images(path)
    return "images", images.shape[0], array_batches(images, batch_size)


def stats_cache_dir() -> Path:
    """``$DIFFUSEKIT_CACHE/fid-stats`` if that variable is set, else ``~/.cache/diffusekit/fid-stats``."""
    return cache_dir("fid-stats")


def dataset_label(dataset: str | Path) -> str:
    """A built-in dataset's name, or an image folder's own name (for cache files and metadata)."""
    return Path(str(dataset)).name if Path(str(dataset)).is_dir() else str(dataset)


def dataset_reference_stats(extractor: InceptionV3, dataset: str, split: str = "train", count: int | None = None, *,
                            start: int = 0, resolution: int | None = None, channels: int | None = None,
                            resize: str = "resize", batch_size: int = 50, cache: bool = True, progress=None,
                            log=None, **options) -> FeatureStats:
    """Statistics of ``count`` images (all from ``start`` when None) of a dataset split from index ``start``, at the
    given size (see :func:`cached_image_stats`). A slice other than the first images is labelled
    ``split[start:stop]``, so tuning and reporting references stay apart. ``options``: an image folder's
    (:func:`~diffusekit.data.open_dataset`)."""
    data = open_dataset(dataset, split=split, resolution=resolution, channels=channels, mode=resize, **options)
    if not 0 <= start < len(data):
        raise UsageError(f"start must be in 0..{len(data) - 1} (the size of {dataset}:{split}), got {start}")
    n = len(data) - start if count is None else int(count)
    if not 2 <= n <= len(data) - start:
        raise UsageError(f"count must be in 2..{len(data) - start} ({dataset}:{split} has {len(data)} images, "
                         f"starting at {start}), got {n}")
    label = split if start == 0 else f"{split}[{start}:{start + n}]"
    return cached_image_stats(extractor, data.images[start:start + n], dataset_label(dataset), label,
                              batch_size=batch_size, cache=cache, progress=progress, log=log)


def cached_image_stats(extractor: InceptionV3, images: np.ndarray, name: str, split: str, *, batch_size: int = 50,
                       cache: bool = True, progress=None, log=None) -> FeatureStats:
    """Statistics (features kept) of uint8 NHWC ``images`` of dataset ``name``, cached under
    :func:`stats_cache_dir` by name, split, size, count, the images' sha256 and the extractor's hash."""
    images = np.ascontiguousarray(images)
    n = len(images)
    digest = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    path = stats_cache_dir() / f"{name}-{split}-{images.shape[1]}px-{n}-{digest}-{extractor.config_hash}.npz"
    if cache and path.is_file():
        try:
            return load_stats(path)
        except ValueError:
            pass  # a damaged cache file: recompute and overwrite
    if log is not None:
        log(f"computing {extractor.name} statistics of {n} {name}:{split} images (cached in {path.parent})")
    stats = compute_stats(extractor, array_batches(images, batch_size, nhwc=True), progress=progress, dataset=name,
                          split=split, resolution=int(images.shape[1]), channels=int(images.shape[3]),
                          images_sha256=digest)
    if cache:
        stats.save(path)
    return stats
