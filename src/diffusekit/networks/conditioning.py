"""Conditions beyond the class label: what a network's ``cond`` may hold and how it enters the network.

``cond`` is ``None``, a tensor of class labels ``[B]`` (the common case), or a dict with any of

- ``"labels"``: class labels ``[B]`` (``num_classes`` is the learned null class of classifier-free guidance);
- ``"augment"``: augmentation labels ``[B, augment_dim]`` of EDM's non-leaking augmentation (Karras et al.
  2022, appendix); all zero, or absent, means "not augmented", which is what sampling asks for;
- ``"aug_level"``: ``[B]``, the noise level of a cascade's noise-conditioning augmentation (Ho et al. 2022,
  "Cascaded Diffusion Models", sec. 4.1), as the augmentation's time in [0, 1];
- ``"image"``: ``[B, C, H, W]`` at the network's resolution, concatenated to the input channels (a
  super-resolution stage's upsampled low-resolution image; seed 001's "concatenation").

Vector conditions are summed into the embedding that drives the adaptive normalisation (U-Net) or adaLN
(DiT), the first of seed 001's mechanisms: :class:`ExtraEmbedding` maps the augmentation labels with a
bias-free linear layer (zero labels give exactly zero, as EDM's ``map_augment``) and the augmentation level
through a positional embedding and a linear layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .embeddings import PositionalEmbedding

__all__ = ["CONDITION_KEYS", "condition_parts", "ExtraEmbedding", "concat_image"]

CONDITION_KEYS = ("labels", "augment", "aug_level", "image")


def condition_parts(cond) -> dict:
    """``cond`` as a dict (see the module docstring); unknown keys are an error naming them."""
    if cond is None:
        return {}
    if isinstance(cond, Tensor):
        return {"labels": cond}
    if not isinstance(cond, dict):
        raise TypeError(f"cond must be None, a label tensor or a dict, got {type(cond).__name__}")
    unknown = sorted(set(cond) - set(CONDITION_KEYS))
    if unknown:
        raise ValueError(f"unknown condition(s) {', '.join(unknown)}; a network takes {', '.join(CONDITION_KEYS)}")
    return cond


class ExtraEmbedding(nn.Module):
    """Augmentation labels and the cascade's augmentation level -> one ``[B, channels]`` vector (or None)."""

    def __init__(self, channels: int, augment_dim: int = 0, noise_aug: bool = False):
        super().__init__()
        if augment_dim < 0:
            raise ValueError(f"augment_dim must be >= 0, got {augment_dim}")
        self.augment_dim, self.noise_aug = augment_dim, noise_aug
        self.map_augment = nn.Linear(augment_dim, channels, bias=False) if augment_dim else None
        self.embed_level = PositionalEmbedding(channels, endpoint=True) if noise_aug else None
        self.map_aug_level = nn.Linear(channels, channels) if noise_aug else None
        # the level embedding is scaled like the noise level's (times 1000 keeps its frequencies in range)
        self.level_scale = 1000.0

    @property
    def active(self) -> bool:
        return self.map_augment is not None or self.map_aug_level is not None

    def forward(self, parts: dict, batch: int, device, dtype) -> Tensor | None:
        out = None
        if self.map_augment is not None and parts.get("augment") is not None:
            labels = parts["augment"]
            if tuple(labels.shape) != (batch, self.augment_dim):
                raise ValueError(f"augmentation labels must have shape [{batch}, {self.augment_dim}], "
                                 f"got {tuple(labels.shape)}")
            out = self.map_augment(labels.to(device=device, dtype=self.map_augment.weight.dtype))
        elif parts.get("augment") is not None:
            raise ValueError("augmentation labels were given to a network built without augment_dim")
        if self.map_aug_level is not None:
            level = parts.get("aug_level")
            if level is None:
                raise ValueError("this network is noise-augmentation conditioned: cond needs 'aug_level' [B]")
            if tuple(level.shape) != (batch,):
                raise ValueError(f"aug_level must have shape [{batch}], got {tuple(level.shape)}")
            embedded = self.embed_level(level.to(device=device, dtype=torch.float32) * self.level_scale)
            embedded = self.map_aug_level(embedded.to(self.map_aug_level.weight.dtype))
            out = embedded if out is None else out + embedded
        elif parts.get("aug_level") is not None:
            raise ValueError("an augmentation level was given to a network built without noise_aug")
        return None if out is None else out.to(dtype)


def concat_image(x: Tensor, parts: dict, channels: int) -> Tensor:
    """``x`` with the conditioning image appended to its channels (``channels`` = 0: ``x`` unchanged)."""
    image = parts.get("image")
    if not channels:
        if image is not None:
            raise ValueError("a conditioning image was given to a network built without cond_channels")
        return x
    if image is None:
        raise ValueError(f"this network is image-conditioned: cond needs 'image' [B, {channels}, H, W]")
    expected = (x.shape[0], channels, *x.shape[2:])
    if tuple(image.shape) != expected:
        raise ValueError(f"the conditioning image must have shape {list(expected)}, got {list(image.shape)}")
    return torch.cat([x, image.to(x.dtype)], dim=1)
