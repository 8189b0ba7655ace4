"""Evaluating a model: reproducible, shardable sampling, then FID / KID / precision-recall / memorization.

Sampling for evaluation draws image i from noise seeded by ``(seed, i)`` with label ``i``'s class in a
class-balanced, class-major order (100 per class for 1000 MNIST samples), so a number can be reproduced
exactly and split across ranks: rank r of W takes batches r, r + W, ... (:func:`shard_batches`) and the
union over ranks is the single-process sample set. Metric computations take uint8 images, so what is
measured is what a PNG of the samples would hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import distributed
from ..data import load_training_data
from ..data.training_set import folder_options, has_held_out
from ..errors import UsageError
from ..generate import class_major_labels, generate
from ..guidance import GuidanceSettings
from ..images import make_grid
from ..models import load_guide
from ..sampling import same_sampler
from .features import array_batches, cached_image_stats, dataset_label, dataset_reference_stats
from .fid import fid_from_stats
from .inception import InceptionV3, quantize
from .kid import kid
from .memorization import memorization_check, write_memorization_grid
from .precision_recall import precision_recall
from .stats import FeatureStats, check_compatible

__all__ = ["SamplingSettings", "shard_batches", "sample_for_evaluation", "feature_metrics", "METRICS"]

METRICS = ("fid", "kid", "precision_recall", "memorization")
NEAREST_ROWS = 16  # samples of smallest nearest / second-nearest ratio shown beside their neighbours


@dataclass
class SamplingSettings:
    sampler: str = "multistep"
    steps: int = 20
    spacing: str = "uniform"
    guidance: GuidanceSettings = field(default_factory=GuidanceSettings)
    options: dict = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 250

    def __post_init__(self):
        if not isinstance(self.guidance, GuidanceSettings):  # a plain weight: classifier-free guidance
            self.guidance = GuidanceSettings(scale=float(self.guidance))

    @classmethod
    def from_config(cls, sample, guidance: float | GuidanceSettings | None = None, **overrides) -> SamplingSettings:
        """The run's ``sample`` section with ``overrides`` (None values keep the run's own). Options belong to
        the run's sampler and are dropped when another sampler is chosen. ``guidance``: a weight replaces the
        run's (keeping its other guidance settings); settings replace them all."""
        values = {"sampler": sample.sampler, "steps": sample.steps, "spacing": sample.spacing,
                  "options": dict(sample.options)}
        if overrides.get("sampler") is not None and not same_sampler(overrides["sampler"], sample.sampler):
            values["options"] = {}  # the run's options belong to its own sampler
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not isinstance(guidance, GuidanceSettings):
            guidance = GuidanceSettings.from_sample(sample, scale=guidance)
        return cls(guidance=guidance, **values)

    def describe(self) -> dict:
        return {"sampler": self.sampler, "steps": self.steps, "spacing": self.spacing,
                "guidance": self.guidance.scale, "guidance_settings": self.guidance.describe(),
                "options": self.options, "seed": self.seed}


def shard_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
    """(first index, count) of the batches rank ``rank`` of ``world_size`` draws: batches r, r + W, ..."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    batches = [(first, min(batch_size, n - first)) for first in range(0, n, batch_size)]
    return batches[rank::world_size]


def sample_for_evaluation(denoiser, image_shape: tuple[int, int, int], num_classes: int, n: int,
                          settings: SamplingSettings, *, device: str | torch.device = "cpu", rank: int = 0,
                          world_size: int = 1, progress=None, decode=None) -> tuple[Tensor, Tensor | None, Tensor]:
    """This rank's share of the ``n`` evaluation samples: (uint8 NCHW images, labels or None, sample indices).
    ``decode``: a latent model's decoder (the images are the decoded ones; ``image_shape`` is the latent shape)."""
    if n < 1:
        raise UsageError(f"the number of samples must be >= 1, got {n}")
    labels = class_major_labels(n, num_classes) if num_classes else None
    guidance = settings.guidance
    if labels is None and guidance.autoguide is None:
        guidance = guidance.unguided()  # classifier-free guidance needs classes
    guide = load_guide(guidance, image_shape, num_classes, device)
    images, indices = [], []
    for first, count in shard_batches(n, settings.batch_size, rank, world_size):
        batch = generate(denoiser, count, image_shape, labels=None if labels is None else labels[first:first + count],
                         num_classes=num_classes, sampler=settings.sampler, steps=settings.steps,
                         spacing=settings.spacing, guidance=guidance, options=settings.options, seed=settings.seed,
                         batch_size=count, device=device, first=first, guide=guide, decode=decode)
        images.append(quantize(batch))
        indices.append(torch.arange(first, first + count))
        if progress is not None:
            progress(count)
    index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    if images:
        out = torch.cat(images)
    else:  # a rank without samples: an empty batch of the images' shape (a latent model's decoded one)
        shape = image_shape if decode is None else decode(torch.zeros((1, *image_shape), device=device)).shape[1:]
        out = torch.zeros((0, *shape), dtype=torch.uint8)
    return out, (None if labels is None else labels[index]), index


def sample_features(images: Tensor, extractor: InceptionV3, batch_size: int = 50, progress=None) -> Tensor:
    """Features [n, dim] (float32, CPU) of uint8 NCHW ``images`` (n may be 0: a rank without samples)."""
    out = []
    for batch in array_batches(images, batch_size):
        out.append(extractor(batch).float().cpu())
        if progress is not None:
            progress(batch.shape[0])
    return torch.cat(out) if out else torch.zeros((0, extractor.dim))


def distributed_evaluation_features(images: Tensor, index: Tensor, extractor: InceptionV3 | None, *,
                                    batch_size: int = 50, progress=None) -> tuple[Tensor, Tensor | None]:
    """Every rank's samples and their features (computed where the samples were drawn), gathered on every rank
    in sample order: (uint8 images [n, ...], float32 features [n, dim] or None without an extractor). One
    process: the same, without communication."""
    features = None
    if extractor is not None:
        features = distributed.gather_in_order(sample_features(images, extractor, batch_size, progress), index)
    return distributed.gather_in_order(images, index), features


def feature_metrics(images: Tensor, metrics: tuple[str, ...], reference: FeatureStats, extractor: InceptionV3, *,
                    batch_size: int = 50, kid_subsets: int = 100, kid_subset_size: int = 1000, pr_k: int = 3,
                    progress=None, features: Tensor | None = None) -> tuple[dict, FeatureStats]:
    """FID / KID / precision-recall of uint8 ``images`` against ``reference`` (statistics with features for
    KID and precision-recall). ``features``: the images' features when already computed (distributed
    evaluation), then ``images`` is not read. Returns (results, the samples' statistics)."""
    unknown = sorted(set(metrics) - {"fid", "kid", "precision_recall"})
    if unknown:
        raise UsageError(f"unknown feature metric(s) {', '.join(unknown)}; choose from fid, kid, precision_recall")
    if reference.features is None and {"kid", "precision_recall"} & set(metrics):
        raise UsageError(f"the reference statistics ({reference.describe()}) hold no features, which KID and "
                         "precision/recall need: recompute them with `diffusekit ref-stats` (features are kept)")
    if features is None:
        features = sample_features(images, extractor, batch_size, progress)
    if features.shape[0] < 2:
        raise UsageError(f"need at least 2 images for feature statistics, got {features.shape[0]}")
    stats = FeatureStats.from_features(features.numpy(), **extractor.describe(), source="samples")
    check_compatible(stats, reference, ("the samples' features", "the reference statistics"))
    results: dict = {"n": stats.count, "reference": reference.describe(), "reference_count": reference.count,
                     "extractor": extractor.name, "preprocess": extractor.preprocess,
                     "comparable_to_published": extractor.comparable}
    if "fid" in metrics:
        results["fid"] = fid_from_stats(stats, reference)
    if "kid" in metrics:
        results.update(kid(stats.features, reference.features, kid_subsets, kid_subset_size))
    if "precision_recall" in metrics:
        results.update(precision_recall(reference.features, stats.features, k=pr_k))
    return results, stats


def as_json(value):
    """numpy / torch scalars and arrays -> plain JSON values."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.tolist() if getattr(value, "ndim", 0) else value.item()
    return value


def reference_for_data(data_config, extractor: InceptionV3, count: int, split: str = "test", *, batch_size: int = 50,
                       progress=None, log=None) -> FeatureStats:
    """Cached statistics of the first ``count`` images of the run's dataset (``split``; an image folder's ``test``
    is its held-out split, and without one (data.val_fraction, data.val_dir) its ``train``) at the size the model
    was trained at, features kept for KID and precision/recall."""
    if split != "train" and not has_held_out(data_config):
        split = "train"  # a folder without a held-out part
    options = folder_options(data_config)
    if options:  # a folder: only the first `count` images are read, decoded as a stream
        options.update(captions=False, storage="stream", limit=count)
    return dataset_reference_stats(extractor, data_config.name, split, count, resolution=data_config.resolution,
                                   channels=data_config.channels, resize=data_config.resize, batch_size=batch_size,
                                   progress=progress, log=log, **options)


def memorization_metrics(samples: Tensor, data_config, *, feature_extractor: InceptionV3 | None = None,
                         out_dir=None, batch_size: int = 50, progress=None, log=None) -> dict:
    """Nearest training neighbours of ``samples`` (uint8 NCHW) over the run's whole training set, in pixel space
    and, with ``feature_extractor``, in its feature space (training features cached). Writes a PNG grid per
    space of the flagged samples beside their neighbours into ``out_dir``, and one of the ``NEAREST_ROWS`` samples
    of smallest ratio, flagged or not (``memorization-<space>-nearest.png``)."""
    training = load_training_data(data_config)
    train_pixels = torch.from_numpy(np.array(training.images, copy=True)).permute(0, 3, 1, 2)  # writable, contiguous
    results = {}
    spaces = [("pixel", samples, train_pixels)]
    if feature_extractor is not None:
        train_stats = cached_image_stats(feature_extractor, training.images, dataset_label(data_config.name),
                                         data_config.split, batch_size=batch_size, progress=progress, log=log)
        sample_features = torch.cat([feature_extractor(b) for b in array_batches(samples, batch_size)])
        spaces.append((feature_extractor.name, sample_features, torch.from_numpy(train_stats.features).double()))
    for space, queries, references in spaces:
        result = memorization_check(queries, references, space=space)
        summary = result.summary()
        if out_dir is not None:
            path = write_memorization_grid(Path(out_dir) / f"memorization-{space}.png", result, samples, train_pixels)
            summary["grid"] = str(path) if path is not None else None
            nearest = write_memorization_grid(Path(out_dir) / f"memorization-{space}-nearest.png", result, samples,
                                              train_pixels, max_rows=NEAREST_ROWS, only_flagged=False)
            summary["nearest_grid"] = str(nearest)
        results[space] = summary
    return results


def preview_grid(images: Tensor, labels: Tensor | None, per_class: int = 10, max_classes: int = 10):
    """A uint8 grid of evaluation samples: a row per class (first ``per_class`` of each), else the first 100."""
    if labels is None:
        return make_grid(images[:100].float() / 127.5 - 1, 10)
    rows = [images[labels == c][:per_class] for c in labels.unique()[:max_classes]]
    columns = max(len(r) for r in rows)
    return make_grid(torch.cat(rows).float() / 127.5 - 1, columns)
