"""Relative positions for attention: learned biases on the logits and rotary embeddings of queries and keys.

- :func:`relative_bias_1d`: a learned per-head bias ``b[h, clip(j - i, -D, D)]`` added to the logit of query
  ``i`` attending to key ``j`` (Shaw et al. 2018, "Self-attention with relative position representations";
  the clipped scalar-bias form of T5, Raffel et al. 2020), used across the frames of a video.
- :class:`RelativeBias2d`: a learned per-head bias ``b[h, dy, dx]`` for every displacement between two
  positions of an ``H x W`` map, ``(2H - 1)(2W - 1)`` entries per head (Liu et al. 2021, Swin Transformer,
  Sec. 3.2), zero at initialisation so that a network starts as the one without it.
- :func:`rotate`: rotary position embedding (Su et al. 2021, RoFormer, Sec. 3.4.2): channel pairs
  ``(x_2m, x_2m+1)`` of position ``p`` are rotated by the angle ``p * base^(-2m/d)``, so that the dot
  product of a rotated query at ``i`` and a rotated key at ``j`` depends only on ``j - i``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["relative_bias_1d", "RelativeBias2d", "rotate"]


def relative_bias_1d(table: Tensor, positions: Tensor) -> Tensor:
    """``table`` ``[heads, 2D + 1]`` (entry ``D + r`` is the bias of the clipped distance ``r``), ``positions``
    ``[F]`` (integers) -> the bias ``[heads, F, F]`` whose entry ``[h, i, j]`` is ``table[h, D + clip(p_j - p_i,
    -D, D)]``."""
    if table.ndim != 2 or table.shape[1] % 2 != 1:
        raise ValueError(f"a 1-D relative bias table must have shape [heads, 2D + 1], got {tuple(table.shape)}")
    max_distance = table.shape[1] // 2
    positions = positions.to(device=table.device, dtype=torch.long)
    distance = (positions[None, :] - positions[:, None]).clamp(-max_distance, max_distance)
    return table[:, distance + max_distance]


class RelativeBias2d(nn.Module):
    """A learned per-head bias for every 2-D displacement on an ``height x width`` map (row-major tokens).

    ``forward()`` -> ``[heads, H*W, H*W]``: entry ``[h, i, j]`` is ``table[h, dy + H - 1, dx + W - 1]`` with
    ``(dy, dx)`` = position of token ``j`` minus position of token ``i``.
    """

    def __init__(self, num_heads: int, height: int, width: int):
        super().__init__()
        if num_heads < 1 or height < 1 or width < 1:
            raise ValueError(f"a 2-D relative bias needs heads, height and width >= 1, got {num_heads}, {height}, "
                             f"{width}")
        self.height, self.width = height, width
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * height - 1, 2 * width - 1))
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        # Not saved: the indices are a function of the map size.
        self.register_buffer("dy", rows[None, :] - rows[:, None] + height - 1, persistent=False)
        self.register_buffer("dx", cols[None, :] - cols[:, None] + width - 1, persistent=False)

    def forward(self, height: int, width: int) -> Tensor:
        """The bias for a ``height x width`` map, which must be the map the table was built for."""
        if (height, width) != (self.height, self.width):
            raise ValueError(f"this relative position bias was built for a {self.height}x{self.width} map, got "
                             f"{height}x{width}")
        return self.table[:, self.dy, self.dx]


def rotate(x: Tensor, positions: Tensor, base: float = 10_000.0) -> Tensor:
    """Rotary embedding of ``x`` ``[..., F, d]`` (``d`` even) at integer or real ``positions`` ``[F]``.

    Computed in float64 and cast back, so that a shift of every position changes the rotated dot products
    only at the input's precision.
    """
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"rotary positions need an even number of channels per head, got {dim}")
    if positions.shape != (x.shape[-2],):
        raise ValueError(f"rotary positions must have shape [{x.shape[-2]}], got {tuple(positions.shape)}")
    freqs = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=x.device) / dim)  # [d/2]
    angles = positions.to(device=x.device, dtype=torch.float64)[:, None] * freqs[None, :]  # [F, d/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
