"""The training images a run's ``data`` config section describes: split, size, limit and intensity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .builtin import DATASETS, ImageArrays
from .datasets import open_dataset
from .intensity import random_intensity
from .transform import resize_arrays

if TYPE_CHECKING:  # the config layer sits above data: the section is only read here
    from ..config import DataConfig

__all__ = ["load_training_data"]


def _first(arrays: ImageArrays, limit: int | None) -> ImageArrays:
    if limit is None:
        return arrays
    return ImageArrays(arrays.images[:limit], arrays.labels[:limit], arrays.num_classes, arrays.class_names)


def load_training_data(data: DataConfig) -> ImageArrays:
    """The configured dataset: the split, its first ``limit`` examples, at the configured size, with the random
    global intensity of ``data.intensity`` (diffusekit.data.intensity; image i keyed by its index i)."""
    if data.name not in DATASETS:  # folders are decoded straight to the size, bad files counted (data.strict)
        arrays = _first(open_dataset(data.name, split=data.split, resolution=data.resolution, channels=data.channels,
                                     mode=data.resize, strict=data.strict, min_size=data.min_size), data.limit)
    elif data.limit is None:
        arrays = open_dataset(data.name, split=data.split, resolution=data.resolution, channels=data.channels,
                              mode=data.resize)
    else:
        arrays = _first(open_dataset(data.name, split=data.split), data.limit)  # subset first: less to resize
        arrays = resize_arrays(arrays, data.resolution, data.channels, data.resize)
    return random_intensity(arrays, data.intensity)
