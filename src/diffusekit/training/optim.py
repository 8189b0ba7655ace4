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

__all__ = ["LRSchedule", "make_optimizer", "DECAYS", "IMPLEMENTATIONS"]

DECAYS = ("constant", "cosine", "inverse_sqrt")
# torch's three Adam(W) implementations, the same update: one kernel over all tensors (fused; CPU and CUDA since
# torch 2.4), a few multi-tensor ops per step (foreach), or a Python loop over the tensors (for-loop)
IMPLEMENTATIONS = ("fused", "foreach", "for-loop")


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
                   eps: float = 1e-8, implementation: str = "fused") -> torch.optim.Optimizer:
    """Adam or AdamW. ``implementation`` picks torch's kernel (:data:`IMPLEMENTATIONS`); their states have the
    same format, so a checkpoint written with one resumes with another (up to float rounding)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown optimizer implementation {implementation!r}; choose one of "
                         f"{', '.join(IMPLEMENTATIONS)}")
    kernel = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[implementation]
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, **kernel)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, **kernel)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adamw' or 'adam'")
