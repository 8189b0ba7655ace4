"""Embeddings of the noise level and of class labels, shared by the networks.

- :class:`PositionalEmbedding`: the sinusoidal embedding of Transformers (Vaswani et al. 2017) used by
  DDPM and DDPM++ for the noise level: ``[cos(x w_k), sin(x w_k)]`` with ``w_k = (1/max_period)^(k/half)``.
- :class:`FourierEmbedding`: random Fourier features (Tancik et al. 2020) as in NCSN++ / EDM's VE
  networks: ``[cos(2 pi x b_k), sin(2 pi x b_k)]``, ``b_k ~ N(0, scale^2)`` fixed at construction.
- :class:`ClassEmbedding`: a learned table with one extra row, the null class used for classifier-free
  guidance (index ``num_classes``); ``labels=None`` means the null class for the whole batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["PositionalEmbedding", "FourierEmbedding", "ClassEmbedding", "get_noise_embedding"]


class PositionalEmbedding(nn.Module):
    def __init__(self, num_channels: int, max_period: float = 10_000.0, endpoint: bool = False):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"positional embedding needs an even number of channels, got {num_channels}")
        self.num_channels, self.max_period, self.endpoint = num_channels, float(max_period), endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        exponent = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_period) ** exponent
        angles = x.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"Fourier embedding needs an even number of channels, got {num_channels}")
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        angles = x.to(torch.float32)[:, None] * (2 * math.pi * self.freqs[None, :])
        return torch.cat([angles.cos(), angles.sin()], dim=1)


def get_noise_embedding(kind: str, num_channels: int) -> nn.Module:
    if kind == "positional":
        return PositionalEmbedding(num_channels, endpoint=True)
    if kind == "fourier":
        return FourierEmbedding(num_channels)
    raise ValueError(f"unknown noise embedding {kind!r}; choose 'positional' or 'fourier'")


class ClassEmbedding(nn.Module):
    """Class labels -> vectors, with a learned null class at index ``num_classes``."""

    def __init__(self, num_classes: int, num_channels: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, num_channels)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, labels: Tensor | None, batch: int, device) -> Tensor:
        if labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        labels = labels.to(device=device, dtype=torch.long)
        if labels.shape != (batch,):
            raise ValueError(f"class labels must have shape [{batch}], got {tuple(labels.shape)}")
        return self.table(labels)  # range is checked where labels enter (data, CLI), not here: no device sync
