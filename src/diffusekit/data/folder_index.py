"""Indexing an image folder once: its image files, their labels, captions and split, and a header check of each.

Labels, in order of precedence: ``labels.csv``, then ``metadata.jsonl``'s ``label`` field (both described in
:mod:`diffusekit.data.folder_meta`; images are then found at any depth, and an image the file does not list is
skipped as ``unlisted``), then class subfolders: each immediate subfolder is a class (sorted names), its
images found at any depth, and images lying directly in the top folder are then an error. A folder without any
of these is unlabelled (``num_classes`` 0, labels 0). Names starting with "." are ignored, and so are files that
are not images by extension (counted as ``not_image``, except the label and metadata files and the ``.txt``
captions beside images). Files are listed in sorted path order.

The header check opens every image without decoding its pixels (Pillow reads the header): files it cannot
identify are ``unreadable``, files with a short side under ``min_size`` are ``too_small``; a class left
without images is dropped (``empty_class``) and the others renumbered in sorted order. A metadata line naming
a file that does not exist is counted as ``missing_file``. A file that passes the header check but fails to
decode is found later: when decoding (memory and cache storage) or when read (stream storage).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import BadFileError, UsageError
from .folder_files import (
    DECODE_ERRORS,
    GREY_MODES,
    IMAGE_EXTENSIONS,
    FolderReport,
    existing_folder,
    files_under,
    is_image,
    read_header,
)
from .folder_meta import LABELS_FILE, METADATA_FILE, class_order, is_held_out, read_metadata

__all__ = ["FolderIndex", "index_folder", "split_index"]


@dataclass(frozen=True)
class FolderIndex:
    """The usable images of a folder (header-checked), in sorted path order."""

    root: Path
    files: list[Path]
    keys: list[str]  # paths relative to root, "/"-separated: what hashes and metadata name
    labels: np.ndarray  # int64 [N]
    class_names: tuple[str, ...]
    captions: list[str | None] | None  # per image; None when the folder has no captions at all
    modes: list[str]  # Pillow mode of each image (from its header)
    report: FolderReport

    def __len__(self) -> int:
        return len(self.files)

    def take(self, positions) -> FolderIndex:
        """The images at ``positions`` (classes and report unchanged)."""
        positions = [int(i) for i in positions]
        return replace(self, files=[self.files[i] for i in positions], keys=[self.keys[i] for i in positions],
                       labels=self.labels[positions] if positions else self.labels[:0],
                       captions=None if self.captions is None else [self.captions[i] for i in positions],
                       modes=[self.modes[i] for i in positions])

    def channels(self) -> int:
        """1 when every image is grey, 3 when every one has colour; a folder that mixes them is an error."""
        grey = [m in GREY_MODES for m in self.modes]
        if all(grey):
            return 1
        if not any(grey):
            return 3
        first_grey = self.keys[grey.index(True)]
        first_colour = self.keys[grey.index(False)]
        raise UsageError(f"{self.root} mixes {sum(grey)} grey and {len(grey) - sum(grey)} colour images (e.g. "
                         f"{first_grey} is grey, {first_colour} colour): set data.channels to 1 or 3")


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _caption_files(images: list[Path], others: list[Path]) -> set[Path]:
    stems = {image.with_suffix("") for image in images}
    return {p for p in others if p.suffix.lower() == ".txt" and p.with_suffix("") in stems}


def _by_subfolders(root: Path, report: FolderReport) -> tuple[list[Path], list[int], list[str], list[Path]]:
    """Images, class indices, class names (empty when unlabelled) and the other files, by class subfolders."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        files, others = files_under(root)
        return files, [0] * len(files), [], others
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and is_image(p.name))
    if loose:
        shown = ", ".join(loose[:5]) + (f" and {len(loose) - 5} more" if len(loose) > 5 else "")
        raise BadFileError(f"{root} has class subfolders ({', '.join(classes)}) and also images outside them: "
                           f"{shown}. Move them into a class folder, give a {LABELS_FILE}, or point at a folder "
                           "without subfolders")
    others = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    files, labels = [], []
    for k, name in enumerate(classes):
        found, rest = files_under(root / name)
        others += rest
        files += found
        labels += [k] * len(found)
    return files, labels, classes, others


def _header(path: Path) -> tuple[tuple[int, int], str] | Exception:
    try:
        return read_header(path)
    except DECODE_ERRORS as error:  # sorted into the report by the caller
        return error


def index_folder(path: str | Path, min_size: int = 8, workers: int | None = None) -> FolderIndex:
    """Index the folder at ``path`` (module docstring). Raises BadFileError when no image is usable."""
    root = existing_folder(path, "images")
    if min_size < 1:
        raise UsageError(f"min_size must be positive, got {min_size}")
    report = FolderReport(root, min_size=min_size)
    meta = read_metadata(root)
    if meta.labels is not None:
        files, others = files_under(root)
        keyed = {_relative(f, root): f for f in files}
        report.skipped["unlisted"] += [f for key, f in keyed.items() if key not in meta.labels]
        files = [f for key, f in keyed.items() if key in meta.labels]
        class_names = class_order({meta.labels[_relative(f, root)] for f in files})
        number = {name: k for k, name in enumerate(class_names)}
        labels = [number[meta.labels[_relative(f, root)]] for f in files]
    else:
        files, labels, class_names, others = _by_subfolders(root, report)
    known = {root / LABELS_FILE, root / METADATA_FILE} | _caption_files(files, others)
    report.skipped["not_image"] += [p for p in others if p not in known]
    report.files = len(files) + len(report.skipped["unlisted"]) + len(report.skipped["not_image"])
    present = {_relative(f, root) for f in files} | {_relative(f, root) for f in report.skipped["unlisted"]}
    report.skipped["missing_file"] += [root / name for name in sorted(meta.named() - present)]

    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(files) > 1:
        with ThreadPoolExecutor(workers) as pool:
            headers = list(pool.map(_header, files))
    else:
        headers = [_header(f) for f in files]
    keep = []
    for i, header in enumerate(headers):
        if isinstance(header, Exception):
            report.skipped["unreadable"].append(files[i])
        elif min(header[0]) < min_size:
            report.skipped["too_small"].append(files[i])
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
    kept = [files[i] for i in keep]
    keys = [_relative(f, root) for f in kept]
    captions = [meta.captions.get(key) for key in keys]
    for k, file in enumerate(kept):
        if captions[k] is None and file.with_suffix(".txt").is_file():
            captions[k] = file.with_suffix(".txt").read_text(encoding="utf-8").strip()
    return FolderIndex(root, kept, keys,
                       np.array([renumber[labels[i]] if class_names else 0 for i in keep], dtype=np.int64),
                       tuple(class_names[k] for k in used) if class_names else (),
                       captions if any(c is not None for c in captions) else None,
                       [headers[i][1] for i in keep], report)


def split_index(index: FolderIndex, split: str, val_fraction: float = 0.0, val_dir: str | Path | None = None,
                min_size: int = 8, workers: int | None = None) -> FolderIndex:
    """The ``train`` or ``test`` (held-out) part of ``index``: with ``val_fraction``, the files whose path hash
    falls under it are held out; with ``val_dir``, that folder (indexed alike, its labels mapped onto the
    training folder's classes by name) is the held-out split and ``index`` all of training."""
    if split not in ("train", "test"):
        raise UsageError(f"unknown split {split!r} for the image folder {index.root}: choose train or test "
                         "(test: the held-out split of data.val_fraction or data.val_dir)")
    if val_dir is not None:
        if split == "train":
            return index
        held = index_folder(val_dir, min_size, workers)
        number = {name: k for k, name in enumerate(index.class_names)}
        names = held.class_names if held.class_names else ()
        unknown = sorted(set(names) - set(number))
        if unknown or bool(names) != bool(index.class_names):
            raise BadFileError(f"the held-out folder {held.root} has classes ({', '.join(names) or 'none'}) that "
                               f"{index.root} has not ({', '.join(index.class_names) or 'none'}): give it the same "
                               "class folders or labels")
        labels = np.array([number[names[k]] for k in held.labels], dtype=np.int64) if names else held.labels
        return replace(held, labels=labels, class_names=index.class_names)
    if split == "test" and not val_fraction:
        raise UsageError(f"the image folder {index.root} has no held-out split: set data.val_fraction (a share of "
                         "its files, fixed by a hash of their paths) or data.val_dir (a folder of held-out images)")
    held = np.array([is_held_out(key, val_fraction) for key in index.keys], dtype=bool)
    chosen = np.flatnonzero(held if split == "test" else ~held)
    if not len(chosen):
        raise UsageError(f"the {split} split of {index.root} (data.val_fraction {val_fraction}) holds no images: "
                         f"the folder has {len(index)}")
    return index.take(chosen)
