"""Data: built-in offline datasets and an infinite, resumable sampler."""

from .builtin import DATASETS, ImageArrays, load
from .sampler import InfiniteSampler

__all__ = ["DATASETS", "ImageArrays", "load", "InfiniteSampler"]
