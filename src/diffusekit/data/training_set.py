"""The training images a run's ``data`` config section describes: split, size, limit and intensity."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .builtin import DATASETS, ImageArrays
from .datasets import open_dataset
from .intensity import random_intensity
from .lazy_images import FlippedImages
from .transform import resize_arrays

if TYPE_CHECKING:  # the config layer sits above data: the section is only read here
    from ..config import DataConfig

__all__ = ["folder_options", "has_held_out", "load_training_data", "xflip_arrays"]


def folder_options(data: DataConfig) -> dict:
    """The image-folder options of ``data`` (for :func:`open_dataset`; empty for a built-in dataset)."""
    if data.name in DATASETS:
        return {}
    return {"strict": data.strict, "min_size": data.min_size, "storage": data.storage, "fit": data.fit,
            "filter": data.filter, "background": tuple(data.background), "val_fraction": data.val_fraction,
            "val_dir": data.val_dir, "cache_dir": data.cache_dir, "captions": data.captions}


def has_held_out(data: DataConfig) -> bool:
    """Whether the dataset has a held-out (``test``) split: built-ins do, folders with val_fraction / val_dir."""
    return data.name in DATASETS or bool(data.val_fraction) or data.val_dir is not None


def xflip_arrays(arrays: ImageArrays) -> ImageArrays:
    """EDM's x-flips: 2N images, image i + N is image i mirrored (read lazily: no copy of the images)."""
    return ImageArrays(FlippedImages(arrays.images), np.concatenate([arrays.labels, arrays.labels]),
                       arrays.num_classes, arrays.class_names)


def _first(arrays: ImageArrays, limit: int | None) -> ImageArrays:
    if limit is None:
        return arrays
    return ImageArrays(arrays.images[:limit], arrays.labels[:limit], arrays.num_classes, arrays.class_names)


def load_training_data(data: DataConfig) -> ImageArrays:
    """The configured dataset: the split, its first ``limit`` examples, at the configured size, with the random
    global intensity of ``data.intensity`` (diffusekit.data.intensity; image i keyed by its index i), doubled by
    x-flips with ``data.xflip``."""
    if data.name not in DATASETS:  # folders: decoded straight to the size in data.storage, bad files counted
        arrays = open_dataset(data.name, split=data.split, resolution=data.resolution, channels=data.channels,
                              mode=data.resize, limit=data.limit, **folder_options(data))
    elif data.limit is None:
        arrays = open_dataset(data.name, split=data.split, resolution=data.resolution, channels=data.channels,
                              mode=data.resize)
    else:
        arrays = _first(open_dataset(data.name, split=data.split), data.limit)  # subset first: less to resize
        arrays = resize_arrays(arrays, data.resolution, data.channels, data.resize)
    arrays = random_intensity(arrays, data.intensity)
    return xflip_arrays(arrays) if data.xflip else arrays
