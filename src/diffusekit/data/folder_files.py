"""Reading the files of an image folder: which files are images, decoding one to a square uint8 array, and
the report of the files left out.

Each image is turned upright by its EXIF orientation, composited on the background colour (white by default)
where it has transparency (RGBA, LA, P with a transparent colour), converted to L (``channels=1``) or RGB
(``channels=3``; CMYK, 1-bit, float and 16-bit modes too) and fitted to the square by
:class:`~diffusekit.data.folder_transform.FolderTransform` (by default: scaled so its short side is
``resolution`` and centre-cropped). Animated files give their first frame; 16-bit grey images are scaled to 8
bits (divided by 257).

Files that cannot be used are sorted into categories (:data:`SKIP_CATEGORIES`).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import MissingFileError, UsageError
from .folder_transform import FolderTransform

__all__ = ["DECODE_ERRORS", "GREY_MODES", "IMAGE_EXTENSIONS", "SKIP_CATEGORIES", "FolderReport", "TooSmall",
           "describe_skipped", "existing_folder", "files_under", "flatten_image", "is_image", "read_header",
           "read_image"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# what Pillow raises for a corrupt, truncated or hostile file (UnidentifiedImageError is an OSError)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


# category -> how the warning names it; {examples} are a few of the paths, {min_size} the size limit
SKIP_CATEGORIES = {"unreadable": "unreadable (truncated or corrupt: {examples})",
                   "too_small": "too small (short side < {min_size} px: {examples})",
                   "not_image": "not images ({examples})",
                   "empty_class": "empty class folders, dropped ({examples})",
                   "missing_file": "metadata lines naming missing files ({examples})",
                   "unlisted": "images without a label in the label file ({examples})",
                   "no_caption": "images without a caption ({examples})"}
# Pillow modes without colour: a folder of these alone is grey (data.channels null -> 1)
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def existing_folder(path: str | Path, what: str) -> Path:
    """``path`` with ``~`` expanded, checked to be a directory; ``what`` names its contents in the error
    ("images", "videos")."""
    root = Path(path).expanduser()
    if not root.exists():
        raise MissingFileError(f"{what[:-1]} folder {root} does not exist")
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory: give a folder of {what}")
    return root


@dataclass
class FolderReport:
    """What :func:`load_image_folder` left out of ``root``, by category (paths; class folders for empty_class)."""

    root: Path
    files: int = 0  # files looked at (hidden ones excluded)
    min_size: int = 8
    skipped: dict[str, list[Path]] = field(default_factory=lambda: {k: [] for k in SKIP_CATEGORIES})

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.skipped.items() if v}

    def describe(self, examples: int = 3) -> str:
        """``2 unreadable (truncated or corrupt: a.png, b.jpg), 1 too small (short side < 8 px: c.png)``."""
        return describe_skipped(self.skipped, self.root, SKIP_CATEGORIES, examples, min_size=self.min_size)


def describe_skipped(skipped: dict[str, list[Path]], root: Path, categories: dict[str, str], examples: int = 3,
                     **fields) -> str:
    """One phrase per category with skipped paths: its count and ``categories[key]`` filled with a few of the
    paths (relative to ``root``) as ``{examples}`` and ``fields`` (e.g. ``min_size``)."""
    parts = []
    for key, paths in skipped.items():
        if paths:
            names = [str(p.relative_to(root)) for p in paths]
            more = f" and {len(names) - examples} more" if len(names) > examples else ""
            parts.append(f"{len(paths)} " + categories[key].format(examples=", ".join(names[:examples]) + more,
                                                                  **fields))
    return ", ".join(parts)


class TooSmall(Exception):
    """An image whose short side is under the folder's ``min_size``."""


def flatten_image(image, mode: str, background: tuple[int, int, int] = (255, 255, 255)):
    """A Pillow image in ``mode`` ("L" or "RGB"), transparency composited on ``background``; 16-bit and float
    grey scaled or rounded to 8 bits."""
    if image.mode.startswith("I;16") or image.mode == "I":  # Pillow would clip 16-bit values at 255
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey)
    elif image.mode == "F":  # floats: clipped to 0..255 and rounded, as Pillow's own convert would not round
        image = Image.fromarray(np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba)
    return image.convert(mode)


def read_image(path: str | Path, resolution: int, channels: int = 3, min_size: int = 1,
               transform: FolderTransform | None = None, key: str = "") -> np.ndarray:
    """One image file as uint8 ``[resolution, resolution, channels]`` (steps in the module docstring; ``transform``
    overrides ``resolution`` and ``channels``, ``key`` is the relative path for a random crop). The whole file is
    decoded (a truncated one fails here, not later); a short side under ``min_size`` raises TooSmall."""
    transform = transform or FolderTransform(resolution, channels)
    with Image.open(path) as image:
        if min(image.size) < min_size:
            raise TooSmall(f"{image.size[0]}x{image.size[1]}")
        image.load()
        image = flatten_image(ImageOps.exif_transpose(image), transform.mode, transform.background)
    return transform.apply(image, key)


def read_header(path: str | Path) -> tuple[tuple[int, int], str]:
    """(width, height) and Pillow mode of an image file, from its header only (cheap: no pixels decoded)."""
    with Image.open(path) as image:
        return image.size, image.mode


def is_image(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def files_under(directory: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) at any depth, hidden names skipped, each sorted."""
    images, others = [], []
    for folder, subfolders, files in os.walk(directory):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                (images if is_image(name) else others).append(Path(folder, name))
    return sorted(images), sorted(others)
