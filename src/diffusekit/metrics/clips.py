"""Video clips as the metrics read them: uint8 ``[N, F, H, W, C]`` (clips, frames, rows, columns, channels).

Two layouts come in: uint8 arrays ``[N, F, H, W, C]`` (what a dataset or a video file holds) and float
tensors or arrays ``[N, C, F, H, W]`` in [-1, 1] (what a video model samples). Float clips are quantised
to uint8 first (:func:`~diffusekit.metrics.inception.quantize`), so what is measured is what a saved video
would hold, as for images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .inception import quantize

__all__ = ["as_uint8_clips"]


def as_uint8_clips(clips: np.ndarray | Tensor) -> np.ndarray:
    """uint8 ``[N, F, H, W, C]`` (passed through) or float ``[N, C, F, H, W]`` in [-1, 1] -> uint8
    ``[N, F, H, W, C]`` with C in (1, 3) and F >= 2."""
    if isinstance(clips, Tensor):
        clips = clips.detach().cpu()
    elif isinstance(clips, np.ndarray):
        clips = torch.from_numpy(np.array(clips))  # a copy: arrays read from files may be read-only
    else:
        raise TypeError(f"clips must be a numpy array or a torch tensor, got {type(clips).__name__}")
    if clips.ndim != 5:
        raise ValueError(f"clips must be 5-d (uint8 [N, F, H, W, C] or float [N, C, F, H, W]), got shape "
                         f"{tuple(clips.shape)}")
    if clips.dtype == torch.uint8:
        out = clips
    elif clips.is_floating_point():
        if not torch.isfinite(clips).all():
            raise ValueError("clips contain NaN or infinite values")
        # a sampler's output may leave [-1, 1] (and is clamped, as a saved video would be); values far beyond
        # mean another scale, e.g. 0..255 floats
        if clips.abs().max() > 20:
            raise ValueError(f"float clips must be in [-1, 1], got values in [{clips.min():.3g}, {clips.max():.3g}] "
                             "(uint8 clips are given as [N, F, H, W, C])")
        out = quantize(clips).permute(0, 2, 3, 4, 1)  # [N, C, F, H, W] -> [N, F, H, W, C]
    else:
        raise ValueError(f"clips must be uint8 [N, F, H, W, C] or float [N, C, F, H, W] in [-1, 1], got {clips.dtype}")
    n, frames, _, _, channels = out.shape
    if channels not in (1, 3):
        raise ValueError(f"clips must have 1 or 3 channels, got shape {tuple(clips.shape)} (uint8 clips are "
                         "[N, F, H, W, C], float clips [N, C, F, H, W])")
    if n < 1 or frames < 2:
        raise ValueError(f"need at least one clip of at least 2 frames, got {n} clips of {frames} frames")
    return np.ascontiguousarray(out.numpy())
