"""The training loop: build, resume, then accumulate -> step -> EMA -> events.

Every random draw of training comes from one ``torch.Generator`` (times, noise and condition dropout)
plus the global RNG that dropout layers use; the data order is a pure function of (seed, position).
Both RNG states, the optimizer, every EMA, the time sampler's importance statistics, the data position
and the image count are in the checkpoint, so a run stopped and resumed ends bit-identical on the CPU to
one that never stopped (tested). The learning rate is a function of the image count only.

A latent run (``latent.autoencoder``) trains on the dataset encoded once by the frozen autoencoder
(:mod:`diffusekit.latent`): ``data`` becomes a :class:`~diffusekit.latent.LatentArrays` of normalised latents,
the network is built for the latent shape, and ``info["latent"]`` records the autoencoder (path, weights,
digest) and the decoded image shape, so sampling decodes with the same one.

A caption-conditioned run (``data.captions``) is text-only: the network is built with ``num_classes`` 0 and
``text_dim``, the train captions are encoded once (:mod:`diffusekit.training.captions`), and each image gets a
caption of its class drawn with the trainer's generator; condition dropout sets ``text_null``.

A fine-tuning run (``run.init_from``) starts from another run's weights (:mod:`diffusekit.models.transfer`): they
are copied into the network as it is built, so every EMA starts from them; the image count, learning-rate schedule,
data position and random streams start from zero, and the optimizer state is fresh unless ``run.init_optimizer``.
``init_report`` lists what did not transfer. A run that has checkpoints resumes from its own instead.

Periodic work (metrics, sample grids, post-hoc EMA snapshots, checkpoints) is triggered when the image count
crosses a multiple of its interval and is handed to ``hooks`` (:class:`~diffusekit.training.rundir.RunDirectory` in the
CLI), so the loop itself stays free of file formats.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .. import distributed
from ..cascade import training_condition
from ..conditions import select
from ..config import Config, ConfigError, to_dict
from ..config.validate import check_guidance
from ..data import ImageArrays
from ..data.augment import augment
from ..data.captions import CAPTIONED_DATASETS
from ..errors import NonFiniteError
from ..guidance import drop_conditions
from ..latent import encode_dataset, load_autoencoder
from ..learned_schedule import LearnedVP, endpoint_terms
from ..models import (
    ExecutedNetwork,
    Execution,
    augment_settings,
    build_denoiser,
    build_loss,
    build_network,
    build_schedule,
    cascade_settings,
    latest_valid,
    load_checkpoint,
    network_conditioning,
    prune,
    read_source,
    save_checkpoint,
    source_optimizer_state,
    transfer_weights,
)
from ..time_sampling import TimeDraw
from .batches import BatchStream
from .captions import caption_table, folder_caption_table
from .ema import EMASet
from .evaluation import TrainingEvaluator
from .optim import LRSchedule, make_optimizer
from .posthoc_snapshots import check_budget, snapshot_interval
from .video import VideoBatches, load_image_pool

__all__ = ["Trainer", "data_info", "NonFiniteError"]


def data_info(data: ImageArrays, conditional: bool, captions: bool = False) -> dict:
    """What rebuilding the network needs to know about the training data (stored in checkpoints). With
    ``captions`` the labels only pick captions: the network is unconditional by label (num_classes 0).
    ``data`` may be a :class:`~diffusekit.latent.LatentArrays`: the shape is then the latents'."""
    num_classes = data.num_classes if conditional and not captions else 0
    # [C, H, W] of an image, [C, F, H, W] of a clip
    return {"image_shape": [int(size) for size in data.item_shape], "num_classes": int(num_classes),
            "class_names": list(data.class_names) if num_classes else []}


def _crossed(before: int, after: int, every: int | None) -> bool:
    return bool(every) and before // every != after // every


class Trainer:
    """Holds everything a training run is made of; ``run`` is the loop itself."""

    def __init__(self, config: Config, data: ImageArrays, run_dir: str | Path, device: str | None = None, log=None):
        self.dist = distributed.context()
        self.device = torch.device(device or distributed.device_for(config.run.device))
        self.autoencoder = None  # a latent run's frozen autoencoder (diffusekit.latent.LatentAutoencoder)
        pixels = data
        if config.latent.autoencoder is not None:
            self.autoencoder, data = self._encode(config, data, log)
        self.config, self.data = config, data
        self.checkpoint_dir = Path(run_dir) / "checkpoints"
        self.info = self._data_info(data)
        if self.autoencoder is not None:
            self.info["latent"] = {**self.autoencoder.describe(), "image_shape": list(pixels.item_shape)}
        self.num_classes = self.info["num_classes"]
        torch.manual_seed(config.run.seed)  # network initialisation and dropout
        image_shape = tuple(self.info["image_shape"])
        try:
            self.network = build_network(config.network, image_shape, self.num_classes,
                                         **network_conditioning(config, image_shape))
        except ConfigError as e:
            if self.autoencoder is None:
                raise
            pixels_shape = "x".join(map(str, pixels.item_shape))
            raise ConfigError(f"the autoencoder {self.autoencoder.source} turns the {pixels_shape} images into "
                              f"{'x'.join(map(str, image_shape))} latents, which this network config does not "
                              f"take: {e}") from None
        # fine-tuning: another run's weights, before the EMAs copy the network (they start from them) and before
        # DDP / FSDP take it; never over this run's own checkpoints (resume loads those)
        source, self.init_report = None, None
        if config.run.init_from is not None and latest_valid(self.checkpoint_dir) is None:
            source = read_source(config.run.init_from, config.run.init_weights)
            self.init_report = transfer_weights(self.network, source, config, self.info)
        self.augment, self.cascade = augment_settings(config), cascade_settings(config)
        self.network.to(self.device, torch.float32)  # float32 weights whatever the default dtype; bf16 via autocast
        run = config.run
        self.execution = Execution(run.precision, run.channels_last, run.compile)
        if run.channels_last:  # before the EMA copies and DDP's buckets are made, so all share the layout
            self.network.to(memory_format=torch.channels_last)
        # several processes: DDP averages the gradients; every other random draw of training is made for the whole
        # global batch on every process and sliced (see step), so only dropout needs a per-process seed
        # whole copies, before sharding; with ema.posthoc also the tracked power-function EMAs (EDM2)
        posthoc = tuple(config.ema.posthoc_sigma_rels) if config.ema.posthoc else ()
        self.emas = EMASet(self.network, config.ema.half_lives, config.ema.rampup, posthoc)
        if posthoc:
            check_budget(config.ema.posthoc_budget_mb, self.posthoc_states())
        self.fsdp = self.dist.distributed and config.run.parallel == "fsdp"
        if self.fsdp:
            distributed.shard_fsdp(self.network)
        use_ddp = self.dist.distributed and not self.fsdp
        self.ddp = distributed.wrap_ddp(self.network, self.device) if use_ddp else None
        if self.dist.distributed:
            torch.manual_seed(_rank_seed(config.run.seed, self.dist.rank, 0))
        module = self.ddp if self.ddp is not None else self.network
        self._build_objective(ExecutedNetwork(module, self.execution, self.device))
        opt = config.optim
        # fused (one kernel over all tensors) except under FSDP, whose sharded DTensor parameters take the foreach path
        self.optimizer = make_optimizer(self._parameter_groups(), opt.optimizer, opt.lr,
                                        implementation="foreach" if self.fsdp else "fused")
        if source is not None and config.run.init_optimizer:
            self._load_source_optimizer(source)
        decay_images = opt.decay_images or config.run.total_images
        self.lr = LRSchedule(opt.lr, opt.warmup_images, opt.decay, total_images=decay_images,
                             ref_images=decay_images)
        self.generator = torch.Generator().manual_seed(config.run.seed + 1)
        self.captions = None
        if config.data.captions:  # encoded once: the caption set is finite
            self.captions = (caption_table(config.data.name) if config.data.name in CAPTIONED_DATASETS
                             else folder_caption_table(data.class_names))  # a folder: one per distinct caption
            if self.captions.num_classes != data.num_classes:
                raise ValueError(f"{config.data.name} has {data.num_classes} classes but "
                                 f"{self.captions.num_classes} caption lists")
        self.video = self._video_batches(config, data)
        self.evaluator = self._make_evaluator()
        self.run_dir = Path(run_dir)
        self.cur_nimg = 0
        self._batches = None
        self._data_position = 0
        # non-finite steps: skipped, counted (total and the current streak) and kept in the checkpoint
        self.nonfinite_total = 0
        self.nonfinite_streak = 0
        self.last_step_skipped = False
        self._last_batch = None
        # the CLI's SIGINT/SIGTERM handler sets stop_signal (the signal's name); at the end of the step it becomes
        # stop_requested, on every process at the same step: the loop then checkpoints and returns
        self.stop_signal: str | None = None
        self.stop_requested: str | None = None

    def _load_source_optimizer(self, source) -> None:
        """The optimizer state of the run this one starts from (``run.init_optimizer``): its moments and step
        counts, this run's learning rate and hyperparameters."""
        state = source_optimizer_state(self.network, source, self.init_report, self.optimizer.state_dict())
        if self.fsdp:  # every process holds the whole initial weights; the states are sharded on load
            distributed.load_full_state(self.network, self.optimizer, distributed.full_model_state(self.network),
                                        state)
        else:
            self.optimizer.load_state_dict(state)
        self.init_report.optimizer = "source"

    # -- what is trained (an autoencoder trainer overrides these) ------------------------------------
    def _data_info(self, data) -> dict:
        return data_info(data, self.config.data.conditional, self.config.data.captions)

    def _build_objective(self, network: nn.Module) -> None:
        """The denoiser around the (executed, possibly DDP-wrapped) network and the diffusion loss, sharing one
        schedule (a learned one trains through the loss and is what the denoiser samples with)."""
        check_guidance(self.config, bool(self.num_classes) or self.config.data.captions)  # a folder without classes
        schedule = build_schedule(self.config)
        if isinstance(schedule, LearnedVP):
            if self.fsdp:
                raise ConfigError("objective.schedule learned is not supported with run.parallel fsdp (use ddp)")
            schedule.to(self.device)
        self.denoiser = build_denoiser(self.config, network, schedule)
        self.loss = build_loss(self.config, schedule)

    @property
    def learned_schedule(self) -> LearnedVP | None:
        """The schedule when it is trained with the model (``objective.schedule: learned``), else None."""
        schedule = getattr(self, "loss", None)
        schedule = getattr(schedule, "schedule", None)
        return schedule if isinstance(schedule, LearnedVP) else None

    def _parameter_groups(self) -> list[dict]:
        """The optimizer's groups: the network, then a learned schedule's parameters at ``lr_scale`` times the
        learning rate."""
        groups = [{"params": list(self.network.parameters()), "lr_scale": 1.0}]
        if self.learned_schedule is not None and self.learned_schedule.parameters():
            groups.append({"params": self.learned_schedule.parameters(), "lr_scale": self.learned_schedule.lr_scale})
        return groups

    def _video_batches(self, config: Config, data) -> VideoBatches | None:
        """A video run's image groups and context frames (None for an image run)."""
        v = config.video
        if v.frames is None:
            return None
        pool = load_image_pool(config, data) if v.image_fraction > 0 else None
        texts = self.captions
        if texts is not None and pool is not None and pool.num_classes != texts.num_classes:
            raise ConfigError(f"video.image_fraction with data.captions: an image group takes the caption of the clip "
                              f"it replaces, so its images need the clips' classes ({texts.num_classes}), but "
                              f"{v.image_data or 'the clips frames'} has {pool.num_classes} (e.g. use "
                              "video.image_data: mnist beside moving-mnist, or video.image_fraction: 0)")
        return VideoBatches(config, pool, conditional=bool(self.num_classes) or texts is not None,
                            null_label=self.num_classes, frame_conditioning=v.context_frames > 0)

    def _make_evaluator(self):
        return TrainingEvaluator(self.config, self.data, autoencoder=self.autoencoder)

    def _objective_state(self) -> dict:
        """The objective's own resumable state (the time sampler's importance statistics, a learned schedule)."""
        state = {"time_sampler": self.loss.time_sampler.state_dict()}
        if self.learned_schedule is not None:
            state["schedule"] = self.learned_schedule.state_dict()
        return state

    def _load_objective_state(self, state: dict) -> None:
        self.loss.time_sampler.load_state_dict(state["time_sampler"])
        if self.learned_schedule is not None:
            if "schedule" not in state:
                raise ValueError("this checkpoint holds no learned schedule: resume it with the config it was "
                                 "trained with")
            self.learned_schedule.load_state_dict(state["schedule"])

    def _encode(self, config: Config, pixels: ImageArrays, log):
        """The frozen autoencoder and the training images as its latents (process 0 encodes and caches them, the
        others read the cache)."""
        latent = config.latent
        autoencoder = load_autoencoder(latent.autoencoder, latent.ema, self.device)
        shape = autoencoder.latent_shape(pixels.item_shape)
        if not self.dist.main:
            distributed.barrier()
        data = encode_dataset(autoencoder, pixels, flip=latent.flip, batch=latent.encode_batch, root=latent.cache_dir,
                              log=log if self.dist.main else None)
        if self.dist.main:
            distributed.barrier()
        if data.item_shape != shape:
            raise ValueError(f"the latent cache {data.path} holds {data.item_shape} latents, the autoencoder makes "
                             f"{shape}")
        return autoencoder, data

    @property
    def decode(self):
        """A latent run's decoder of sampled (normalised) latents, else None."""
        return None if self.autoencoder is None else self.autoencoder.decode_normalized

    # -- state --------------------------------------------------------------------------------------
    def training_state(self) -> dict:
        optimizer = (distributed.full_optimizer_state(self.network, self.optimizer) if self.fsdp
                     else self.optimizer.state_dict())
        state = {"optimizer": optimizer, "generator": self.generator.get_state(),
                 "torch_rng": torch.get_rng_state(), "data_position": self._data_position,
                 "data_size": len(self.data), **self._objective_state(),
                 "config": to_dict(self.config), "data_info": self.info,
                 "evaluation": self.evaluator.state_dict(),
                 "nonfinite": [self.nonfinite_total, self.nonfinite_streak]}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self) -> Path | None:
        """Process 0 writes the checkpoint (the others hold the same weights); all wait for it. None elsewhere."""
        path = None
        model_state, training_state = self._model_state(), self.training_state()  # collective under FSDP
        if self.dist.main:
            path = save_checkpoint(self.checkpoint_dir, self.cur_nimg, model_state, self.emas.state_dicts(),
                                   training_state)
            prune(self.checkpoint_dir, self.config.run.keep_checkpoints, self.config.run.milestone_every)
        distributed.barrier()
        return path

    def save_best(self) -> Path | None:
        """The current weights as ``<run>/best/ckpt-*`` (only the newest is kept): the best model by FID."""
        directory = self.run_dir / "best"
        path = None
        model_state, training_state = self._model_state(), self.training_state()
        if self.dist.main:
            path = save_checkpoint(directory, self.cur_nimg, model_state, self.emas.state_dicts(), training_state)
            prune(directory, 1, None)
        distributed.barrier()
        return path

    def posthoc_states(self) -> dict[float, dict]:
        """``{sigma_rel: state_dict}`` of the tracked power-function EMAs (empty without ``ema.posthoc``)."""
        return {ema.sigma_rel: ema.model.state_dict() for ema in self.emas.power}

    def _model_state(self) -> dict:
        return distributed.full_model_state(self.network) if self.fsdp else self.network.state_dict()

    def _check_same_inputs(self, path: Path, stored: dict) -> None:
        """A checkpoint resumes only on the inputs it was trained on: the same image (or latent) shape and, for a
        latent model, the same autoencoder (another one's latents would mean something else to the network)."""
        def describe(info: dict) -> str:
            latent = info.get("latent")
            shape = "x".join(map(str, info.get("image_shape", ())))
            return (f"{shape} latents of the autoencoder {latent['autoencoder']} (digest {latent['digest'][:12]})"
                    if latent else f"{shape} images")

        old, new = stored.get("latent"), self.info.get("latent")
        if stored.get("image_shape", self.info["image_shape"]) != self.info["image_shape"] or \
                (old or {}).get("digest") != (new or {}).get("digest"):
            raise ValueError(f"{path} was trained on {describe(stored)}, this config gives {describe(self.info)}: "
                             "resume with the inputs it was trained on or start a new run")

    def resume(self, path: str | Path | None = None) -> bool:
        """Load ``path`` or the newest valid checkpoint of this run; False when there is none."""
        path = Path(path) if path is not None else latest_valid(self.checkpoint_dir)
        if path is None:
            return False
        cur_nimg, model_state, ema_states, state = load_checkpoint(path)
        self._check_same_inputs(path, state.get("data_info", {}))
        if state.get("data_size", len(self.data)) != len(self.data):
            raise ValueError(f"{path} was trained on {state['data_size']} images, this dataset has {len(self.data)}: "
                             "resume with the same data or start a new run")
        try:
            if self.fsdp:
                distributed.load_full_state(self.network, self.optimizer, model_state, state["optimizer"])
            else:
                self.network.load_state_dict(model_state)
            self.emas.load_state_dicts(ema_states)
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"{path} holds weights of another network or EMA set than this config builds "
                             f"(resume it with the config it was trained with): {e}") from None
        if not self.fsdp:
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.dist.distributed:  # dropout's per-process stream, re-derived: the world size may have changed
            torch.manual_seed(_rank_seed(self.config.run.seed, self.dist.rank, cur_nimg))
        else:
            torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self._data_position = int(state["data_position"])
        self._load_objective_state(state)
        self.evaluator.load_state_dict(state.get("evaluation", {}))
        self.nonfinite_total, self.nonfinite_streak = (int(v) for v in state.get("nonfinite", (0, 0)))
        self.cur_nimg, self._batches = cur_nimg, None
        return True

    # -- one optimizer step -------------------------------------------------------------------------
    def _micro_batch(self, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The next global micro-batch: images and their named conditions (empty for an unconditional run)."""
        if self._batches is None:
            self._batches = BatchStream(self.data, self.config.run.seed, n, self._data_position,
                                        self.config.data.workers)
        x0, labels = next(self._batches)
        self._data_position = self._batches.position
        cond = {}
        if self.video is not None:  # image groups, context frames and the loss mask that leaves the context out
            x0, labels, cond, cond["loss_mask"] = self.video(x0, labels, self.generator)
            if cond["loss_mask"] is None:
                del cond["loss_mask"]
            cond = {name: value.to(self.device, non_blocking=True) for name, value in cond.items()}
        x0 = x0.to(self.device, non_blocking=True)
        if self.num_classes:
            labels = drop_conditions(labels, self.config.objective.p_uncond, self.num_classes, self.generator)
            cond["labels"] = labels.to(self.device, non_blocking=True)
        if self.captions is not None:  # a caption of each image's class; one dropout draw nulls the text
            cond.update(self.captions.condition(self.captions.pick(labels, self.generator), self.device))
            drop = torch.rand(labels.shape[0], generator=self.generator) < self.config.objective.p_uncond
            cond["text_null"] = drop.to(self.device)
        if self.augment is not None:  # EDM's non-leaking augmentation: the labels tell the network what was done
            x0, cond["augment"] = augment(x0, self.augment, self.generator)
        if self.cascade is not None:  # the super-resolution stage's low-resolution input, noise-augmented
            cond.update(training_condition(x0, self.cascade, self.generator))
        if self.config.run.dump_bad_batch:  # kept (no copy) so that a run stopped by NaNs can show its batch
            self._last_batch = (x0, cond)
        return x0, cond

    def step(self) -> torch.Tensor:
        """One optimizer step over ``batch_size`` images (in ``accumulation`` micro-batches); returns the
        mean loss as a 0-d tensor on the device.

        With several processes every process prepares the whole global micro-batch (images, condition
        dropout, augmentation, times, noise: one stream of draws from the shared generator) and trains on its
        contiguous share; DDP averages the gradients (``no_sync`` until the last micro-batch). The run is then
        the same for any number of processes up to float rounding, and resumes under another world size.

        A step whose loss or gradient norm is not finite changes nothing but the counters: no update, no
        EMA; its images still count as seen (``last_step_skipped`` is set). ``optim.nonfinite_limit`` such
        steps in a row raise :class:`NonFiniteError`. The check costs one device synchronisation per step."""
        opt = self.config.optim
        micro = opt.batch_size // opt.accumulation
        share = micro // self.dist.world_size
        part = slice(self.dist.rank * share, (self.dist.rank + 1) * share)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for i in range(opt.accumulation):
            x0, cond = self._micro_batch(micro)
            total += self._accumulate(x0, cond, part, i == opt.accumulation - 1) / opt.accumulation
        if self.dist.distributed:
            total = self._agree(total)
        elif self.stop_signal is not None:
            self.stop_requested = self.stop_signal
        max_norm = opt.grad_clip if opt.grad_clip is not None else float("inf")  # inf: measure, do not clip
        grad_norm = distributed.full_tensor(nn.utils.clip_grad_norm_(self.network.parameters(), max_norm))
        if self.learned_schedule is not None:  # clipped on its own: its variance gradient has another scale
            grad_norm = grad_norm + self._schedule_grad_norm(max_norm)
        self.cur_nimg += opt.batch_size
        self.last_step_skipped = not bool(torch.isfinite(total) & torch.isfinite(grad_norm))
        if self.last_step_skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.nonfinite_streak += 1
            if self.nonfinite_streak >= opt.nonfinite_limit:
                self._fail_nonfinite(float(total), float(grad_norm))
            return total
        self.nonfinite_streak = 0
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.cur_nimg) * group.get("lr_scale", 1.0)
        self.optimizer.step()
        self.emas.update(self.network, self.cur_nimg, opt.batch_size)
        self._after_update()
        return total

    def _accumulate(self, x0: torch.Tensor, cond: dict, part: slice, last: bool) -> torch.Tensor:
        """Forward and backward of one global micro-batch (this process's ``part`` of it); returns its mean loss,
        detached. ``last``: the step's last micro-batch (the gradients are synchronised then)."""
        opt = self.config.optim
        importance = self.loss.time_sampler.mode == "importance"
        # the diffusion loss: times, noise and the perturbation drawn for the whole global micro-batch
        draw, noise = self.loss.draw(tuple(x0.shape), generator=self.generator, dtype=x0.dtype,
                                     device=self.device)
        xi = self.loss.draw_perturbation(tuple(x0.shape), generator=self.generator, dtype=x0.dtype,
                                         device=self.device)
        if self.dist.distributed:
            x0, noise, cond = x0[part], noise[part], select(cond, part)
            xi = xi[part] if xi is not None else None
        mine = TimeDraw(draw.t[part], draw.weight[part], draw.u[part])
        cond = dict(cond)
        mask = cond.pop("loss_mask", None)  # where the loss counts (a video run's context frames do not)
        if self.fsdp:
            distributed.set_gradient_sync(self.network, last)
        with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
            loss = self.loss(self.denoiser.network_output, x0, noise=noise, time_draw=mine, cond=cond,
                             update_sampler=not self.dist.distributed, perturbation=xi, mask=mask)
            objective = loss.loss.mean()
            schedule = self.learned_schedule
            if schedule is not None and schedule.learn_endpoints:  # the bound's other terms train the endpoints
                objective = objective + endpoint_terms(schedule, x0, noise).mean()
            (objective / opt.accumulation).backward()
        if self.dist.distributed and importance:  # the sampler's statistics see every process's losses
            self.loss.time_sampler.update(draw.u, distributed.all_gather_cat(loss.unweighted.detach()))
        return loss.loss.detach().mean()

    def _schedule_grad_norm(self, max_norm: float) -> torch.Tensor:
        """A learned schedule's gradient norm after clipping it to ``max_norm`` (averaged over processes first:
        the schedule is not inside DDP)."""
        parameters = [p for p in self.learned_schedule.parameters() if p.grad is not None]
        if not parameters:
            return torch.zeros((), device=self.device)
        if self.dist.distributed:
            for p in parameters:
                p.grad = distributed.all_mean(p.grad)
        return nn.utils.clip_grad_norm_(parameters, max_norm).to(self.device)

    def _after_update(self) -> None:
        """Work after the optimizer step and the EMA update (an autoencoder's discriminator step)."""

    def log_extras(self) -> dict:
        """More values for the next log record (means since the last one); none for a diffusion model."""
        return {}

    def _agree(self, total: torch.Tensor) -> torch.Tensor:
        """The mean loss over processes, and a stop request (a signal seen by any process) shared by all, so that
        every process makes the same skip / stop decision."""
        stop = torch.tensor(1.0 if self.stop_signal is not None else 0.0, device=self.device, dtype=torch.float64)
        mean = distributed.all_mean(torch.stack([total.detach().double(), stop]))
        if float(mean[1]) > 0:  # torchrun passes a SIGTERM / SIGINT to every process; one is enough here
            self.stop_requested = self.stop_signal or "SIGTERM"
        return mean[0].to(total.dtype)

    def _fail_nonfinite(self, loss: float, grad_norm: float) -> None:
        step = self.cur_nimg // self.config.optim.batch_size
        dumped = ""
        if self._last_batch is not None:
            x0, cond = self._last_batch
            tensors = {"x0": x0, **{f"cond.{k}": v for k, v in cond.items()}}
            path = self.run_dir / f"nonfinite-{self.cur_nimg:012d}.safetensors"
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path))
            dumped = f"; its last batch is in {path}"
        raise NonFiniteError(
            f"{self.nonfinite_streak} consecutive non-finite steps (optim.nonfinite_limit), the last at step {step:,} "
            f"(image {self.cur_nimg:,}: loss {loss}, gradient norm {grad_norm}); no checkpoint was written after "
            f"the last good step{dumped}. Lower optim.lr, set optim.grad_clip, or check the data, then continue "
            "with --resume auto")

    # -- the loop -----------------------------------------------------------------------------------
    def run(self, until_images: int | None = None, hooks=None) -> None:
        """Train until ``until_images`` (at most the configured total) or until evaluation stops the run
        (``eval.patience``). ``hooks`` may define ``on_step(trainer, loss)``, ``on_log(trainer, record)``,
        ``on_evaluate(trainer, record)``, ``on_sample(trainer)``, ``on_posthoc_snapshot(trainer)``,
        ``on_checkpoint(trainer, path)`` and
        ``log(message)``.

        Order at an image count: log, evaluate, post-hoc EMA snapshot, sample grid, checkpoint. Evaluation comes
        before the checkpoint so that the checkpoint holds its outcome (best FID, early-stopping count)."""
        run, ev = self.config.run, self.config.eval
        self.evaluator.log = getattr(hooks, "log", None)
        until = min(until_images or run.total_images, run.total_images)
        if self.evaluator.should_stop:
            _call(hooks, "log", f"stopped early before: FID has not improved for {self.evaluator.since_best} "
                                f"evaluations (best {self.evaluator.best_fid:.4g} at {self.evaluator.best_nimg:,} "
                                "images); raise eval.patience to continue")
            return
        self.network.train()
        loss_sum, loss_count = torch.zeros((), device=self.device), 0
        while self.cur_nimg < until:
            before = self.cur_nimg
            loss = self.step()
            if self.last_step_skipped:
                _call(hooks, "log", f"non-finite loss or gradient at image {self.cur_nimg:,}: update skipped "
                                    f"({self.nonfinite_streak} in a row, {self.nonfinite_total} in all)")
            else:
                loss_sum += loss
                loss_count += 1
            _call(hooks, "on_step", self, loss)
            final = self.cur_nimg >= run.total_images
            if _crossed(before, self.cur_nimg, run.log_every) or final:
                record = {"cur_nimg": self.cur_nimg, "lr": self.optimizer.param_groups[0]["lr"],
                          "skipped_steps": self.nonfinite_total}
                if loss_count:  # no loss when every step of the interval was skipped
                    record["loss"] = float(loss_sum) / loss_count
                record.update(self.log_extras())
                loss_sum.zero_()
                loss_count = 0
                _call(hooks, "on_log", self, record)
            if ev.loss_every and (_crossed(before, self.cur_nimg, ev.loss_every) or final):
                started = time.perf_counter()
                record = self.evaluator.noise_levels(self)
                _call(hooks, "on_evaluate", self, {"cur_nimg": self.cur_nimg, **record,
                                                   "eval_s": round(time.perf_counter() - started, 3)})
            stop = False
            if ev.every and (_crossed(before, self.cur_nimg, ev.every) or final):
                started = time.perf_counter()
                record = self.evaluator.sample_metrics(self)
                if record["improved"] and ev.keep_best:
                    record["best_checkpoint"] = str(self.save_best())
                _call(hooks, "on_evaluate", self, {"cur_nimg": self.cur_nimg, **record,
                                                   "eval_s": round(time.perf_counter() - started, 3)})
                stop = self.evaluator.should_stop
            # the post-hoc EMA's snapshot comes before the checkpoint: a resume deletes the newer ones and redoes them
            if self.emas.power and (_crossed(before, self.cur_nimg, snapshot_interval(self.config)) or final or stop):
                _call(hooks, "on_posthoc_snapshot", self)
            sample_every = run.sample_every or run.checkpoint_every
            if _crossed(before, self.cur_nimg, sample_every) or final or stop:
                _call(hooks, "on_sample", self)
            preempted = self.stop_requested is not None
            if _crossed(before, self.cur_nimg, run.checkpoint_every) or final or stop or preempted:
                _call(hooks, "on_checkpoint", self, self.save())
            if preempted:
                _call(hooks, "log", f"{self.stop_requested}: stopped after the step at {self.cur_nimg:,} images "
                                    "and wrote a checkpoint; continue with --resume auto")
                break
            if stop:
                _call(hooks, "log", f"early stop at {self.cur_nimg:,} images: FID has not improved for "
                                    f"{self.evaluator.since_best} evaluations (best {self.evaluator.best_fid:.4g} "
                                    f"at {self.evaluator.best_nimg:,})")
                break


def _rank_seed(seed: int, rank: int, cur_nimg: int) -> int:
    """The seed of process ``rank``'s global torch RNG (dropout) when training from image ``cur_nimg``."""
    return (seed * 1_000_003 + (rank + 1) * 7_919 + cur_nimg) % (2**63)


def _call(hooks, name: str, *args) -> None:
    fn = getattr(hooks, name, None)
    if fn is not None:
        fn(*args)
