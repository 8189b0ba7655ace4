"""``diffusekit restore``'s files: the images it reads (a file, a folder, an .npz), the grid and .npz it writes, and
the rule that an output never lands on an input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .._files import atomic_write
from ..data.folder import IMAGE_EXTENSIONS
from ..errors import BadFileError, MissingFileError, UsageError
from ..images import make_grid, save_png, to_uint8
from ..metrics.stats import open_npz

__all__ = ["read_images", "check_outputs", "write_grid", "write_npz"]


def _image_file(path: Path, channels: int) -> np.ndarray:
    """uint8 [H, W, C] of one image file at its own size (no resizing: the size is checked against the model)."""
    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise BadFileError(f"--input {path}: not a readable image ({e})") from None
    return array.reshape(*array.shape[:2], channels)


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def _from_uint8(pixels: np.ndarray) -> Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _npz_images(path: Path) -> Tensor:
    with open_npz(path) as data:
        if "images" not in data.files:
            raise BadFileError(f"--input {path} has no 'images' array (it holds {', '.join(data.files) or 'none'})")
        images = np.asarray(data["images"])
    if images.ndim != 4:
        raise BadFileError(f"--input {path}: 'images' must be 4-D (uint8 NHWC or float NCHW), got shape "
                           f"{list(images.shape)}")
    if images.dtype == np.uint8:
        return _from_uint8(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise BadFileError(f"--input {path}: 'images' must be uint8 NHWC or float NCHW in [-1, 1], got {images.dtype}")
    x = torch.from_numpy(images.astype(np.float32))
    if not bool(torch.isfinite(x).all()):
        raise BadFileError(f"--input {path}: 'images' holds NaN or infinite values")
    return x


def read_images(path: str | Path, channels: int) -> Tensor:
    """float [N, C, H, W] in [-1, 1] from an image file, a folder of images (sorted by name, all one size) or an
    .npz whose ``images`` are uint8 NHWC or float NCHW (as ``diffusekit sample --out`` writes them)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"--input {path}: no such file or folder")
    if path.suffix.lower() == ".npz":
        return _npz_images(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise BadFileError(f"--input {path}: the folder holds no image files "
                               f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        arrays = [_image_file(p, channels) for p in files]
        odd = next((i for i, a in enumerate(arrays) if a.shape != arrays[0].shape), None)
        if odd is not None:
            raise BadFileError(f"--input {path}: the images differ in size ({files[0].name} is "
                               f"{_size(arrays[0])}, {files[odd].name} {_size(arrays[odd])}): give one size")
        return _from_uint8(np.stack(arrays))
    return _from_uint8(_image_file(path, channels)[None])


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_outputs(outs: list[str], inputs: list[str]) -> list[Path]:
    """The --out paths, refused before any work where one is not a .png / .npz, or would replace an input file
    (the images, the mask) or write into an input folder: inputs are never overwritten."""
    resolved_inputs = [Path(p).expanduser().resolve() for p in inputs if p]
    paths = []
    for out in outs:
        path = Path(out)
        if path.suffix.lower() not in (".png", ".npz"):
            raise UsageError(f"--out {out}: write a .png grid or a .npz array file")
        target = path.expanduser().resolve()
        for given, source in zip([p for p in inputs if p], resolved_inputs, strict=True):
            if target == source or (source.is_dir() and _inside(target, source)):
                where = "is" if target == source else "is inside"
                raise UsageError(f"--out {out} {where} the input {given}: inputs are never overwritten; write the "
                                 "output elsewhere")
        paths.append(path)
    return paths


def write_grid(path: Path, rows: list[Tensor], columns: int) -> None:
    """A PNG grid: for each block of ``columns`` images, one row per entry of ``rows`` (each [N, C, H, W])."""
    n = len(rows[0])
    columns = min(columns, n)
    tiles = []
    for start in range(0, n, columns):
        for row in rows:
            block = row[start:start + columns]
            if len(block) < columns:  # the last block: pad with white (1.0) so rows stay aligned
                block = torch.cat([block, torch.ones(columns - len(block), *block.shape[1:])])
            tiles.append(block)
    save_png(make_grid(torch.cat(tiles), columns), path)


def write_npz(path: Path, restored: dict[str, Tensor], measurements: Tensor, truth: Tensor | None,
              mask: Tensor | None, meta: dict) -> None:
    """``images`` (the first method's restorations, uint8 NHWC), ``images_<method>`` for every method,
    ``measurements`` (float32, the measurement's own shape: exact, noise included), ``truth`` (uint8 NHWC, with
    --degrade), ``mask`` (inpainting: bool, True = observed) and ``meta`` (JSON), replaced atomically."""
    arrays = {"images": to_uint8(next(iter(restored.values())))}
    arrays.update({f"images_{name}": to_uint8(x) for name, x in restored.items()})
    arrays["measurements"] = measurements.float().cpu().numpy()
    if truth is not None:
        arrays["truth"] = to_uint8(truth)
    if mask is not None:
        arrays["mask"] = mask.bool().cpu().numpy()
    atomic_write(path, lambda tmp: np.savez(tmp, meta=json.dumps(meta), **arrays), suffix=".npz")
