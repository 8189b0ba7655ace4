"""Memorization: exact nearest training neighbours of generated samples, and the ratio test for copies.

A sample is flagged as a copy of a training image when its nearest training neighbour is much closer than
its second nearest: ``d1 / d2 < 1/3``. This is the memorization criterion of Yoon et al. 2023, "Diffusion
probabilistic models generalize when they fail to memorize" (ICML 2023 workshop on structured probabilistic
inference), a simpler form of the relative-distance copy criterion of Carlini et al. 2023, "Extracting training
data from diffusion models" (USENIX Security). A fresh sample lies among many training images at similar
distances (ratio near 1), while a copy, even a noisy one, is far closer to its source than to anything else. The
ratio is free of the distance's scale, so the same 1/3 serves pixels and features.

Pixel distances are not shift-invariant: an MNIST training digit moved by one pixel is not flagged in pixel space
(ratios 0.6-1.0, like fresh digits); such copies need a shift-invariant feature space.

Distances are Euclidean and exact (no approximate index), computed in float64 in chunks of queries and
references, so that 60k MNIST training images fit in memory. Pixel images in uint8 are compared on the [0, 1]
scale (``pixel / 255``); the squared distances of uint8 images are then exact integers before the division,
so exact copies give a distance of exactly 0 and ties are exact.

Duplicates in the training set: a sample that is an exact copy of a training image that appears twice has
``d1 = d2 = 0``. We treat ``0 / 0`` as ratio 0 (flagged): it is still a copy, the training set just holds it
twice. A tie at a positive distance (``d1 = d2 > 0``) gives ratio 1 (not flagged).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..images import make_grid, save_png

__all__ = ["MemorizationResult", "memorization_check", "nearest_neighbours", "write_memorization_grid"]

DEFAULT_THRESHOLD = 1 / 3  # Yoon et al. 2023


def _as_tensor(x) -> Tensor:
    """A torch tensor, without copying where possible (read-only numpy arrays are copied once)."""
    if isinstance(x, Tensor):
        return x.detach()
    x = np.asarray(x)
    if not x.flags.writeable:
        x = x.copy()
    return torch.from_numpy(np.ascontiguousarray(x))


def _flat(x: Tensor) -> Tensor:
    return x.reshape(len(x), -1)


def nearest_neighbours(queries, references, k: int = 2, batch_size: int = 1024,
                       device="cpu") -> tuple[Tensor, Tensor]:
    """Exact ``k`` nearest references (Euclidean) of each query.

    ``queries`` [Q, ...] and ``references`` [R, ...] have any trailing shape (flattened), as uint8 or float torch
    tensors or numpy arrays; distances are in the inputs' own units (no rescaling here). Both sides are scanned in
    chunks of ``batch_size`` rows, converted to float64 on ``device`` chunk by chunk, keeping a running top-k per
    query, so memory stays O(batch_size^2 + Q k) beyond the inputs. Squared distances are
    ``|q|^2 - 2 q.r + |r|^2`` in float64, clamped at 0. Returns (distances float64 [Q, k] ascending, indices int64
    [Q, k]) on the CPU; among equal distances the order of the indices is unspecified.
    """
    q, r = _flat(_as_tensor(queries)), _flat(_as_tensor(references))
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries and references have different sizes per item: {q.shape[1]} and {r.shape[1]}")
    if not 1 <= k <= len(r):
        raise ValueError(f"k must be between 1 and the number of references ({len(r)}), got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    f64 = torch.float64
    q_sq = torch.cat([q[i:i + batch_size].to(device, f64).square().sum(1) for i in range(0, len(q), batch_size)]
                     ) if len(q) else torch.zeros(0, dtype=f64, device=device)
    best_d = torch.full((len(q), k), float("inf"), dtype=f64, device=device)
    best_i = torch.full((len(q), k), -1, dtype=torch.int64, device=device)
    for start in range(0, len(r), batch_size):
        chunk = r[start:start + batch_size].to(device, f64)
        chunk_sq = chunk.square().sum(1)
        chunk_i = torch.arange(start, start + len(chunk), device=device)
        for qs in range(0, len(q), batch_size):
            rows = slice(qs, qs + batch_size)
            d2 = (q_sq[rows, None] - 2 * (q[rows].to(device, f64) @ chunk.T) + chunk_sq).clamp_min_(0)
            d = torch.cat([best_d[rows], d2], 1)
            i = torch.cat([best_i[rows], chunk_i.expand(len(d2), -1)], 1)
            best_d[rows], pick = d.topk(k, dim=1, largest=False, sorted=True)
            best_i[rows] = i.gather(1, pick)
    return best_d.sqrt().cpu(), best_i.cpu()


@dataclass
class MemorizationResult:
    """Nearest two training neighbours of each sample and the ratio test; see the module docstring."""

    space: str  # "pixel" or a feature extractor's name
    threshold: float  # flagged when ratio < threshold; 1/3 by default
    ratio: Tensor  # float64 [Q]: d1 / d2, with 0 / 0 = 0 (an exact copy of a duplicated training image)
    distances: Tensor  # float64 [Q, 2]: to the nearest and second-nearest training item (pixels on the [0, 1] scale)
    indices: Tensor  # int64 [Q, 2]: their indices in the training set
    flagged: Tensor  # bool [Q]: ratio < threshold

    @property
    def n(self) -> int:
        return len(self.ratio)

    @property
    def fraction(self) -> float:
        """Fraction of samples flagged as copies."""
        return float(self.flagged.double().mean()) if self.n else 0.0

    def summary(self) -> dict:
        """JSON-ready: space, threshold, n, flagged (count), fraction, and quantiles of the ratio."""
        probs = torch.tensor([0.0, 0.05, 0.5, 0.95], dtype=torch.float64)
        quantiles = torch.quantile(self.ratio.double(), probs).tolist() if self.n else [float("nan")] * 4
        return {
            "space": self.space,
            "threshold": float(self.threshold),
            "n": self.n,
            "flagged": int(self.flagged.sum()),
            "fraction": self.fraction,
            "ratio_quantiles": dict(zip(["min", "p05", "p50", "p95"], quantiles, strict=True)),
        }


def memorization_check(samples, training, *, space: str = "pixel", threshold: float = DEFAULT_THRESHOLD,
                       batch_size: int = 1024, device="cpu") -> MemorizationResult:
    """Flag samples whose nearest training item is under ``threshold`` times as far as the second nearest.

    ``samples`` [Q, ...] and ``training`` [R, ...] are in the same representation and layout: uint8 pixels (NCHW
    or NHWC, both the same), compared as ``pixel / 255`` in [0, 1], or float features [N, D] (or float pixels),
    used as given. ``space`` names the representation in the result. Raises ValueError when the trailing shapes
    differ, when one side is uint8 and the other is not, when there are no samples, fewer than 2 training items,
    or when ``threshold`` is outside (0, 1].
    """
    s, t = _as_tensor(samples), _as_tensor(training)
    if s.shape[1:] != t.shape[1:]:
        raise ValueError(f"samples and training items have different shapes: {tuple(s.shape[1:])} and "
                         f"{tuple(t.shape[1:])}; give both in the same representation and layout (NCHW or NHWC)")
    if (s.dtype == torch.uint8) != (t.dtype == torch.uint8):
        raise ValueError(f"samples are {s.dtype} but training items are {t.dtype}: give both as uint8 pixels "
                         "or both as floats on the same scale")
    if len(s) == 0:
        raise ValueError("no samples to check")
    if len(t) < 2:
        raise ValueError(f"the ratio test needs at least 2 training items, got {len(t)}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    distances, indices = nearest_neighbours(s, t, k=2, batch_size=batch_size, device=device)
    if s.dtype == torch.uint8:
        distances = distances / 255.0
    d1, d2 = distances.unbind(1)
    ratio = torch.where(d2 > 0, d1 / d2.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(d1))
    return MemorizationResult(space, float(threshold), ratio, distances, indices, ratio < threshold)


def _nchw_uint8(images, name: str) -> Tensor:
    x = _as_tensor(images).cpu()
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"{name} must be uint8 images [N, C, H, W] or [N, H, W, C], got {x.dtype} {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        if x.shape[3] not in (1, 3):
            raise ValueError(f"{name} must have 1 or 3 channels, got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2)
    return x


def write_memorization_grid(path, result: MemorizationResult, samples_uint8, training_uint8, *, neighbours: int = 2,
                            max_rows: int = 64, only_flagged: bool = True) -> Path | None:
    """Write a PNG with one row per flagged sample: the sample, then its ``neighbours`` nearest training images.

    Rows go from the most copied (smallest ratio) down, at most ``max_rows``. ``only_flagged=False``: the rows
    are the samples of smallest ratio whether flagged or not (what the closest samples look like beside
    their neighbours, even when none is a copy). ``samples_uint8`` (indexed like the
    result) and ``training_uint8`` are uint8 images, NCHW with C = 1 or 3 (NHWC is accepted when axis 1 is not 1
    or 3), tensors or numpy arrays. Writes atomically and returns the path, or writes nothing and returns None when
    there is no row (no sample flagged).
    """
    if not 1 <= neighbours <= result.indices.shape[1]:
        raise ValueError(f"neighbours must be between 1 and {result.indices.shape[1]}, got {neighbours}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    samples, training = _nchw_uint8(samples_uint8, "samples_uint8"), _nchw_uint8(training_uint8, "training_uint8")
    if len(samples) != result.n:
        raise ValueError(f"the result has {result.n} samples but {len(samples)} sample images were given")
    if samples.shape[1:] != training.shape[1:]:
        raise ValueError(f"sample and training images differ in shape: {tuple(samples.shape[1:])} and "
                         f"{tuple(training.shape[1:])}")
    flagged = torch.nonzero(result.flagged if only_flagged else torch.ones_like(result.flagged)).flatten()
    if len(flagged) == 0:
        return None
    order = flagged[torch.sort(result.ratio[flagged], stable=True).indices][:max_rows]
    neighbour_idx = result.indices[order, :neighbours]
    if int(neighbour_idx.max()) >= len(training):
        raise ValueError(f"the result refers to training index {int(neighbour_idx.max())} but only "
                         f"{len(training)} training images were given")
    rows = torch.cat([samples[order, None], training[neighbour_idx]], 1)  # [rows, 1 + neighbours, C, H, W]
    tiles = rows.flatten(0, 1).to(torch.float32) / 127.5 - 1
    return save_png(make_grid(tiles, columns=1 + neighbours), path)
