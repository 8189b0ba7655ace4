"""Training an autoencoder with the diffusion trainer's loop (``network.kind: autoencoder``).

The same run directory, checkpoints (exact resume), EMAs, logs, progress bar, preemption and evaluation
schedule as a diffusion model; what differs is the step and what is evaluated:

- **Generator step** (the base loop's optimizer and EMA): reconstruction + KL (or the codebook's loss) + the
  perceptual term + the adaptive-weight GAN term (:class:`~diffusekit.training.autoencoder_loss.AutoencoderLoss`).
  The posterior sample draws from the trainer's generator, so the run is reproducible.
- **Discriminator step** (after the generator's update, from ``autoencoder.gan_start_images`` on): a
  :class:`~diffusekit.networks.discriminator.PatchDiscriminator` with its own optimizer and learning-rate
  schedule, on the reconstructions the generator step made (detached). The discriminator and its optimizer are
  in the checkpoint's training state.
- **Latent statistics**: before every checkpoint the model and each EMA encode the first
  ``autoencoder.stats_images`` training images and store the latents' per-channel mean and std (or LDM's single
  scale) in their ``latent_shift`` / ``latent_scale`` buffers, so a latent diffusion model sees latents of about
  unit variance. Nothing random is drawn for it, so resume stays exact.
- **Evaluation**: at ``eval.loss_every`` the reconstruction PSNR, L1 and KL on fixed held-out and training
  images; at ``eval.every`` the rFID of the held-out split's reconstructions (best model kept in ``best/``);
  the sample grids show held-out images above their reconstructions.

One process only: the adaptive GAN weight differentiates through the decoder inside the step, and the
codebook's EMA statistics would need a reduction across processes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import distributed
from ..config import Config, ConfigError
from ..data import ImageArrays
from ..errors import UsageError
from ..metrics.evaluate import feature_metrics, reference_for_data
from ..metrics.inception import get_extractor, quantize
from ..models import resolve_precision
from ..networks.discriminator import PatchDiscriminator
from .autoencoder_loss import AutoencoderLoss
from .evaluation import TrainingEvaluator
from .loop import Trainer, data_info
from .optim import LRSchedule, make_optimizer

__all__ = ["AutoencoderTrainer", "AutoencoderEvaluator", "latent_statistics", "psnr"]


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """[B]: the peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), per image."""
    mse = ((x.float().clamp(-1, 1) - y.float().clamp(-1, 1)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


@torch.no_grad()
def latent_statistics(module: nn.Module, images: Tensor, mode: str, batch: int = 64) -> tuple[Tensor, Tensor]:
    """(shift [C], scale [C]) that bring ``module``'s posterior means of ``images`` to zero mean and unit variance:
    per channel (``channel``) or, as LDM's ``scale_factor``, one scale from the std of all elements and no shift
    (``scalar``)."""
    was_training = module.training
    module.eval()
    z = torch.cat([module.encode(images[i:i + batch]).mode().float() for i in range(0, len(images), batch)])
    module.train(was_training)
    channels = z.shape[1]
    if mode == "scalar":
        return torch.zeros(channels), torch.full((channels,), 1.0 / float(z.std().clamp_min(1e-8)))
    per_channel = z.transpose(0, 1).reshape(channels, -1).double()
    return per_channel.mean(1).float(), (1.0 / per_channel.std(1).clamp_min(1e-8)).float()


class AutoencoderEvaluator(TrainingEvaluator):
    """Reconstruction quality on held-out images: PSNR / L1 / KL (``eval.loss_every``) and rFID (``eval.every``)."""

    def __init__(self, config: Config, data: ImageArrays, log=None):
        super().__init__(config, data, log)
        self._held_out = None

    def held_out(self) -> ImageArrays:
        """The ``eval.validation`` split (the training split itself when that is ``none`` or has none)."""
        if self._held_out is None:
            held = self._validation_data()
            self._held_out = held if held is not None else self.data
        return self._held_out

    @staticmethod
    def _model(trainer) -> nn.Module:
        name = trainer.config.sample.ema or next(iter(trainer.emas.emas))
        return trainer.emas[name].model

    @torch.no_grad()
    def noise_levels(self, trainer) -> dict:
        count = min(self.config.eval.loss_bins * self.config.eval.loss_per_bin, 512)
        model = self._model(trainer)
        model.eval()
        record = {}
        for name, data in (("val", self.held_out()), ("train", self.data)):
            x, _ = data.tensors(range(min(count, len(data))))
            values = {"psnr": [], "l1": [], "kl": []}
            for i in range(0, len(x), 64):
                batch = x[i:i + 64].to(trainer.device)
                posterior = model.encode(batch)
                reconstruction = model.decode(posterior.mode()).float()
                values["psnr"].append(psnr(reconstruction, batch))
                values["l1"].append((reconstruction - batch).abs().flatten(1).mean(1))
                values["kl"].append(posterior.kl())
            for key, parts in values.items():
                record[f"reconstruction/{name}/{key}"] = float(torch.cat(parts).mean())
        return record

    @torch.no_grad()
    def sample_metrics(self, trainer) -> dict:
        """rFID (and KID) of the reconstructions of the first ``eval.num_samples`` held-out images."""
        e = self.config.eval
        self._prepare(trainer.device)
        held = self.held_out()
        n = min(e.num_samples, len(held))
        model = self._model(trainer)
        model.eval()
        images = []
        for i in range(0, n, 64):
            x, _ = held.tensors(range(i, min(i + 64, n)))
            images.append(quantize(model.decode(model.encode(x.to(trainer.device)).mode()).float().cpu()))
        metrics = tuple(m.strip() for m in e.metrics.split(",") if m.strip())
        values, _ = feature_metrics(torch.cat(images), metrics, self._reference, self._extractor)
        record = {k: values[k] for k in ("fid", "kid", "kid_std", "precision", "recall") if k in values}
        improved = self.update_best(record.get("fid"), trainer.cur_nimg)
        record.update({"improved": improved, "best_fid": self.best_fid, "best_nimg": self.best_nimg,
                       "extractor": self._extractor.name, "num_samples": n, "reconstruction": True})
        return record

    def _prepare(self, device) -> None:
        e = self.config.eval
        if self._extractor is None:
            self._extractor = get_extractor(e.extractor, e.preprocess, e.extractor_resolution, device=device)
        if self._reference is None:  # the same held-out images the reconstructions come from
            split = self.config.eval.validation if self.config.eval.validation != "none" else self.config.data.split
            self._reference = reference_for_data(self.config.data, self._extractor, min(e.num_samples,
                                                 len(self.held_out())), split, log=self.log)


class AutoencoderTrainer(Trainer):
    """:class:`~diffusekit.training.loop.Trainer` for ``network.kind: autoencoder`` (module docstring)."""

    def __init__(self, config: Config, data: ImageArrays, run_dir, device: str | None = None, log=None):
        if distributed.context().distributed:
            raise UsageError("autoencoder training runs in one process (the adaptive GAN weight and the codebook "
                             "statistics are not reduced across processes): drop --nproc")
        if config.run.compile:
            raise UsageError("run.compile: autoencoder training runs eagerly (the adaptive GAN weight "
                             "differentiates through the decoder inside the step); set run.compile false")
        super().__init__(config, data, run_dir, device, log)
        a, opt = config.autoencoder, config.optim
        self.discriminator = None
        if a.gan_weight > 0:
            side = min(self.info["image_shape"][1:])
            if side < 3 * 2 ** a.disc_layers:  # each stride-2 layer halves; the two last 4x4 convs need 3 pixels
                raise ConfigError(f"autoencoder.disc_layers {a.disc_layers}: {side}-pixel images are too small for "
                                  f"the patch discriminator (it needs >= {3 * 2 ** a.disc_layers}); use fewer layers")
            self.discriminator = PatchDiscriminator(self.info["image_shape"][0], a.disc_channels, a.disc_layers)
            self.discriminator.to(self.device, torch.float32)
            disc_lr = a.disc_lr or opt.lr
            self.disc_optimizer = make_optimizer(self.discriminator.parameters(), opt.optimizer, disc_lr,
                                                 implementation="fused")
            decay_images = opt.decay_images or config.run.total_images
            self.disc_lr = LRSchedule(disc_lr, opt.warmup_images, opt.decay, total_images=decay_images,
                                      ref_images=decay_images)
        self._pending: list[tuple[Tensor, Tensor]] = []  # (images, reconstructions) for the discriminator step
        self._gan_on = False
        self._stats: dict[str, Tensor] = {}
        self._stats_steps = 0
        self._stats_images: Tensor | None = None

    # -- what is trained -----------------------------------------------------------------------------
    def _data_info(self, data) -> dict:
        return data_info(data, conditional=False)

    def _build_objective(self, network: nn.Module) -> None:
        a = self.config.autoencoder
        self.ae_loss = AutoencoderLoss(reconstruction=a.reconstruction, kl_weight=a.kl_weight,
                                       perceptual=a.perceptual, perceptual_weight=a.perceptual_weight,
                                       gan_weight=a.gan_weight, gan_start_images=a.gan_start_images,
                                       gan_loss=a.gan_loss, adaptive_weight=a.adaptive_weight)
        if a.perceptual != "none":
            self.ae_loss.to(self.device)

    def _make_evaluator(self):
        return AutoencoderEvaluator(self.config, self.data)

    def _objective_state(self) -> dict:
        if self.discriminator is None:
            return {}
        return {"discriminator": self.discriminator.state_dict(), "disc_optimizer": self.disc_optimizer.state_dict()}

    def _load_objective_state(self, state: dict) -> None:
        if self.discriminator is None:
            return
        if "discriminator" not in state:
            raise ValueError("this checkpoint has no discriminator (it was trained with autoencoder.gan_weight 0); "
                             "resume it with the same config")
        self.discriminator.load_state_dict(state["discriminator"])
        self.disc_optimizer.load_state_dict(state["disc_optimizer"])

    # -- one step ------------------------------------------------------------------------------------
    def step(self) -> Tensor:
        self._pending.clear()
        return super().step()

    def _accumulate(self, x0: Tensor, cond: dict, part: slice, last: bool) -> Tensor:
        opt = self.config.optim
        self._gan_on = self.discriminator is not None and self.cur_nimg >= self.config.autoencoder.gan_start_images
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)  # the generator's step does not train the discriminator
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.execution_bf16):
            output = self.network(x0.contiguous(memory_format=self._memory_format), generator=self.generator)
        output.reconstruction = output.reconstruction.float()
        loss, stats = self.ae_loss.generator_loss(x0, output, self.network.last_layer(),
                                                  self.discriminator if self._gan_on else None, self.cur_nimg)
        (loss / opt.accumulation).backward()
        if output.quantization is not None:  # codebook health: perplexity of the batch's codes, fraction used
            stats = {**stats, "perplexity": output.quantization.perplexity, "usage": output.quantization.usage}
        if self._gan_on:
            self._pending.append((x0, output.reconstruction.detach()))
        self._add_stats(stats)
        return loss.detach()

    def _after_update(self) -> None:
        if not self._pending:
            return
        opt = self.config.optim
        self.discriminator.requires_grad_(True)
        self.disc_optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        before = self.cur_nimg - opt.batch_size
        stats: dict[str, Tensor] = {}
        for x0, reconstruction in self._pending:
            loss, stats = self.ae_loss.discriminator_loss(x0, reconstruction, self.discriminator, before)
            (loss / len(self._pending)).backward()
            total += loss.detach() / len(self._pending)
        self._pending.clear()
        if not bool(torch.isfinite(total)):  # skipped like a generator step; counted with them
            self.disc_optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            return
        if opt.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.discriminator.parameters(), opt.grad_clip)
        for group in self.disc_optimizer.param_groups:
            group["lr"] = self.disc_lr(self.cur_nimg)
        self.disc_optimizer.step()
        self._add_stats(stats, count=False)

    @property
    def execution_bf16(self) -> bool:
        return resolve_precision(self.execution.precision, self.device) == "bf16"

    @property
    def _memory_format(self):
        return torch.channels_last if self.execution.channels_last else torch.contiguous_format

    def _add_stats(self, stats: dict[str, Tensor], count: bool = True) -> None:
        for key, value in stats.items():
            value = value.detach().float()
            self._stats[key] = self._stats[key] + value if key in self._stats else value
        self._stats_steps += int(count)

    def log_extras(self) -> dict:
        steps = max(self._stats_steps, 1)
        out = {f"ae/{k}": float(v) / steps for k, v in self._stats.items()}
        self._stats, self._stats_steps = {}, 0
        return out

    # -- checkpoints carry the latent statistics ----------------------------------------------------
    def _update_latent_statistics(self) -> None:
        a = self.config.autoencoder
        if self._stats_images is None:
            self._stats_images = self.data.tensors(range(min(a.stats_images, len(self.data))))[0].to(self.device)
        for module in (self.network, *(ema.model for ema in self.emas.emas.values())):
            shift, scale = latent_statistics(module, self._stats_images, a.latent_stats)
            module.latent_shift.copy_(shift)
            module.latent_scale.copy_(scale)

    def save(self):
        self._update_latent_statistics()
        return super().save()

    def save_best(self):
        self._update_latent_statistics()
        return super().save_best()

    # -- sample grids: held-out images above their reconstructions -----------------------------------
    @torch.no_grad()
    def grid_images(self) -> tuple[Tensor, int]:
        columns = self.config.sample.grid_columns
        held = self.evaluator.held_out()
        x, _ = held.tensors(range(min(4 * columns, len(held))))
        model = AutoencoderEvaluator._model(self)
        model.eval()
        reconstruction = model.decode(model.encode(x.to(self.device)).mode()).float().cpu()
        rows = []
        for first in range(0, len(x), columns):
            rows += [x[first:first + columns], reconstruction[first:first + columns]]
        return torch.cat(rows), columns
