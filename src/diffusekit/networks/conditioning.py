"""What a network's ``cond`` may hold and how each condition enters the network.

``cond`` is a mapping of named tensors (:mod:`diffusekit.conditions`), possibly empty, with any of

- ``"labels"``: class labels ``[B]`` (``num_classes`` is the learned null class of classifier-free guidance);
  absent means the null class for every row;
- ``"augment"``: augmentation labels ``[B, augment_dim]`` of EDM's non-leaking augmentation (Karras et al.
  2022, appendix); all zero, or absent, means "not augmented", which is what sampling asks for;
- ``"aug_level"``: ``[B]``, the noise level of a cascade's noise-conditioning augmentation (Ho et al. 2022,
  "Cascaded Diffusion Models", sec. 4.1), as the augmentation's time in [0, 1]; required by a network built
  with ``noise_aug``;
- ``"image"``: ``[B, C, H, W]`` at the network's resolution, concatenated to the input channels (a
  super-resolution stage's upsampled low-resolution image); required by a network built with
  ``cond_channels``;
- ``"text"``: token states ``[B, L, text_dim]`` of a text encoder (e.g. :class:`diffusekit.text.TextEncoder`'s
  ``states``), attended to by cross-attention;
- ``"text_mask"``: bool ``[B, L]``, True for a real token; padding is never attended (absent: all real);
- ``"text_pooled"``: ``[B, text_dim]``, the sentence embedding, summed into the embedding vector like the
  vectors above (absent: the masked mean of ``text``);
- ``"text_null"``: bool ``[B]``, True where a row uses the learned null text instead of its text (the
  classifier-free-guidance null of text). No ``text`` at all means the null text for every row, as absent
  ``labels`` mean the null class; a row whose mask has no real token also gets the null text;
- ``"independent"``: bool ``[B]``, video networks only: True marks a clip as ``F`` independent images (joint
  video and image training, Ho et al. 2022, "Video Diffusion Models", Sec. 3.2): its frames do not attend to
  each other in time;
- ``"context"``: ``[B, C, F, H, W]``, video networks built with ``frame_conditioning`` only: the frames that
  are given (zeros elsewhere), for prediction or interpolation; required by such a network, with
- ``"context_mask"``: bool or float ``[B, F]``, True (1) where a frame of ``context`` is given.

Any other name is an error naming it, as is a condition the network was not built for or a required one
that is missing; image networks reject the video conditions (:func:`reject_video`).

Vector conditions are summed into the embedding that drives the adaptive normalisation (U-Net) or adaLN
(DiT): :class:`ExtraEmbedding` maps the augmentation labels with a bias-free linear layer (zero labels give
exactly zero, as EDM's ``map_augment``) and the augmentation level through a positional embedding and a
linear layer. :class:`TextConditioning` holds the learned null text and maps the pooled text embedding the
same way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..conditions import Conditions, as_conditions
from .embeddings import PositionalEmbedding

__all__ = ["CONDITION_KEYS", "TEXT_KEYS", "VIDEO_KEYS", "network_conditions", "ExtraEmbedding",
           "TextConditioning", "concat_image", "reject_text", "reject_video"]

TEXT_KEYS = ("text", "text_mask", "text_pooled", "text_null")
VIDEO_KEYS = ("independent", "context", "context_mask")
CONDITION_KEYS = ("labels", "augment", "aug_level", "image", *TEXT_KEYS, *VIDEO_KEYS)


def network_conditions(cond: Conditions | None) -> dict[str, Tensor]:
    """``cond`` as a dict (``None``: no conditions) after checking that a network knows every name in it."""
    parts = as_conditions(cond)
    unknown = sorted(set(parts) - set(CONDITION_KEYS))
    if unknown:
        raise ValueError(f"unknown condition(s) {', '.join(unknown)}; a network takes {', '.join(CONDITION_KEYS)}")
    return parts


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


class TextConditioning(nn.Module):
    """The learned null text and the pooled-embedding map of a text-conditioned network.

    :meth:`resolve` turns ``cond``'s text entries into ``(states [B, L, text_dim], mask [B, L], vector
    [B, channels])``: rows marked ``text_null`` (or all rows, when ``text`` is absent) get the null text, a
    single real token, and the null pooled vector; ``vector`` is the pooled embedding mapped to the width of
    the embedding vector, to be added to it.
    """

    def __init__(self, text_dim: int, channels: int, owner: str = "network"):
        super().__init__()
        if text_dim < 1:
            raise ValueError(f"text_dim must be >= 1 for a text-conditioned network, got {text_dim}")
        self.text_dim, self.owner = text_dim, owner
        self.null_text = nn.Parameter(torch.randn(1, 1, text_dim) * 0.02)
        self.null_pooled = nn.Parameter(torch.randn(text_dim) * 0.02)
        self.map_pooled = nn.Linear(text_dim, channels)

    def resolve(self, parts: dict, batch: int, device) -> tuple[Tensor, Tensor, Tensor]:
        dim, dtype = self.text_dim, self.null_text.dtype
        text, mask, pooled, null = (parts.get(key) for key in TEXT_KEYS)
        if null is not None:
            if tuple(null.shape) != (batch,):
                raise ValueError(f"text_null must have shape [{batch}], got {tuple(null.shape)}")
            null = null.to(device=device, dtype=torch.bool)
        if text is None:
            if mask is not None or pooled is not None:
                raise ValueError("text_mask / text_pooled were given without 'text' [B, L, text_dim]")
            states = self.null_text.expand(batch, 1, dim)
            return states, torch.ones(batch, 1, dtype=torch.bool, device=device), self._map(
                self.null_pooled.expand(batch, dim))
        if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != dim or text.shape[1] < 1:
            raise ValueError(f"text must have shape [{batch}, L, {dim}] with L >= 1, got {tuple(text.shape)}")
        length = text.shape[1]
        states = text.to(device=device, dtype=dtype)
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=device)
        elif tuple(mask.shape) != (batch, length):
            raise ValueError(f"text_mask must have shape [{batch}, {length}] like text, got {tuple(mask.shape)}")
        mask = mask.to(device=device, dtype=torch.bool)
        if pooled is None:  # the masked mean of the token states
            weights = mask.to(dtype)[:, :, None]
            pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1)
        elif tuple(pooled.shape) != (batch, dim):
            raise ValueError(f"text_pooled must have shape [{batch}, {dim}], got {tuple(pooled.shape)}")
        pooled = pooled.to(device=device, dtype=dtype)
        # No device sync: rows with no real token (they could attend to nothing) get the null text too.
        empty = ~mask.any(dim=1)
        null = empty if null is None else null | empty
        first = torch.zeros(length, dtype=torch.bool, device=device)
        first[0] = True
        null_states = torch.where(first[None, :, None], self.null_text, torch.zeros((), dtype=dtype, device=device))
        states = torch.where(null[:, None, None], null_states, states)
        mask = torch.where(null[:, None], first[None, :], mask)
        pooled = torch.where(null[:, None], self.null_pooled[None, :], pooled)
        return states, mask, self._map(pooled)

    def _map(self, pooled: Tensor) -> Tensor:
        return self.map_pooled(pooled.to(self.map_pooled.weight.dtype))


def reject_text(parts: dict, owner: str) -> None:
    """A network built without ``text_dim``: any text entry in ``cond`` is an error naming it."""
    given = [key for key in TEXT_KEYS if parts.get(key) is not None]
    if given:
        raise ValueError(f"text conditions ({', '.join(given)}) were given to a {owner} built without text_dim")


def reject_video(parts: dict, owner: str) -> None:
    """An image network: the conditions that only a video network understands are an error naming them."""
    if parts.get("independent") is not None:
        raise ValueError(f"an image-group flag (cond['independent']) was given to {owner}, which has no temporal "
                         "layers")
    given = [key for key in ("context", "context_mask") if parts.get(key) is not None]
    if given:
        raise ValueError(f"context frames ({', '.join(given)}) were given to {owner}, an image network without "
                         "frame conditioning")


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
