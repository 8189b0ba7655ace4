"""Images in and out: [-1, 1] float NCHW <-> uint8, sample grids, atomic PNG writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["to_uint8", "make_grid", "save_png"]


def to_uint8(images: Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C], rounded as the FID references do."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: Tensor, columns: int, padding: int = 2, background: int = 255) -> np.ndarray:
    """Tile [N, C, H, W] images into rows of ``columns`` with ``padding`` pixels between: uint8 [H', W', C]."""
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    if n == 0 or columns < 1:
        raise ValueError(f"need at least one image and one column, got {n} images, {columns} columns")
    rows = -(-n // columns)
    grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), background, np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = pixels[i]
    return grid


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 [H, W, C] (C = 1 or 3) array as PNG, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
