"""A dataset by name or path: a built-in dataset, or a folder of images."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .builtin import DATASETS, ImageArrays, load
from .folder import image_folder
from .transform import resize_arrays

__all__ = ["open_dataset"]


def open_dataset(spec: str | Path, split: str = "train", resolution: int | None = None, channels: int | None = None,
                 mode: str = "resize", **options) -> ImageArrays:
    """A built-in dataset by name, or a folder of images by path, at ``resolution`` with ``channels``.

    Built-ins (:data:`DATASETS`) keep their own size and channels where these are None, else go through
    :func:`resize_arrays` (``mode`` "resize" or "pad"); ``options`` go to :func:`load` (``root``). A name that is
    a built-in wins over a folder of that name: write ``./mnist`` for the folder. A folder needs ``resolution``
    (``channels`` None: grey or colour as its images are), has a ``test`` split only with ``val_fraction`` or
    ``val_dir`` and takes the options of :func:`image_folder` (``workers``, ``strict``, ``min_size``,
    ``storage``, ``fit``, ...).
    """
    if isinstance(spec, str) and spec in DATASETS:
        data = load(spec, split, **options)
        if resolution is None and channels is None:
            return data
        return resize_arrays(data, resolution, channels, mode)
    if not Path(spec).expanduser().is_dir():
        raise UsageError(f"unknown dataset {str(spec)!r}: neither a built-in dataset ({', '.join(DATASETS)}) "
                         "nor an existing folder of images (a folder path is also accepted)")
    if resolution is None:
        raise UsageError(f"resolution is needed to load the image folder {spec}: its images are resized to it")
    if mode != "resize":
        raise UsageError(f"mode {mode!r} is for built-in datasets; folder images are fitted by data.fit (crop, "
                         "random_crop, pad or stretch)")
    return image_folder(spec, resolution, channels, split=split, **options)
