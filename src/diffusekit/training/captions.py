"""The encoded captions of a text-conditioned run (``data.captions``): encoded once, picked per image.

The caption set is finite (:func:`diffusekit.data.captions.captions_for`), so the text encoder runs once at the
start of training; each training image then gets a caption of its class drawn uniformly with the trainer's
generator (part of the checkpoint, so a resumed run draws the same captions).

An image folder's captions are per image (:mod:`diffusekit.data.folder`: its labels number the distinct
captions), so each "class" holds one caption. They are encoded once and kept on disk
(:func:`folder_caption_table`, under ``$DIFFUSEKIT_CACHE/captions``, keyed by the captions and the encoder's
files), read back memory-mapped: a folder of many captions costs no encoding time and little memory on later runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._files import cache_dir
from ..data.captions import captions_for

__all__ = ["CaptionTable", "caption_table", "folder_caption_table"]


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


def _encoder_identity(encoder) -> str:
    directory = getattr(encoder, "model_dir", None)
    if directory is None:
        return type(encoder).__name__
    weights = Path(directory) / "model.safetensors"
    stat = weights.stat() if weights.is_file() else None
    return f"{Path(directory).resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"


def _encode_to(directory: Path, captions: list[str], encoder, chunk: int) -> None:
    """states [N, L, D] float32, mask [N, L] bool, pooled [N, D] float32 as .npy files in ``directory``, encoded
    ``chunk`` captions at a time and padded to the longest caption of all (L)."""
    length = int(encoder.tokenizer(captions)[1].sum(1).max()) if hasattr(encoder, "tokenizer") else None
    states = mask = pooled = None
    for lo in range(0, len(captions), chunk):
        encoding = encoder.encode(captions[lo:lo + chunk])
        part_states, part_mask = encoding.states.float().cpu().numpy(), encoding.mask.cpu().numpy()
        if states is None:
            length = length or part_states.shape[1]
            states = np.lib.format.open_memmap(directory / "states.npy", "w+", np.float32,
                                               (len(captions), length, part_states.shape[2]))
            mask = np.lib.format.open_memmap(directory / "mask.npy", "w+", np.bool_, (len(captions), length))
            pooled = np.lib.format.open_memmap(directory / "pooled.npy", "w+", np.float32,
                                               (len(captions), part_states.shape[2]))
        n = min(part_states.shape[1], length)
        states[lo:lo + chunk, :n] = part_states[:, :n]
        mask[lo:lo + chunk, :n] = part_mask[:, :n]
        pooled[lo:lo + chunk] = encoding.pooled.float().cpu().numpy()
    for array in (states, mask, pooled):
        array.flush()
    (directory / "captions.json").write_text(json.dumps(captions))


def folder_caption_table(captions: tuple[str, ...] | list[str], encoder=None, root: str | Path | None = None,
                         chunk: int = 1024) -> CaptionTable:
    """One "class" per caption (an image folder's labels number its distinct captions), encoded once into
    ``root`` (default ``$DIFFUSEKIT_CACHE/captions``) and read back memory-mapped. The cache directory is written
    under a temporary name and renamed when complete, so an interrupted encoding is never used."""
    captions = list(captions)
    if not captions:
        raise ValueError("no captions to encode")
    if encoder is None:
        from ..text import TextEncoder  # lazy: the text encoder and its packages load only for caption runs

        encoder = TextEncoder()
    key = hashlib.sha256(json.dumps([_encoder_identity(encoder), captions]).encode("utf-8")).hexdigest()[:24]
    base = Path(root).expanduser() if root else cache_dir("captions")
    directory = base / key
    if not (directory / "captions.json").is_file():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{key}.tmp-"))
        try:
            _encode_to(tmp, captions, encoder, chunk)
            tmp.replace(directory)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (directory / "captions.json").is_file():  # not a rename that lost to another process
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load(name: str) -> Tensor:  # copy-on-write maps: writable for torch, pages read from the file as needed
        return torch.from_numpy(np.load(directory / f"{name}.npy", mmap_mode="c", allow_pickle=False))

    count = torch.ones(len(captions), dtype=torch.long)
    return CaptionTable(captions, load("states"), load("mask"), load("pooled"), torch.arange(len(captions)), count)
