"""Data: built-in offline datasets, image folders, resizing, and an infinite, resumable sampler."""

from __future__ import annotations

from .builtin import DATASETS, DatasetNotInstalled, ImageArrays, load
from .datasets import open_dataset
from .folder import image_folder
from .sampler import InfiniteSampler
from .training_set import load_training_data
from .transform import resize_arrays

__all__ = ["DATASETS", "DatasetNotInstalled", "ImageArrays", "load", "image_folder", "resize_arrays",
           "open_dataset", "load_training_data", "InfiniteSampler"]
