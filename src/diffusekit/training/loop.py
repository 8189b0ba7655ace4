"""The training loop (DESIGN.md section 4): build, resume, then accumulate -> step -> EMA -> checkpoint.

Every random draw of training comes from one ``torch.Generator`` (data order through the resumable
sampler's own seed; times, noise and condition dropout through the generator) plus the global RNG that
dropout layers use. Both states, the optimizer, every EMA, the time sampler's importance statistics
and the image count are in the checkpoint, so a run stopped and resumed ends bit-identical on the CPU
to one that never stopped (tested). The learning rate is a function of the image count only.

Still to come with the rest of the training issue: the typed config with presets and files, the CLI,
the run directory's logs and sample grids, bf16 / compile on CUDA.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import parameterizations, schedules, time_sampling, weighting
from ..data import ImageArrays, InfiniteSampler
from ..denoiser import Denoiser
from ..loss import DiffusionLoss
from ..networks.dit import DiT
from ..networks.unet import UNet
from .checkpoint import latest_valid, load_checkpoint, prune, save_checkpoint
from .ema import EMASet
from .optim import LRSchedule, make_optimizer

__all__ = ["TrainConfig", "Trainer", "train"]


@dataclass
class TrainConfig:
    # the objective
    schedule: str = "rectified_flow"
    schedule_options: dict = field(default_factory=dict)
    parameterization: str = "velocity"
    parameterization_options: dict = field(default_factory=dict)
    time_distribution: str = "logit_normal"
    time_mode: str = "stratified"
    time_options: dict = field(default_factory=dict)
    weighting: str = "unit"
    weighting_options: dict = field(default_factory=dict)
    sigma_data: float = 0.5
    noise_conditioning: str = "logsnr"
    p_uncond: float = 0.1  # condition dropout for classifier-free guidance (seed 003)
    # the network
    network: str = "unet"  # unet | dit
    network_preset: str = "tiny"
    network_options: dict = field(default_factory=dict)
    # optimisation, counted in images
    batch_size: int = 32
    accumulation: int = 1
    optimizer: str = "adamw"
    lr: float = 2e-4
    warmup_images: int = 0
    lr_decay: str = "constant"
    lr_decay_images: int | None = None
    grad_clip: float | None = 1.0
    ema_half_lives: dict = field(default_factory=lambda: {"ema": 50_000.0})
    ema_rampup: float | None = 0.05
    total_images: int = 1_000
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1 or self.accumulation < 1 or self.batch_size % self.accumulation:
            raise ValueError(f"batch_size {self.batch_size} must be a positive multiple of accumulation "
                             f"{self.accumulation}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond}")
        if self.network not in ("unet", "dit"):
            raise ValueError(f"unknown network {self.network!r}; choose 'unet' or 'dit'")


def build_network(config: TrainConfig, data: ImageArrays) -> nn.Module:
    _, height, width, channels = data.images.shape
    if height != width:
        raise ValueError(f"images must be square for now, got {height}x{width}")
    common = {"img_resolution": height, "in_channels": channels, "num_classes": data.num_classes,
              **config.network_options}
    if config.network == "unet":
        return UNet.from_preset(config.network_preset, out_channels=channels, **common)
    return DiT.from_name(config.network_preset, **common)


class Trainer:
    """Holds everything a training run is made of; ``run`` is the loop itself."""

    def __init__(self, config: TrainConfig, data: ImageArrays, run_dir: str | Path, device: str = "cpu"):
        self.config, self.data, self.device = config, data, torch.device(device)
        self.checkpoint_dir = Path(run_dir) / "checkpoints"
        torch.manual_seed(config.seed)  # network initialisation and dropout
        self.network = build_network(config, data).to(self.device)
        schedule = schedules.get(config.schedule, **config.schedule_options)
        param = parameterizations.get(config.parameterization, **config.parameterization_options)
        self.denoiser = Denoiser(self.network, schedule, param, sigma_data=config.sigma_data,
                                 noise_conditioning=config.noise_conditioning)
        sampler = time_sampling.get(config.time_distribution, config.time_mode, **config.time_options)
        self.loss = DiffusionLoss(schedule, param, sampler, weighting.get(config.weighting,
                                                                           **config.weighting_options))
        self.optimizer = make_optimizer(self.network.parameters(), config.optimizer, config.lr)
        decay_images = config.lr_decay_images or config.total_images
        self.lr = LRSchedule(config.lr, config.warmup_images, config.lr_decay,
                             total_images=decay_images, ref_images=decay_images)
        self.emas = EMASet(self.network, config.ema_half_lives, config.ema_rampup)
        self.data_sampler = InfiniteSampler(len(data), seed=config.seed)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.cur_nimg = 0

    # -- state --------------------------------------------------------------------------------------
    def training_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(), "data_sampler": self.data_sampler.state_dict(),
                "time_sampler": self.loss.time_sampler.state_dict(),
                "config": {k: v for k, v in dataclasses.asdict(self.config).items() if _plain(v)}}

    def save(self) -> Path:
        path = save_checkpoint(self.checkpoint_dir, self.cur_nimg, self.network.state_dict(),
                               self.emas.state_dicts(), self.training_state())
        prune(self.checkpoint_dir, self.config.keep_checkpoints)
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Load ``path`` or the newest valid checkpoint of this run; False when there is none."""
        path = Path(path) if path is not None else latest_valid(self.checkpoint_dir)
        if path is None:
            return False
        self.cur_nimg, model_state, ema_states, state = load_checkpoint(path)
        self.network.load_state_dict(model_state)
        self.emas.load_state_dicts(ema_states)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.data_sampler.load_state_dict(state["data_sampler"])
        self.loss.time_sampler.load_state_dict(state["time_sampler"])
        return True

    # -- the loop -----------------------------------------------------------------------------------
    def _micro_batch(self, n: int):
        x0, labels = self.data.tensors(self.data_sampler.next_indices(n))
        drop = torch.rand(n, generator=self.generator) < self.config.p_uncond
        labels = torch.where(drop, torch.full_like(labels, self.data.num_classes), labels)
        return x0.to(self.device), labels.to(self.device)

    def step(self) -> float:
        """One optimizer step over ``batch_size`` images (in ``accumulation`` micro-batches)."""
        config = self.config
        micro = config.batch_size // config.accumulation
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for _ in range(config.accumulation):
            x0, labels = self._micro_batch(micro)
            loss = self.loss(self.denoiser.network_output, x0, generator=self.generator, cond={"cond": labels})
            (loss.loss.mean() / config.accumulation).backward()
            total += loss.loss.detach().mean() / config.accumulation
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.network.parameters(), config.grad_clip)
        self.cur_nimg += config.batch_size
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.cur_nimg)
        self.optimizer.step()
        self.emas.update(self.network, self.cur_nimg, config.batch_size)
        return total

    def run(self, until_images: int | None = None, log=None) -> None:
        until = min(until_images or self.config.total_images, self.config.total_images)
        self.network.train()
        next_checkpoint = (self.cur_nimg // self.config.checkpoint_every + 1) * self.config.checkpoint_every
        while self.cur_nimg < until:
            loss = self.step()
            if log is not None:
                log({"cur_nimg": self.cur_nimg, "loss": loss})
            if self.cur_nimg >= next_checkpoint or self.cur_nimg >= self.config.total_images:
                self.save()
                next_checkpoint += self.config.checkpoint_every


def _plain(value) -> bool:
    return isinstance(value, (int, float, str, bool, type(None))) or (
        isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items()))


def train(config: TrainConfig, data: ImageArrays, run_dir: str | Path, resume: str = "auto",
          device: str = "cpu", until_images: int | None = None, log=None) -> Trainer:
    """Build a trainer, resume it (``auto``: from the newest valid checkpoint if any; ``never``; or a
    checkpoint path), and train until ``until_images`` (default: the configured total)."""
    trainer = Trainer(config, data, run_dir, device)
    if resume == "auto":
        trainer.resume()
    elif resume != "never":
        trainer.resume(resume)
    trainer.run(until_images, log)
    return trainer
