"""Data: built-in offline datasets, image folders, resizing, an infinite, resumable sampler, and video clips
(Moving MNIST, Cahn-Hilliard simulations, folders of videos)."""

from __future__ import annotations

from .builtin import DATASETS, DatasetNotInstalled, ImageArrays, load
from .cahn_hilliard import cahn_hilliard
from .clip_datasets import CLIP_DATASETS, load_clips
from .clips import ClipArrays
from .datasets import open_dataset
from .folder import image_folder
from .moving_mnist import moving_mnist
from .sampler import InfiniteSampler
from .training_set import load_training_data
from .transform import resize_arrays
from .video_folder import VideoFolder, video_folder

__all__ = ["DATASETS", "DatasetNotInstalled", "ImageArrays", "load", "image_folder", "resize_arrays",
           "open_dataset", "load_training_data", "InfiniteSampler", "ClipArrays", "CLIP_DATASETS", "load_clips",
           "moving_mnist", "cahn_hilliard", "video_folder", "VideoFolder"]
