"""Attention across the frames of a video, at every spatial position: the temporal half of factorised
space-time attention (Ho et al. 2022, "Video Diffusion Models", Sec. 3).

:class:`TemporalAttention` takes the per-frame feature maps of a batch of clips, ``[B*F, C, H, W]`` with the
frames of a clip consecutive, and returns them plus a residual branch in which each of the ``B*H*W``
sequences of ``F`` tokens (one pixel through time) is attended over: GroupNorm per frame, multi-head
attention, a linear output projection initialised to exactly zero, so that an untrained branch adds exactly
nothing and a video network starts as its per-frame image network.

Positions in time (``position``):

- ``"relative"``: a learned per-head bias ``b[h, clip(j - i, -D, D)]`` on the logits (Shaw et al. 2018; the
  scalar bias of T5), zero at initialisation;
- ``"rotary"``: queries and keys rotated by their frame index (Su et al. 2021, RoFormer);
- ``"absolute"``: a learned embedding per frame index (``max_frames`` of them) added to the normalised tokens;
- ``"none"``: no position term (attention is then equivariant to permuting the frames).

The first, second and last generalise to any number of frames. ``independent`` ``[B]`` marks clips that are
really ``F`` independent images (joint video-image training, Ho et al. 2022, Sec. 3.2): each of their frames
attends only to itself, so its branch output is its own value vector, and they get no absolute embedding,
so nothing of a frame's index or of the other frames reaches it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffusekit.networks.layers import ATTENTION_INIT, group_norm, linear
from diffusekit.networks.positions import relative_bias_1d, rotate

__all__ = ["TemporalAttention", "TEMPORAL_POSITIONS"]

TEMPORAL_POSITIONS = ("relative", "rotary", "absolute", "none")
# Scale of the learned absolute frame embedding at initialisation (small next to the unit-variance
# normalised features, as the learned positions of GPT-2 / ViT).
FRAME_EMBEDDING_INIT = 0.02


class TemporalAttention(nn.Module):
    def __init__(self, channels: int, num_heads: int, position: str = "relative", *, max_distance: int = 16,
                 max_frames: int | None = None):
        """
        Args:
            channels: width of the feature maps; split into ``num_heads`` heads.
            position: one of :data:`TEMPORAL_POSITIONS` (see the module docstring).
            max_distance: ``"relative"``: frame distances beyond it share the bias of ``+-max_distance``.
            max_frames: ``"absolute"``: the number of frame embeddings, the most frames a call may have.
        """
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} attention heads")
        if position not in TEMPORAL_POSITIONS:
            raise ValueError(f"unknown temporal position {position!r}; choose one of {', '.join(TEMPORAL_POSITIONS)}")
        if position == "rotary" and (channels // num_heads) % 2:
            raise ValueError(f"rotary positions need an even number of channels per head, got {channels} channels "
                             f"in {num_heads} heads")
        if position == "relative" and max_distance < 1:
            raise ValueError(f"max_distance must be >= 1 for relative positions, got {max_distance}")
        if position == "absolute" and (max_frames is None or max_frames < 1):
            raise ValueError(f"absolute positions need max_frames >= 1 (the frame embeddings), got {max_frames}")
        self.num_heads, self.position = num_heads, position
        self.max_frames = max_frames if position == "absolute" else None  # the most frames a call may have
        self.norm = group_norm(channels)
        self.qkv = linear(channels, 3 * channels, scale=ATTENTION_INIT)
        self.proj = linear(channels, channels, scale=0.0)
        self.relative_bias = self.frame_embedding = None
        if position == "relative":  # entry max_distance + r: the bias of the frame distance r
            self.relative_bias = nn.Parameter(torch.zeros(num_heads, 2 * max_distance + 1))
        elif position == "absolute":
            self.frame_embedding = nn.Parameter(torch.randn(max_frames, channels) * FRAME_EMBEDDING_INIT)

    def forward(self, x: Tensor, frames: int, independent: Tensor | None = None,
                positions: Tensor | None = None) -> Tensor:
        """``x`` ``[B*F, C, H, W]`` (the frames of a clip consecutive), ``frames`` = F, ``independent`` bool
        ``[B]`` or None, ``positions`` the frame indices ``[F]`` (None: ``0..F-1``) -> ``x`` plus the branch."""
        n, c, h, w = x.shape
        if frames < 1 or n % frames:
            raise ValueError(f"a batch of {n} frames is not a whole number of clips of {frames} frames")
        batch = n // frames
        if positions is None:
            if self.max_frames is not None and frames > self.max_frames:
                raise ValueError(f"{frames} frames, but absolute positions embed at most {self.max_frames}: "
                                 f"give at most {self.max_frames} frames or use relative/rotary positions")
            positions = torch.arange(frames, device=x.device)
        else:
            positions = positions.to(x.device)
            if positions.shape != (frames,):
                raise ValueError(f"frame positions must have shape [{frames}], got {tuple(positions.shape)}")
            if self.max_frames is not None and (positions.min() < 0 or positions.max() >= self.max_frames):
                raise ValueError(f"absolute frame positions must lie in [0, {self.max_frames}), got "
                                 f"{positions.tolist()}")
        # GroupNorm on [B*F, C, H, W] normalises each frame on its own: nothing mixes frames before the softmax.
        tokens = self.norm(x).reshape(batch, frames, c, h * w).permute(0, 3, 1, 2)  # [B, HW, F, C]
        if self.frame_embedding is not None:
            tokens = tokens + self._frame_embedding(positions, independent, batch, tokens.dtype)
        head_dim = c // self.num_heads
        qkv = self.qkv(tokens).reshape(batch, h * w, frames, 3, self.num_heads, head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each [B, HW, heads, F, d]
        logits = self.logits(q, k, positions)
        if independent is not None:
            # A clip of independent images: only the diagonal survives the softmax (exp(-inf) = 0 exactly).
            eye = torch.eye(frames, dtype=torch.bool, device=x.device)
            allowed = eye | ~independent.to(device=x.device, dtype=torch.bool)[:, None, None, None, None]
            logits = logits.masked_fill(~allowed, float("-inf"))
        out = logits.softmax(dim=-1) @ v  # [B, HW, heads, F, d]
        out = self.proj(out.transpose(2, 3).reshape(batch, h * w, frames, c))  # [B, HW, F, C]
        return x + out.permute(0, 2, 3, 1).reshape(n, c, h, w)

    def logits(self, q: Tensor, k: Tensor, positions: Tensor) -> Tensor:
        """Queries and keys ``[..., heads, F, d]`` at frame ``positions`` ``[F]`` -> the attention logits
        ``[..., heads, F, F]``: ``q_i . k_j / sqrt(d)`` (after rotation for rotary) plus the relative bias."""
        if self.position == "rotary":
            q, k = rotate(q, positions), rotate(k, positions)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if self.relative_bias is not None:
            logits = logits + relative_bias_1d(self.relative_bias, positions).to(logits.dtype)
        return logits

    def _frame_embedding(self, positions: Tensor, independent: Tensor | None, batch: int, dtype) -> Tensor:
        """The absolute embedding ``[B or 1, 1, F, C]``, zero for clips of independent images."""
        table = self.frame_embedding[positions.long()].to(dtype)[None, None]  # [1, 1, F, C]
        if independent is None:
            return table
        video = (~independent.to(device=table.device, dtype=torch.bool)).to(dtype)
        return table * video[:, None, None, None]
