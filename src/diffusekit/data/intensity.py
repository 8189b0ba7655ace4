"""Random global intensity: each image at its own brightness level, so mean brightness varies widely.

The data of the zero-terminal-SNR experiment (Lin et al. 2023; docs/objectives.md, "Zero terminal SNR: the
brightness experiment"): does a model draw the data's spread of mean brightness? Plain MNIST has nearly one
mean brightness (std 0.09 in [-1, 1]); this transform gives each image a random one.

``intensity = [low, high]`` or ``[low, high, contrast]`` (the config key ``data.intensity``): image i (in
[-1, 1]) becomes

    x' = clip(level_i + contrast * (x + 1) / 2, -1, 1),   level_i = low + (high - low) * u_i

so its black (x = -1) goes to ``level_i`` and its white (x = +1) to ``level_i + contrast`` (``contrast``
defaults to 1: strokes one unit above the background; ``[-1, -1, 2]`` is the identity). On MNIST, whose
pixels are 80 % background, the mean brightness of an image is about ``level_i + 0.13 * contrast``:
``[-1, 0.8]`` spreads it from about -0.87 (black background, grey strokes) to 0.86 (light grey background,
white strokes).

``u_i`` in [0, 1) is a hash (SplitMix64) of the image's index in its split, not a draw from any random
generator: the level of an image never changes between runs, with ``data.limit`` (which keeps the first N
images) or on resume, and applying the transform consumes none of the trainer's random numbers. It is
applied once, to the uint8 arrays at load time (:func:`diffusekit.data.training_set.load_training_data`),
after resizing; results are rounded back to uint8.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .builtin import ImageArrays

__all__ = ["check_intensity", "intensity_levels", "random_intensity", "mean_brightness"]

_SALT = np.uint64(0x1D1A_5EED_B817_0A5E)  # fixed: the levels belong to the data, not to a run's seed


def check_intensity(intensity: Sequence[float]) -> tuple[float, float, float]:
    """``(low, high, contrast)`` from ``[low, high]`` or ``[low, high, contrast]``; ValueError if out of range.

    ``low <= high``, both in [-1, 1]; ``contrast`` in (0, 2].
    """
    values = list(intensity)
    if len(values) not in (2, 3) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                            for v in values):
        raise ValueError(f"expected [low, high] or [low, high, contrast] (numbers), got {intensity!r}")
    low, high = float(values[0]), float(values[1])
    contrast = float(values[2]) if len(values) == 3 else 1.0
    if not (-1.0 <= low <= high <= 1.0):
        raise ValueError(f"the levels must satisfy -1 <= low <= high <= 1 (the data range), got low={low:g}, "
                         f"high={high:g}")
    if not 0.0 < contrast <= 2.0:
        raise ValueError(f"contrast (the third value) must be in (0, 2], got {contrast:g}")
    return low, high, contrast


def _unit_hash(indices: np.ndarray) -> np.ndarray:
    """SplitMix64 of each index (with a fixed salt), as a float64 in [0, 1)."""
    z = indices.astype(np.uint64) ^ _SALT
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E37_79B9_7F4A_7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def intensity_levels(indices, low: float, high: float) -> np.ndarray:
    """The background level of each image index: ``low + (high - low) * u_i`` (float64)."""
    indices = np.asarray(indices)
    if indices.size and (not np.issubdtype(indices.dtype, np.integer) or indices.min() < 0):
        raise ValueError("image indices must be non-negative integers")
    return low + (high - low) * _unit_hash(indices)


def random_intensity(arrays: ImageArrays, intensity: Sequence[float] | None, indices=None) -> ImageArrays:
    """``arrays`` with image i at its random level (module docstring); ``indices``: each image's index in its
    split (default 0..N-1, right for a split's first N images). ``intensity`` None returns ``arrays``."""
    if intensity is None:
        return arrays
    low, high, contrast = check_intensity(intensity)
    n = len(arrays.images)
    indices = np.arange(n) if indices is None else np.asarray(indices)
    if indices.shape != (n,):
        raise ValueError(f"need one index per image: {n} images, indices of shape {indices.shape}")
    level = intensity_levels(indices, low, high).reshape(-1, *([1] * (arrays.images.ndim - 1)))
    x = arrays.images.astype(np.float32) / 127.5 - 1
    x = np.clip(level.astype(np.float32) + np.float32(contrast / 2) * (x + 1), -1.0, 1.0)
    images = np.rint((x + 1) * 127.5).astype(np.uint8)
    return ImageArrays(images, arrays.labels, arrays.num_classes, arrays.class_names)


def mean_brightness(images) -> np.ndarray:
    """Per-image mean brightness in [-1, 1]: uint8 ``[N, H, W, C]`` arrays, or float ``[N, ...]`` already in
    [-1, 1] (e.g. samples as NCHW tensors; clipped to [-1, 1] first, as when they are saved)."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        x = array.astype(np.float64) / 127.5 - 1
    else:
        x = np.clip(array.astype(np.float64), -1.0, 1.0)
    return x.reshape(len(x), -1).mean(axis=1)
