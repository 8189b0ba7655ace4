"""Bring images to one resolution and channel count: resize (short side, then center crop) or pad, grey <-> RGB.

Resampling filter (:func:`resample_filter`): BOX (area average) when shrinking by 2x or more, LANCZOS when shrinking
by less, BICUBIC when enlarging, none at the same size. BOX averages every source pixel once, so large reductions
neither alias nor ring; LANCZOS keeps small reductions sharp; BICUBIC enlarges without LANCZOS's ringing.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import UsageError
from .builtin import ImageArrays

__all__ = ["fit_square", "resample_filter", "resize_arrays", "to_channels"]

MODES = ("resize", "pad")


def resample_filter(source: int, target: int):
    """The Pillow filter for scaling a side of ``source`` pixels to ``target`` (see the module docstring)."""
    if source >= 2 * target:
        return Image.BOX
    return Image.LANCZOS if source > target else Image.BICUBIC


def fit_square(image, resolution: int):
    """A Pillow image scaled so its short side is ``resolution``, center-cropped to ``resolution`` squared.

    Done in one resampling: the centered square of side ``min(width, height)`` is resized to the target.
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    if side == resolution:
        return image.crop(box) if width != height else image
    return image.resize((resolution, resolution), resample_filter(side, resolution), box=box)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` to 1 channel (ITU-R 601-2 luma, as Pillow's ``convert("L")``) or 3 (grey repeated)."""
    if channels not in (1, 3):
        raise UsageError(f"channels must be 1 or 3, got {channels}")
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1:
        return np.repeat(images, 3, axis=-1)
    if have != 3:
        raise ValueError(f"cannot convert {have}-channel images; expected 1 or 3 channels")
    luma = images.astype(np.uint32) @ np.array([19595, 38470, 7471], dtype=np.uint32)  # Pillow's fixed point
    return ((luma + 32768) >> 16).astype(np.uint8)[..., None]


def _resize(images: np.ndarray, resolution: int) -> np.ndarray:
    if images.shape[1] == images.shape[2] == resolution:
        return images
    grey = images.shape[-1] == 1
    out = [np.asarray(fit_square(Image.fromarray(im[..., 0] if grey else im), resolution)) for im in images]
    stacked = np.stack(out) if out else np.zeros((0, resolution, resolution, images.shape[-1]), np.uint8)
    return stacked.reshape(len(images), resolution, resolution, images.shape[-1])


def _pad(images: np.ndarray, resolution: int) -> np.ndarray:
    height, width = images.shape[1:3]
    if height > resolution or width > resolution:
        raise UsageError(f"cannot pad {width}x{height} images to {resolution}x{resolution}: use mode='resize'")
    top, left = (resolution - height) // 2, (resolution - width) // 2
    padding = ((0, 0), (top, resolution - height - top), (left, resolution - width - left), (0, 0))
    return np.pad(images, padding)


def resize_arrays(arrays: ImageArrays, resolution: int | None = None, channels: int | None = None,
                  mode: str = "resize") -> ImageArrays:
    """``arrays`` at ``resolution`` squared with ``channels`` channels (None keeps either); labels are unchanged.

    ``mode="resize"``: scale the short side to ``resolution`` and center-crop (see :func:`fit_square`).
    ``mode="pad"``: center the images on a black (0) canvas, e.g. MNIST 28x28 -> 32x32 as in the LeNet papers;
    the images must not be larger than ``resolution``.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if resolution is not None and resolution < 1:
        raise UsageError(f"resolution must be positive, got {resolution}")
    images = arrays.images
    if channels == 1:  # shrink channels before resizing, grow them after: less work either way
        images = to_channels(images, 1)
    if resolution is not None:
        images = _pad(images, resolution) if mode == "pad" else _resize(images, resolution)
    if channels is not None:
        images = to_channels(images, channels)
    return ImageArrays(images, arrays.labels, arrays.num_classes, arrays.class_names)
