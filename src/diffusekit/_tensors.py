"""Small tensor helpers shared by the math modules."""

from __future__ import annotations

import torch
from torch import Tensor


def append_dims(coefficient: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example coefficient ``[batch]`` (or a scalar) to broadcast against ``x [batch, ...]``,
    in ``x``'s dtype and device."""
    coefficient = torch.as_tensor(coefficient).to(device=x.device, dtype=x.dtype)
    if coefficient.ndim == 0:
        return coefficient
    return coefficient.reshape(coefficient.shape + (1,) * (x.ndim - coefficient.ndim))
