"""How a folder image becomes a square uint8 array: the fit of a non-square image, the resize filter, the colour.

Fits (``fit``):

- ``crop``: the centred square of side ``min(width, height)``, resized to the target (the default);
- ``random_crop``: a square of the same side at an offset drawn from a hash of the file's path relative to the
  folder, so every file keeps one crop for good (the same in every epoch, storage mode and resumed run; a
  crop chosen once, like preparing the dataset by hand; per-epoch augmentation is ``data.augment``'s job);
- ``pad``: the image centred on a square canvas of side ``max(width, height)`` in the background colour, then
  resized (nothing is cut off);
- ``stretch``: resized to the square directly, the aspect ratio lost.

Filters (``filter``): ``auto`` picks by scale as :func:`diffusekit.data.transform.resample_filter` does (BOX when
shrinking 2x or more, LANCZOS when shrinking less, BICUBIC when enlarging); the others are Pillow's filters by
name. Each image is resampled once (the crop is the resize's source box).

Colour: transparency is composited on ``background`` (an RGB triple, white by default; ``pad`` fills with it
too), then the image is converted to grey (``channels`` 1, ITU-R 601-2 luma) or RGB (``channels`` 3).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import UsageError
from .transform import resample_filter

__all__ = ["FILTERS", "FITS", "FolderTransform", "path_fraction"]

FITS = ("crop", "random_crop", "pad", "stretch")
FILTERS = {"nearest": Image.NEAREST, "box": Image.BOX, "bilinear": Image.BILINEAR, "hamming": Image.HAMMING,
           "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def path_fraction(key: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``key`` (a relative path): the first 8 bytes of sha256(salt + key) / 2^64."""
    digest = hashlib.sha256((salt + key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


@dataclass(frozen=True)
class FolderTransform:
    """The settings that turn one decoded image into uint8 ``[resolution, resolution, channels]``."""

    resolution: int
    channels: int = 3
    fit: str = "crop"
    filter: str = "auto"
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self):
        if self.resolution < 1:
            raise UsageError(f"resolution must be positive, got {self.resolution}")
        if self.channels not in (1, 3):
            raise UsageError(f"channels must be 1 or 3, got {self.channels}")
        if self.fit not in FITS:
            raise UsageError(f"unknown fit {self.fit!r}; choose one of {', '.join(FITS)}")
        if self.filter != "auto" and self.filter not in FILTERS:
            raise UsageError(f"unknown filter {self.filter!r}; choose auto or one of {', '.join(FILTERS)}")
        background = tuple(int(v) for v in self.background)
        if len(background) != 3 or not all(0 <= v <= 255 for v in background):
            raise UsageError(f"background must be three values in 0..255 (R, G, B), got {list(self.background)}")
        object.__setattr__(self, "background", background)

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def fill(self, mode: str):
        """The background in Pillow ``mode`` ("L": its luma, as ``convert("L")`` computes it)."""
        return Image.new("RGB", (1, 1), self.background).convert(mode).getpixel((0, 0))

    def settings(self) -> dict:
        """Everything that changes the pixels, for cache keys."""
        return {"resolution": self.resolution, "channels": self.channels, "fit": self.fit, "filter": self.filter,
                "background": list(self.background)}

    def _filter(self, source: int):
        return resample_filter(source, self.resolution) if self.filter == "auto" else FILTERS[self.filter]

    def apply(self, image, key: str = "") -> np.ndarray:
        """A flattened Pillow image (mode L or RGB) as uint8 ``[resolution, resolution, channels]``; ``key`` (the
        relative path) places ``random_crop``."""
        width, height = image.size
        target = (self.resolution, self.resolution)
        if self.fit == "stretch":
            if (width, height) != target:
                image = image.resize(target, self._filter(min(width, height)))
        elif self.fit == "pad":
            side = max(width, height)
            if width != height:
                canvas = Image.new(image.mode, (side, side), self.fill(image.mode))
                canvas.paste(image, ((side - width) // 2, (side - height) // 2))
                image = canvas
            if side != self.resolution:
                image = image.resize(target, self._filter(side))
        else:
            side = min(width, height)
            if self.fit == "random_crop":
                left = int(path_fraction(key, "crop-x") * (width - side + 1))
                top = int(path_fraction(key, "crop-y") * (height - side + 1))
            else:
                left, top = (width - side) // 2, (height - side) // 2
            box = (left, top, left + side, top + side)
            if side == self.resolution:
                image = image.crop(box) if width != height else image
            else:
                image = image.resize(target, self._filter(side), box=box)
        return np.asarray(image, dtype=np.uint8).reshape(self.resolution, self.resolution, self.channels)
