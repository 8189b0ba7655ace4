"""A folder of your own images as :class:`ImageArrays`.

Layout: if the folder has subfolders, each immediate subfolder is a class (labels follow the sorted folder names)
and its images are found at any depth; images lying directly in the top folder are then an error, since they
would have no class. A folder without subfolders is unlabelled (``num_classes`` 0, labels 0). Names starting
with "." are ignored, and so are files that are not images by extension (png, jpg, jpeg, bmp, gif, webp, tif,
tiff; any case). Files are read in sorted path order.

Each image is turned upright by its EXIF orientation, composited on white where it has transparency (RGBA, LA,
P with a transparent colour), converted to L (``channels=1``) or RGB (``channels=3``; CMYK, 1-bit, float and
16-bit modes too), scaled so its short side is ``resolution`` and center-cropped (filters in
:mod:`diffusekit.data.transform`). Animated files give their first frame; 16-bit grey images are scaled to 8 bits
(divided by 257).

Every file is decoded once, up front, so a bad file can never stop a training run half-way. Files that cannot be
used are sorted into categories (:data:`SKIP_CATEGORIES`): unreadable (truncated, corrupt, not really an image),
too small (short side under ``min_size``), not an image (another extension; hidden files are ignored and not
counted), and empty class folders (dropped, the other classes renumbered in sorted order). By default they are
skipped with one warning that counts them; ``strict=True`` makes them an error instead. A folder with no usable
image is an error either way.
"""

from __future__ import annotations

import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import BadFileError, MissingFileError, UsageError
from .builtin import ImageArrays
from .transform import fit_square

__all__ = ["IMAGE_EXTENSIONS", "SKIP_CATEGORIES", "FolderReport", "describe_skipped", "flatten_image", "image_folder",
           "load_image_folder", "read_image"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# what Pillow raises for a corrupt, truncated or hostile file (UnidentifiedImageError is an OSError)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


# category -> how the warning names it; {examples} are a few of the paths, {min_size} the size limit
SKIP_CATEGORIES = {"unreadable": "unreadable (truncated or corrupt: {examples})",
                   "too_small": "too small (short side < {min_size} px: {examples})",
                   "not_image": "not images ({examples})",
                   "empty_class": "empty class folders, dropped ({examples})"}


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


class _TooSmall(Exception):
    pass


def flatten_image(image, mode: str):
    """A Pillow image in ``mode`` ("L" or "RGB"), transparency composited on white; 16-bit and float grey
    scaled or rounded to 8 bits."""
    if image.mode.startswith("I;16") or image.mode == "I":  # Pillow would clip 16-bit values at 255
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey)
    elif image.mode == "F":  # floats: clipped to 0..255 and rounded, as Pillow's own convert would not round
        image = Image.fromarray(np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert(mode)


def read_image(path: str | Path, resolution: int, channels: int = 3, min_size: int = 1) -> np.ndarray:
    """One image file as uint8 ``[resolution, resolution, channels]`` (steps in the module docstring). The whole
    file is decoded (a truncated one fails here, not later); a short side under ``min_size`` raises _TooSmall."""
    with Image.open(path) as image:
        if min(image.size) < min_size:
            raise _TooSmall(f"{image.size[0]}x{image.size[1]}")
        image.load()
        image = flatten_image(ImageOps.exif_transpose(image), "L" if channels == 1 else "RGB")
    array = np.asarray(fit_square(image, resolution))
    return array.reshape(resolution, resolution, channels)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _files_under(directory: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) at any depth, hidden names skipped, each sorted."""
    images, others = [], []
    for folder, subfolders, files in os.walk(directory):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                (images if _is_image(name) else others).append(Path(folder, name))
    return sorted(images), sorted(others)


def _find_images(root: Path, report: FolderReport) -> tuple[list[Path], list[int], list[str]]:
    """Image paths, their class indices (into the returned class names) and the class names (empty when
    unlabelled); non-image files go into ``report``."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        files, others = _files_under(root)
        report.skipped["not_image"] += others
        return files, [0] * len(files), []
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and _is_image(p.name))
    if loose:
        shown = ", ".join(loose[:5]) + (f" and {len(loose) - 5} more" if len(loose) > 5 else "")
        raise BadFileError(f"{root} has class subfolders ({', '.join(classes)}) and also images outside them: "
                           f"{shown}. Move them into a class folder, or point at a folder without subfolders")
    report.skipped["not_image"] += sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    files, labels = [], []
    for k, name in enumerate(classes):
        found, others = _files_under(root / name)
        report.skipped["not_image"] += others
        files += found
        labels += [k] * len(found)
    return files, labels, classes


def load_image_folder(path: str | Path, resolution: int, channels: int = 3, workers: int | None = None,
                      min_size: int = 8) -> tuple[ImageArrays, FolderReport]:
    """Every usable image under ``path`` as uint8 ``[N, resolution, resolution, channels]``, and what was left
    out (module docstring). Raises ValueError when no image is usable."""
    root = Path(path).expanduser()
    if not root.exists():
        raise MissingFileError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory: give a folder of images")
    if channels not in (1, 3):
        raise UsageError(f"channels must be 1 or 3, got {channels}")
    if resolution < 1:
        raise UsageError(f"resolution must be positive, got {resolution}")
    if min_size < 1:
        raise UsageError(f"min_size must be positive, got {min_size}")
    report = FolderReport(root, min_size=min_size)
    files, labels, class_names = _find_images(root, report)
    report.files = len(files) + len(report.skipped["not_image"])

    def decode(file: Path) -> np.ndarray | Exception:
        try:
            return read_image(file, resolution, channels, min_size)
        except (_TooSmall, *_DECODE_ERRORS) as error:  # sorted into categories below, for every file at once
            return error

    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(files) > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(decode, files))
    else:
        results = [decode(f) for f in files]
    keep = []
    for i, result in enumerate(results):
        if isinstance(result, _TooSmall):
            report.skipped["too_small"].append(files[i])
        elif isinstance(result, Exception):
            report.skipped["unreadable"].append(files[i])
        else:
            keep.append(i)
    used = sorted({labels[i] for i in keep})
    if class_names:
        report.skipped["empty_class"] += [root / name for k, name in enumerate(class_names) if k not in used]
    if not keep:
        found = report.describe()
        raise BadFileError(f"no usable images in {root}" + (f": {found}" if found else
                           f" (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"))
    renumber = {old: new for new, old in enumerate(used)}
    names = tuple(class_names[k] for k in used) if class_names else ()
    images = np.stack([results[i] for i in keep])
    new_labels = np.array([renumber[labels[i]] if class_names else 0 for i in keep], dtype=np.int64)
    return ImageArrays(images, new_labels, len(names), names), report


def image_folder(path: str | Path, resolution: int, channels: int = 3, workers: int | None = None,
                 strict: bool = False, min_size: int = 8) -> ImageArrays:
    """:func:`load_image_folder`, reporting what was left out: one warning that counts the skipped files by
    category, or with ``strict=True`` a ValueError listing them. Files are decoded by ``workers`` threads
    (default ``min(4, os.cpu_count())``)."""
    data, report = load_image_folder(path, resolution, channels, workers, min_size)
    if report.counts:
        skipped = sum(n for k, n in report.counts.items() if k != "empty_class")
        message = f"{report.root}: skipped {skipped} of {report.files} files: {report.describe()}"
        if strict:
            raise BadFileError(f"{message}. Fix or remove these files, or drop --strict (data.strict) to skip them "
                               "with a warning")
        warnings.warn(message, stacklevel=2)
    return data
