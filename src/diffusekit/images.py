"""Images in and out: [-1, 1] float NCHW <-> uint8, sample grids, atomic PNG writes; clips ([N, C, F, H, W]) as
grids of frames and as animations (GIF through Pillow, MP4 through imageio's ffmpeg)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["to_uint8", "make_grid", "save_png", "clip_grid", "clip_frames", "save_animation", "ANIMATION_FORMATS"]

ANIMATION_FORMATS = (".gif", ".mp4")


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


def clip_grid(clips: Tensor, padding: int = 2) -> np.ndarray:
    """Clips [N, C, F, H, W] in [-1, 1] as one picture: a row per clip, its frames left to right."""
    if clips.ndim != 5:
        raise ValueError(f"expected clips [N, C, F, H, W], got shape {tuple(clips.shape)}")
    frames = clips.shape[2]
    return make_grid(clips.transpose(1, 2).flatten(0, 1), frames, padding)


def clip_frames(clips: Tensor, columns: int, padding: int = 2) -> np.ndarray:
    """Clips [N, C, F, H, W] as F grid pictures uint8 [F, H', W', C], clip i at the same place in each (the
    frames of an animation that plays all clips at once)."""
    if clips.ndim != 5:
        raise ValueError(f"expected clips [N, C, F, H, W], got shape {tuple(clips.shape)}")
    return np.stack([make_grid(clips[:, :, t], columns, padding) for t in range(clips.shape[2])])


def save_animation(frames: np.ndarray, path: str | Path, fps: float = 4.0) -> Path:
    """Write uint8 frames [F, H, W, C] as a looping GIF or an H.264 MP4 (by the suffix), atomically. An MP4's
    frames are padded with white to even sides (what H.264 in yuv420p needs); a GIF is exact for grey frames and
    palette-quantised for colour ones."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_FORMATS:
        raise ValueError(f"{path}: animations are written as {' or '.join(ANIMATION_FORMATS)}")
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [F, H, W, C], got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{suffix}")
    if suffix == ".gif":
        pictures = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], loop=0,
                         duration=round(1000 / fps), optimize=False)
    else:
        import imageio.v3 as iio  # lazy: ffmpeg is started only when an MP4 is written

        height, width = frames.shape[1:3]
        pad = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
        rgb = np.pad(np.repeat(frames, 3, -1) if frames.shape[-1] == 1 else frames, pad, constant_values=255)
        iio.imwrite(tmp, rgb, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    os.replace(tmp, path)
    return path
