"""Optimizers and learning-rate schedules as functions of the training-image count.

The learning rate is a pure function of ``cur_nimg`` (progress is counted in images,
docs/design.md), so it has no state to checkpoint and resumes exactly:

- linear warm-up over ``warmup_images`` (Goyal et al. 2017);
- then ``constant``; ``cosine`` to ``min_lr`` at ``total_images`` (Loshchilov & Hutter 2017); or
  ``inverse_sqrt``: ``lr / sqrt(max(cur_nimg / ref_images, 1))`` (EDM2, Karras et al. 2024, eq. 16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LRSchedule", "make_optimizer", "DECAYS"]

DECAYS = ("constant", "cosine", "inverse_sqrt")


@dataclass(frozen=True)
class LRSchedule:
    lr: float
    warmup_images: int = 0
    decay: str = "constant"
    total_images: int | None = None  # for cosine
    ref_images: int | None = None  # for inverse_sqrt
    min_lr: float = 0.0

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise ValueError(f"unknown LR decay {self.decay!r}; choose one of {', '.join(DECAYS)}")
        if not self.lr > 0 or self.warmup_images < 0:
            raise ValueError(f"need lr > 0 and warmup_images >= 0, got {self.lr}, {self.warmup_images}")
        if self.decay == "cosine" and not (self.total_images and self.total_images > 0):
            raise ValueError("cosine decay needs total_images > 0")
        if self.decay == "inverse_sqrt" and not (self.ref_images and self.ref_images > 0):
            raise ValueError("inverse_sqrt decay needs ref_images > 0")

    def __call__(self, cur_nimg: int) -> float:
        lr = self.lr
        if self.decay == "cosine":
            progress = min(cur_nimg / self.total_images, 1.0)
            lr = self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        elif self.decay == "inverse_sqrt":
            lr = self.lr / math.sqrt(max(cur_nimg / self.ref_images, 1.0))
        if self.warmup_images > 0:
            lr *= min(cur_nimg / self.warmup_images, 1.0)
        return lr


def make_optimizer(parameters, name: str = "adamw", lr: float = 1e-4, betas=(0.9, 0.999), weight_decay: float = 0.0,
                   eps: float = 1e-8) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adamw' or 'adam'")
