"""Conditions: the one shape a condition has on its way from the data to the network.

A condition is a mapping of named tensors, ``Mapping[str, Tensor]``, every tensor with the batch as its first
dimension, e.g. ``{"labels": labels}`` or ``{"image": low_res, "aug_level": level}``. It may be empty: the
call is then unconditional. The names a network understands are listed in
:mod:`diffusekit.networks.conditioning`. The loss, the denoiser, the samplers and the guidance wrappers all
pass the mapping on unchanged, as ``denoise(x_t, t, cond)`` / ``network(x, noise_cond, cond)``; ``None`` is
accepted wherever a condition is optional and means the empty mapping.

The helpers here are the one place a condition is checked, sliced, concatenated or moved as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["Conditions", "as_conditions", "select", "concat", "to_device"]

Conditions = Mapping[str, Tensor]


def as_conditions(cond: Conditions | None) -> dict[str, Tensor]:
    """``cond`` as a new dict (``None``: the empty one), every name a string and every value a tensor."""
    if cond is None:
        return {}
    if isinstance(cond, Tensor):
        raise TypeError("cond must be a mapping of named conditions, got a bare tensor: pass class labels as "
                        "{'labels': labels}")
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a mapping of named conditions (e.g. {{'labels': labels}}) or None, "
                        f"got {type(cond).__name__}")
    out = {}
    for name, value in cond.items():
        if not isinstance(name, str):
            raise TypeError(f"condition names must be strings, got {name!r}")
        if not isinstance(value, Tensor):
            raise TypeError(f"condition {name!r} must be a tensor, got {type(value).__name__}")
        out[name] = value
    return out


def select(cond: Conditions, index) -> dict[str, Tensor]:
    """The rows ``index`` (a slice, an index tensor or a mask) of every condition."""
    return {name: value[index] for name, value in cond.items()}


def concat(first: Conditions, second: Conditions) -> dict[str, Tensor]:
    """The rows of ``first`` followed by those of ``second``; both must hold the same names."""
    if set(first) != set(second):
        missing = sorted(set(first) ^ set(second))
        raise ValueError(f"cannot concatenate conditions with different names: {', '.join(missing)} "
                         "in only one of them")
    return {name: torch.cat([value, second[name]]) for name, value in first.items()}


def to_device(cond: Conditions, device: torch.device | str, non_blocking: bool = False) -> dict[str, Tensor]:
    """Every condition on ``device``."""
    return {name: value.to(device, non_blocking=non_blocking) for name, value in cond.items()}
