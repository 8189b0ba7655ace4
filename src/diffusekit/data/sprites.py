"""RGBA helpers for sprite sets: cutting sprite sheets into cells, compositing alpha over a background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["composite", "read_rgba", "sheet_cells"]


def read_rgba(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGBA ``[H, W, 4]`` (palette transparency included)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


def sheet_cells(sheet: np.ndarray, size: int) -> np.ndarray:
    """Cut an RGBA sheet ``[H, W, 4]`` on a ``size`` px grid into its non-empty cells ``[N, size, size, 4]``.

    Cells are taken row by row; partial cells at the right and bottom edges are dropped, and so are cells whose
    alpha is 0 everywhere.
    """
    rows, cols = sheet.shape[0] // size, sheet.shape[1] // size
    cells = sheet[:rows * size, :cols * size].reshape(rows, size, cols, size, 4).swapaxes(1, 2)
    cells = cells.reshape(rows * cols, size, size, 4)
    return cells[cells[..., 3].reshape(len(cells), -1).max(axis=1) > 0]


def composite(rgba: np.ndarray, background: int) -> np.ndarray:
    """Alpha-composite uint8 RGBA ``[..., 4]`` over a uniform grey level (0 black, 255 white) -> uint8 RGB.

    Exact integer arithmetic: ``round((rgb * a + background * (255 - a)) / 255)``.
    """
    alpha = rgba[..., 3:].astype(np.uint16)
    mixed = rgba[..., :3] * alpha + np.uint16(background) * (255 - alpha)  # <= 65025: fits in uint16
    return ((mixed + 127) // 255).astype(np.uint8)
