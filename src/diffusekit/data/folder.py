"""A folder of your own images as :class:`ImageArrays`.

Layout: if the folder has subfolders, each immediate subfolder is a class (labels follow the sorted folder names)
and its images are found at any depth; images lying directly in the top folder are then an error, since they
would have no class. A folder without subfolders is unlabelled (``num_classes`` 0, labels 0). Names starting
with "." are ignored, and so are files that are not images by extension (png, jpg, jpeg, bmp, gif, webp, tif,
tiff; any case). Files are read in sorted path order.

Each image is turned upright by its EXIF orientation, composited on white where it has transparency (RGBA, LA,
P with a transparent colour), converted to L (``channels=1``) or RGB (``channels=3``), scaled so its short side
is ``resolution`` and center-cropped (filters in :mod:`diffusekit.data.transform`). Animated files give their
first frame; 16-bit grey images are scaled to 8 bits (divided by 257).
"""

from __future__ import annotations

import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .builtin import ImageArrays
from .transform import fit_square

__all__ = ["IMAGE_EXTENSIONS", "image_folder", "read_image"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# what Pillow raises for a corrupt, truncated or hostile file (UnidentifiedImageError is an OSError)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _flatten(image, mode: str):
    """A Pillow image in ``mode`` ("L" or "RGB"), transparency composited on white."""
    if image.mode.startswith("I;16") or image.mode == "I":  # Pillow would clip 16-bit values at 255
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert(mode)


def read_image(path: str | Path, resolution: int, channels: int = 3) -> np.ndarray:
    """One image file as uint8 ``[resolution, resolution, channels]`` (steps in the module docstring)."""
    with Image.open(path) as image:
        image = _flatten(ImageOps.exif_transpose(image), "L" if channels == 1 else "RGB")
    array = np.asarray(fit_square(image, resolution))
    return array.reshape(resolution, resolution, channels)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _images_under(directory: Path) -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(directory):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(folder, f) for f in files if _is_image(f)]
    return sorted(found)


def _find_images(root: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Image paths, their labels and the class names (empty when unlabelled)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        files = _images_under(root)
        if not files:
            raise ValueError(f"no image files in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return files, np.zeros(len(files), dtype=np.int64), ()
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and _is_image(p.name))
    if loose:
        shown = ", ".join(loose[:5]) + (f" and {len(loose) - 5} more" if len(loose) > 5 else "")
        raise ValueError(f"{root} has class subfolders ({', '.join(classes)}) and also images outside them: "
                         f"{shown}. Move them into a class folder, or point at a folder without subfolders")
    per_class = [_images_under(root / name) for name in classes]
    empty = [name for name, files in zip(classes, per_class, strict=True) if not files]
    if empty:
        raise ValueError(f"class folders without images in {root}: {', '.join(empty)}")
    labels = np.concatenate([np.full(len(files), k, dtype=np.int64) for k, files in enumerate(per_class)])
    return [f for files in per_class for f in files], labels, tuple(classes)


def image_folder(path: str | Path, resolution: int, channels: int = 3, workers: int | None = None,
                 skip_unreadable: bool = False) -> ImageArrays:
    """Every image under ``path`` as uint8 ``[N, resolution, resolution, channels]`` (layout: module docstring).

    Files are decoded by ``workers`` threads (default ``min(4, os.cpu_count())``). An unreadable file raises
    ValueError naming it; with ``skip_unreadable=True`` it is left out with a warning naming it instead.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory: give a folder of images")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    files, labels, class_names = _find_images(root)

    def decode(file: Path) -> np.ndarray | Exception:
        try:
            return read_image(file, resolution, channels)
        except _DECODE_ERRORS as error:  # reported below, for every file at once
            return error

    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(decode, files))
    else:
        results = [decode(f) for f in files]
    bad = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    for i in bad:
        if not skip_unreadable:
            raise ValueError(f"cannot read image {files[i]}: {results[i]}") from results[i]
        warnings.warn(f"skipping unreadable image {files[i]}: {results[i]}", stacklevel=2)
    keep = np.setdiff1d(np.arange(len(files)), bad)
    if len(keep) == 0:
        raise ValueError(f"no readable images in {root}")
    images = np.stack([results[i] for i in keep])
    return ImageArrays(images, labels[keep], len(class_names), class_names)
