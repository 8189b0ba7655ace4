"""The encoded captions of a text-conditioned run (``data.captions``): encoded once, picked per image.

The caption set is finite (:func:`diffusekit.data.captions.captions_for`), so the text encoder runs once at the
start of training; each training image then gets a caption of its class drawn uniformly with the trainer's
generator (part of the checkpoint, so a resumed run draws the same captions).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from ..data.captions import captions_for

__all__ = ["CaptionTable", "caption_table"]


@dataclass
class CaptionTable:
    """``states`` [N, L, D], ``mask`` [N, L] bool and ``pooled`` [N, D] of N captions, padded to the longest;
    captions of class c are rows ``start[c]`` .. ``start[c] + count[c] - 1``."""

    captions: list[str]
    states: Tensor
    mask: Tensor
    pooled: Tensor
    start: Tensor  # [classes] long
    count: Tensor  # [classes] long

    @classmethod
    def encode(cls, per_class: list[list[str]], encoder=None) -> CaptionTable:
        if not per_class or any(not c for c in per_class):
            raise ValueError("every class needs at least one caption")
        if encoder is None:
            from ..text import TextEncoder  # lazy: the text encoder and its packages load only for caption runs

            encoder = TextEncoder()
        flat = [c for captions in per_class for c in captions]
        encoding = encoder.encode(flat)
        count = torch.tensor([len(c) for c in per_class], dtype=torch.long)
        start = torch.cumsum(count, 0) - count
        return cls(flat, encoding.states.float().cpu(), encoding.mask.cpu(), encoding.pooled.float().cpu(),
                   start, count)

    @property
    def num_classes(self) -> int:
        return len(self.count)

    def pick(self, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        """Row indices: for each label, one of its class's captions, uniformly (one draw per image)."""
        labels = labels.cpu().long()
        u = torch.rand(labels.shape[0], generator=generator, dtype=torch.float64)
        count = self.count[labels]
        offset = torch.minimum((u * count).long(), count - 1)
        return self.start[labels] + offset

    def condition(self, rows: Tensor, device=None) -> dict:
        """The network's ``text``, ``text_mask`` and ``text_pooled`` for caption rows ``rows``."""
        return {"text": self.states[rows].to(device), "text_mask": self.mask[rows].to(device),
                "text_pooled": self.pooled[rows].to(device)}


@lru_cache(maxsize=4)
def caption_table(dataset: str, split: str = "train") -> CaptionTable:
    """The encoded captions of ``dataset`` (cached: encoding is deterministic and the tensors are only read)."""
    return CaptionTable.encode(captions_for(dataset, split))
