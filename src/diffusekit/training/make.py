"""The trainer a config asks for (a diffusion model on pixels or latents, or an autoencoder), and ``train``."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..data import ImageArrays, load_training_data
from .autoencoder import AutoencoderTrainer
from .loop import Trainer
from .video import load_training_clips

__all__ = ["make_trainer", "train", "training_data", "INIT_REPORT"]

INIT_REPORT = "init_from.json"  # in the run directory: what a run started from another's weights did not take over


def training_data(config: Config):
    """What a run trains on: the clips of a video run (``video.frames``), else the images of ``data``."""
    if config.video.frames is not None:
        return load_training_clips(config)
    return load_training_data(config.data)


def make_trainer(config: Config, data: ImageArrays, run_dir: str | Path, device: str | None = None,
                 log=None) -> Trainer:
    """:class:`~diffusekit.training.autoencoder.AutoencoderTrainer` for ``network.kind: autoencoder``, else the
    diffusion :class:`~diffusekit.training.loop.Trainer`. ``log``: messages while building (the latent cache)."""
    kind = AutoencoderTrainer if config.network.kind == "autoencoder" else Trainer
    return kind(config, data, run_dir, device, log)


def train(config: Config, data: ImageArrays, run_dir: str | Path, resume: str = "auto", device: str | None = None,
          until_images: int | None = None, hooks=None) -> Trainer:
    """Build the trainer, resume it (``auto``: from the newest valid checkpoint if any; ``never``; or a
    checkpoint path), and train until ``until_images`` (default: the configured total). A fine-tuning run
    (``run.init_from``) starting from nothing writes its report to ``run_dir/init_from.json``."""
    trainer = make_trainer(config, data, run_dir, device)
    if trainer.init_report is not None:  # a fine-tuning run's record of what did not transfer
        trainer.init_report.write(Path(run_dir) / INIT_REPORT)
    if resume == "auto":
        trainer.resume()
    elif resume != "never":
        trainer.resume(resume)
    trainer.run(until_images, hooks)
    return trainer
