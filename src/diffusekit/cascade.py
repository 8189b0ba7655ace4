"""Cascades: a super-resolution stage conditioned on a low-resolution image, with noise-conditioning augmentation.

Ho et al. 2022 ("Cascaded Diffusion Models for High Fidelity Image Generation", sec. 4.1):

- training: the low-resolution image ``z`` (the training image, box-downsampled) is corrupted on a cosine VP
  path, ``z_s = alpha(s) z + sigma(s) noise`` with ``s ~ U[0, aug_max]``, upsampled (bilinear) to the
  stage's resolution and concatenated to the network input; ``s`` is an input of the network
  (``cond["aug_level"]``), so it learns to correct whatever corruption the previous stage leaves;
- sampling: ``s`` is fixed, given as an SNR ``alpha^2 / sigma^2`` (Imagen and CDM use moderate levels;
  3 to 5 here). The stage then sees the first stage's samples through the same corruption it was trained
  with, which hides the first stage's artifacts (the train/test mismatch the augmentation exists for).

Without ``noise_aug`` the stage sees the clean low-resolution image (the baseline of the comparison).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .conditions import Conditions
from .schedules import Cosine

__all__ = ["CascadeSettings", "downsample", "upsample", "noise_augment", "training_condition",
           "sampling_condition"]

_AUG_PATH = Cosine()  # the corruption path of the conditioning image (zero SNR at s = 1)


@dataclass
class CascadeSettings:
    low_resolution: int  # side of the conditioning image
    noise_aug: bool = True
    aug_max: float = 0.5  # training levels s ~ U[0, aug_max]
    sample_snr: float = 5.0  # sampling level, as alpha^2 / sigma^2 of the corruption

    def __post_init__(self):
        if self.low_resolution < 1:
            raise ValueError(f"the cascade's low resolution must be >= 1, got {self.low_resolution}")
        if not 0.0 < self.aug_max <= 1.0:
            raise ValueError(f"the augmentation's aug_max must be in (0, 1], got {self.aug_max}")
        if not self.sample_snr > 0:
            raise ValueError(f"the sampling augmentation SNR must be > 0, got {self.sample_snr}")

    @property
    def sample_level(self) -> float:
        """The level s whose SNR is ``sample_snr`` on the corruption path."""
        return float(_AUG_PATH.t_from_logsnr(torch.tensor(math.log(self.sample_snr), dtype=torch.float64)))


def downsample(images: Tensor, size: int) -> Tensor:
    """Box (area) downsampling to ``size``: every source pixel counts once, so nothing aliases."""
    if images.shape[-1] % size or images.shape[-2] % size:
        raise ValueError(f"images of {tuple(images.shape[-2:])} cannot be box-downsampled to {size}x{size}: "
                         "the low resolution must divide the stage's")
    return F.adaptive_avg_pool2d(images, size)


def upsample(images: Tensor, size: int) -> Tensor:
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def noise_augment(low: Tensor, level: Tensor, generator: torch.Generator | None) -> Tensor:
    """``alpha(s) z + sigma(s) noise`` on the cosine VP path, per image (``level`` ``[B]`` in [0, 1])."""
    at = _AUG_PATH(level.to(torch.float64).cpu())
    noise = torch.randn(low.shape, generator=generator, dtype=low.dtype).to(low.device)
    shape = (-1,) + (1,) * (low.ndim - 1)
    alpha = at.alpha.to(low.device, low.dtype).reshape(shape)
    sigma = at.sigma.to(low.device, low.dtype).reshape(shape)
    return alpha * low + sigma * noise


def training_condition(x0: Tensor, settings: CascadeSettings, generator: torch.Generator | None) -> Conditions:
    """``{"image": ...}`` (and ``"aug_level"`` with noise augmentation) for a batch of training images."""
    low = downsample(x0, settings.low_resolution)
    if not settings.noise_aug:
        return {"image": upsample(low, x0.shape[-1])}
    level = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64) * settings.aug_max
    return {"image": upsample(noise_augment(low, level, generator), x0.shape[-1]),
            "aug_level": level.to(x0.device, torch.float32)}


def sampling_condition(low: Tensor, settings: CascadeSettings, resolution: int, seed: int = 0,
                       first: int = 0) -> Conditions:
    """The condition for low-resolution images ``low`` (e.g. the first stage's samples) at sampling: the fixed
    level ``sample_snr``, noise seeded per image by ``(seed, first + i)`` so shards reproduce one big call."""
    if low.shape[-1] != settings.low_resolution:
        raise ValueError(f"the stage is conditioned on {settings.low_resolution}x{settings.low_resolution} "
                         f"images, got {tuple(low.shape[-2:])}")
    if not settings.noise_aug:
        return {"image": upsample(low, resolution)}
    level = torch.full((low.shape[0],), settings.sample_level, dtype=torch.float64)
    noise = torch.stack([torch.randn(low.shape[1:], generator=torch.Generator().manual_seed(
        seed * 1_000_003 + first + i + 104_729), dtype=low.dtype) for i in range(low.shape[0])]).to(low.device)
    at = _AUG_PATH(level)
    corrupted = float(at.alpha[0]) * low + float(at.sigma[0]) * noise
    return {"image": upsample(corrupted, resolution), "aug_level": level.to(low.device, torch.float32)}
