"""A folder of your own images as :class:`ImageArrays`, held in memory, streamed from the files, or cached.

The folder is indexed once (:mod:`diffusekit.data.folder_index`: files, labels from class subfolders,
``labels.csv`` or ``metadata.jsonl``, captions, a header check of each file), split (``train`` / ``test``:
:func:`~diffusekit.data.folder_index.split_index`), cut to its first ``limit`` images, and then stored:

- ``memory`` (default): every image decoded up front into one uint8 array, so a bad file can never stop a run
  half-way; RAM grows with the folder (about ``N * R * R * C`` bytes).
- ``stream``: decoded at each read (:class:`~diffusekit.data.lazy_images.StreamImages`); memory stays flat
  with the folder's size and nothing is written, but every epoch decodes every file again. A file that passed
  the header check but fails to decode is replaced by a fixed other image and warned about once.
- ``cache``: decoded once into resized uint8 shards on disk, memory-mapped at each read
  (:mod:`diffusekit.data.folder_cache`); memory stays flat, reads are cheap, and a stale cache is rebuilt.

The three give the same pixels for the same settings (:class:`~diffusekit.data.folder_transform.FolderTransform`:
fit, filter, colour). Files that cannot be used are sorted into categories (:data:`SKIP_CATEGORIES`): unreadable
(truncated, corrupt, not really an image), too small (short side under ``min_size``), not an image (another
extension; hidden files are ignored and not counted), empty class folders (dropped, the other classes renumbered
in sorted order), metadata lines naming missing files, images a label file does not list, and with captions,
images without one. By default they are skipped with one warning that counts them; ``strict=True`` makes them
an error instead. A folder with no usable image is an error either way.

With ``captions=True`` the labels are caption numbers instead of classes: ``class_names`` holds the distinct
captions (sorted) and ``labels[i]`` the one of image i, which is what the text conditioning reads
(:func:`diffusekit.training.captions.folder_caption_table`).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import BadFileError, UsageError
from .builtin import ImageArrays
from .folder_cache import cached_folder
from .folder_files import (
    DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    SKIP_CATEGORIES,
    FolderReport,
    TooSmall,
    describe_skipped,
    flatten_image,
    read_image,
)
from .folder_index import FolderIndex, index_folder, split_index
from .folder_transform import FolderTransform
from .lazy_images import StreamImages

__all__ = ["IMAGE_EXTENSIONS", "SKIP_CATEGORIES", "STORAGES", "FolderReport", "describe_skipped", "flatten_image",
           "image_folder", "load_image_folder", "read_image"]

STORAGES = ("memory", "stream", "cache")


def _decode_all(index: FolderIndex, transform: FolderTransform, workers: int) -> list[np.ndarray | Exception]:
    def decode(i: int) -> np.ndarray | Exception:
        try:
            return read_image(index.files[i], 0, transform=transform, key=index.keys[i])
        except (TooSmall, *DECODE_ERRORS) as error:  # sorted into categories by the caller, for every file at once
            return error

    if workers > 1 and len(index) > 1:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(decode, range(len(index))))
    return [decode(i) for i in range(len(index))]


def _with_captions(index: FolderIndex, report: FolderReport) -> FolderIndex:
    if index.captions is None:
        raise BadFileError(f"{index.root} has no captions: give a metadata.jsonl with file_name and text per line, "
                           "or a .txt file beside each image (cat.png -> cat.txt)")
    missing = [i for i, caption in enumerate(index.captions) if caption is None]
    report.skipped["no_caption"] += [index.files[i] for i in missing]
    return index.take([i for i, caption in enumerate(index.captions) if caption is not None])


def _stored(index: FolderIndex, transform: FolderTransform, storage: str, workers: int, report: FolderReport,
            cache_dir, log):
    """The images of ``index`` in ``storage`` and the positions kept (failures go into ``report``)."""
    if storage == "stream":
        return StreamImages(index.files, index.keys, index.labels, transform), np.arange(len(index))
    if storage == "cache":
        images, failed = cached_folder(index.root, index.files, index.keys, transform, cache_dir, workers, log)
        report.skipped["unreadable"] += [index.files[i] for i in failed]
        return images, np.setdiff1d(np.arange(len(index)), np.asarray(failed, dtype=np.int64))
    results = _decode_all(index, transform, workers)
    keep = []
    for i, result in enumerate(results):
        if isinstance(result, TooSmall):
            report.skipped["too_small"].append(index.files[i])
        elif isinstance(result, Exception):
            report.skipped["unreadable"].append(index.files[i])
        else:
            keep.append(i)
    r = transform.resolution
    images = np.stack([results[i] for i in keep]) if keep else np.zeros((0, r, r, transform.channels), np.uint8)
    return images, np.asarray(keep, dtype=np.int64)


def load_image_folder(path: str | Path, resolution: int, channels: int | None = 3, workers: int | None = None,
                      min_size: int = 8, *, storage: str = "memory", split: str = "train", val_fraction: float = 0.0,
                      val_dir: str | Path | None = None, limit: int | None = None, fit: str = "crop",
                      filter: str = "auto", background=(255, 255, 255), captions: bool = False,
                      cache_dir: str | Path | None = None, log=None) -> tuple[ImageArrays, FolderReport]:
    """The usable images of ``split`` under ``path`` as uint8 ``[N, resolution, resolution, channels]`` in
    ``storage``, and what was left out (module docstring). ``channels`` None: 1 when every image is grey, 3 when
    every one has colour, an error when the folder mixes them. Raises BadFileError when no image is usable."""
    if storage not in STORAGES:
        raise UsageError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
    if not 0 <= val_fraction < 1:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction and val_dir is not None:
        raise UsageError("give either val_fraction or val_dir for the held-out split, not both")
    if resolution < 1:
        raise UsageError(f"resolution must be positive, got {resolution}")
    if channels not in (None, 1, 3):
        raise UsageError(f"channels must be 1 or 3, got {channels}")
    index = split_index(index_folder(path, min_size, workers), split, val_fraction, val_dir, min_size, workers)
    report = index.report
    if captions:
        index = _with_captions(index, report)
    if limit is not None:
        index = index.take(range(min(int(limit), len(index))))
    transform = FolderTransform(resolution, channels or index.channels(), fit, filter, tuple(background))
    workers = workers or min(4, os.cpu_count() or 1)
    images, keep = _stored(index, transform, storage, workers, report, cache_dir, log)
    for paths in report.skipped.values():
        paths.sort()
    if not len(keep):
        raise BadFileError(f"no usable images in {index.root}: {report.describe()}")
    if captions:
        texts = [index.captions[i] for i in keep]
        names = tuple(sorted(set(texts)))
        number = {text: k for k, text in enumerate(names)}
        labels = np.array([number[t] for t in texts], dtype=np.int64)
    else:
        names, labels = index.class_names, index.labels[keep]
    return ImageArrays(images, labels, len(names), names), report


def image_folder(path: str | Path, resolution: int, channels: int | None = 3, workers: int | None = None,
                 strict: bool = False, min_size: int = 8, **options) -> ImageArrays:
    """:func:`load_image_folder`, reporting what was left out: one warning that counts the skipped files by
    category, or with ``strict=True`` a BadFileError listing them. Files are decoded by ``workers`` threads
    (default ``min(4, os.cpu_count())``); ``options`` go to :func:`load_image_folder` (storage, split, ...)."""
    data, report = load_image_folder(path, resolution, channels, workers, min_size, **options)
    if report.counts:
        skipped = sum(n for k, n in report.counts.items() if k != "empty_class")
        message = f"{report.root}: skipped {skipped} of {report.files} files: {report.describe()}"
        if strict:
            raise BadFileError(f"{message}. Fix or remove these files, or drop --strict (data.strict) to skip them "
                               "with a warning")
        warnings.warn(message, stacklevel=2)
    return data
