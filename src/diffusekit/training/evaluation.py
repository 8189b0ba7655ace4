"""Evaluation during training (the ``eval`` config section): FID/KID of EMA samples and per-noise-level losses.

- Every ``eval.every`` images: ``eval.num_samples`` samples from the EMA, drawn with the same seeds each
  time (so successive numbers differ only by the network), are scored against reference statistics computed
  once from the dataset (cached across runs) or read from ``eval.reference``. The best FID and how many
  evaluations have passed since are part of the checkpoint, so a resumed run keeps its best model and its
  early-stopping count; with ``eval.patience`` the run stops after that many evaluations without a better
  FID. The trainer saves the best model to ``<run>/best/``.
- Every ``eval.loss_every`` images: the training loss on fixed training images and on held-out images
  (``eval.validation``: the dataset's test split) per log-SNR bin, and their gap (a rising validation
  loss is a necessary sign of memorization). An image folder's test split is its held-out part
  (``data.val_fraction`` or ``data.val_dir``).

A latent run evaluates what a user sees: its samples are decoded before the Inception scores them, the
reference comes from the dataset's images, and the held-out loss is computed on the held-out images' latents
(encoded through the same cache).

The default extractor is ``inception-fast`` (not comparable to published FIDs, a few times cheaper); set
``eval.extractor: inception`` for the standard number.
"""

from __future__ import annotations

import dataclasses
import math

from ..config import Config
from ..data import CLIP_DATASETS, DATASETS, ImageArrays, load_training_data
from ..data.training_set import has_held_out
from ..latent import encode_dataset
from ..metrics.evaluate import (
    SamplingSettings,
    distributed_evaluation_features,
    feature_metrics,
    reference_for_data,
    sample_for_evaluation,
)
from ..metrics.inception import get_extractor
from ..metrics.noise_levels import NoiseLevelProbe
from ..metrics.stats import load_stats
from ..models import build_denoiser, build_loss
from .video import load_training_clips

__all__ = ["TrainingEvaluator"]


class TrainingEvaluator:
    def __init__(self, config: Config, data: ImageArrays, log=None, autoencoder=None):
        self.config, self.data, self.log = config, data, log
        self.autoencoder = autoencoder  # a latent run's frozen autoencoder
        self.best_fid: float | None = None
        self.best_nimg: int | None = None
        self.since_best = 0
        self.evaluations = 0
        self._extractor = self._reference = self._probe = None

    # -- state in the checkpoint ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"best_fid": self.best_fid, "best_nimg": self.best_nimg, "since_best": self.since_best,
                "evaluations": self.evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.best_fid, self.best_nimg = state.get("best_fid"), state.get("best_nimg")
        self.since_best, self.evaluations = int(state.get("since_best", 0)), int(state.get("evaluations", 0))

    def update_best(self, fid: float | None, cur_nimg: int) -> bool:
        """Count an evaluation; True when ``fid`` is the best so far (a NaN FID never is)."""
        self.evaluations += 1
        improved = fid is not None and math.isfinite(fid) and (self.best_fid is None or fid < self.best_fid)
        if improved:
            self.best_fid, self.best_nimg, self.since_best = fid, cur_nimg, 0
        elif fid is not None:
            self.since_best += 1
        return improved

    @property
    def should_stop(self) -> bool:
        patience = self.config.eval.patience
        return patience is not None and self.best_fid is not None and self.since_best >= patience

    # -- per-noise-level losses -----------------------------------------------------------------------
    def _validation_data(self) -> ImageArrays | None:
        split = self.config.eval.validation
        d = self.config.data
        if split == "none" or split == d.split:
            return None
        if self.config.video.frames is not None:  # held-out clips: built-in clip datasets have a test split
            if d.name not in CLIP_DATASETS:
                if self.log:
                    self.log(f"eval.validation: the video folder {d.name} has no {split} split; training loss only")
                return None
            return load_training_clips(dataclasses.replace(self.config, data=dataclasses.replace(d, limit=None)),
                                       split)
        if d.name not in DATASETS and (split != "test" or not has_held_out(d)):
            if self.log:
                self.log(f"eval.validation: the image folder {d.name} has no {split} split (data.val_fraction or "
                         "data.val_dir make one: the test split); training loss only")
            return None
        data = load_training_data(dataclasses.replace(d, split=split, limit=None, xflip=False))
        if self.autoencoder is not None:  # held-out latents, without flips
            latent = self.config.latent
            data = encode_dataset(self.autoencoder, data, flip=False, batch=latent.encode_batch, root=latent.cache_dir,
                                  log=self.log)
        if data.item_shape != self.data.item_shape:
            if self.log:
                self.log(f"eval.validation: {d.name}:{split} items are {data.item_shape}, the training items "
                         f"{self.data.item_shape}; training loss only")
            return None
        return data

    def noise_levels(self, trainer) -> dict:
        e = self.config.eval
        if self._probe is None:
            loss = build_loss(self.config, trainer.loss.schedule)  # a learned schedule: the run's own
            self._probe = NoiseLevelProbe.from_arrays(loss, self.data, self._validation_data(),
                                                      conditional=bool(trainer.num_classes), bins=e.loss_bins,
                                                      per_bin=e.loss_per_bin, seed=self.config.run.seed)
        # the trainer's denoiser: the network as it trains (precision, memory format, compilation)
        return self._probe(trainer.denoiser.network_output, device=trainer.device)

    # -- FID / KID of samples -------------------------------------------------------------------------
    def _prepare(self, device) -> None:
        e = self.config.eval
        if self._extractor is None:
            self._extractor = get_extractor(e.extractor, e.preprocess, e.extractor_resolution, device=device)
        if self._reference is None:
            if e.reference:
                self._reference = load_stats(e.reference)
            else:
                self._reference = reference_for_data(self.config.data, self._extractor,
                                                     e.reference_count or e.num_samples, e.reference_split,
                                                     log=self.log)

    def sample_metrics(self, trainer) -> dict:
        """Score ``eval.num_samples`` EMA samples; updates the best FID. The record says ``improved``."""
        config, e = self.config, self.config.eval
        self._prepare(trainer.device)
        ema_name = config.sample.ema or next(iter(trainer.emas.emas))
        denoiser = build_denoiser(config, trainer.emas[ema_name].model, trainer.loss.schedule)
        settings = SamplingSettings.from_config(config.sample, steps=e.steps, guidance=e.guidance,
                                                seed=config.run.seed)
        ctx = trainer.dist  # several processes: each draws its share of the samples and their features
        images, _, index = sample_for_evaluation(denoiser, tuple(trainer.info["image_shape"]), trainer.num_classes,
                                                 e.num_samples, settings, device=trainer.device, rank=ctx.rank,
                                                 world_size=ctx.world_size, decode=trainer.decode)
        images, features = distributed_evaluation_features(images, index, self._extractor)
        metrics = tuple(m.strip() for m in e.metrics.split(",") if m.strip())
        values, _ = feature_metrics(images, metrics, self._reference, self._extractor, features=features)
        record = {k: values[k] for k in ("fid", "kid", "kid_std", "precision", "recall") if k in values}
        improved = self.update_best(record.get("fid"), trainer.cur_nimg)
        record.update({"improved": improved, "best_fid": self.best_fid, "best_nimg": self.best_nimg,
                       "extractor": self._extractor.name, "num_samples": e.num_samples})
        return record
