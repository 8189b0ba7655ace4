"""Checks a config beyond its types: names against the library's registries (by building the objects,
so the choices listed are always the real ones) and the relations between fields."""

from __future__ import annotations

import re

from .. import parameterizations, schedules, time_sampling, weighting
from ..cascade import CascadeSettings
from ..data.augment import AugmentSettings
from ..data.builtin import DATASETS
from ..data.captions import CAPTIONED_DATASETS
from ..data.clip_datasets import CLIP_DATASETS
from ..data.folder_transform import FolderTransform
from ..data.intensity import check_intensity
from ..guidance import GuidanceSettings
from ..networks import autoencoder, dit, unet, video
from ..posthoc_ema import check_sigma_rel, sigma_rel_label
from ..sampling import SPACINGS, sampler_name
from .schema import Config
from .typed import ConfigError

__all__ = ["validate", "check_guidance"]


def check_guidance(config: Config, conditional: bool) -> None:
    """Classifier-free guidance (``sample.guidance`` / ``eval.guidance`` != 1) needs a condition to contrast with
    the null one; autoguidance (``sample.autoguide``) works without. ``conditional``: the model has labels or
    text (known for certain only once the data is loaded: an image folder without class folders has none)."""
    if conditional or config.sample.autoguide is not None:
        return
    for key, weight in (("sample.guidance", config.sample.guidance), ("eval.guidance", config.eval.guidance)):
        if weight is not None and weight != 1:
            raise ConfigError(f"{key} is {weight}, but classifier-free guidance needs a conditional model and this "
                              "one has no class labels or text (data.conditional, class folders, data.captions): set "
                              f"{key}: 1, or give sample.autoguide (autoguidance also works without labels)")


def _check(key: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key}: {e}") from None


def _positive(key: str, value, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(config: Config) -> Config:
    """Raise :class:`ConfigError` naming the first bad field; returns ``config`` unchanged."""
    o = config.objective
    _check("objective.schedule", schedules.get, o.schedule, **o.schedule_options)
    _check("objective.parameterization", parameterizations.get, o.parameterization, **o.parameterization_options)
    _check("objective.time_distribution", time_sampling.get, o.time_distribution, o.time_mode, **o.time_options)
    _check("objective.weighting", weighting.get, o.weighting, **o.weighting_options)
    if not 0.0 <= o.p_uncond < 1.0:
        raise ConfigError(f"objective.p_uncond must be in [0, 1), got {o.p_uncond}")
    if not 0.0 <= o.input_perturbation < 1.0:
        raise ConfigError(f"objective.input_perturbation must be in [0, 1), got {o.input_perturbation}")
    _positive("objective.sigma_data", o.sigma_data)
    if o.schedule == "learned":
        _validate_learned_schedule(config)

    presets = {"unet": unet.PRESETS, "dit": dit.PRESETS, "autoencoder": autoencoder.PRESETS,
               "video_unet": video.PRESETS}[config.network.kind]
    if config.network.preset not in presets:
        raise ConfigError(f"network.preset: unknown {config.network.kind} preset {config.network.preset!r}; "
                          f"choose one of {', '.join(presets)}")

    opt = config.optim
    _positive("optim.batch_size", opt.batch_size)
    _positive("optim.accumulation", opt.accumulation)
    if opt.batch_size % opt.accumulation:
        raise ConfigError(f"optim.batch_size {opt.batch_size} must be a multiple of optim.accumulation "
                          f"{opt.accumulation}")
    _positive("optim.lr", opt.lr)
    _positive("optim.warmup_images", opt.warmup_images, allow_zero=True)
    _positive("optim.decay_images", opt.decay_images)
    _positive("optim.grad_clip", opt.grad_clip)
    _positive("optim.nonfinite_limit", opt.nonfinite_limit)

    if not config.ema.half_lives:
        raise ConfigError("ema.half_lives: at least one EMA is needed (name: half-life in images)")
    for name, half_life in config.ema.half_lives.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ConfigError(f"ema.half_lives: EMA name {name!r} may use only letters, digits, '_' and '-'")
        if not isinstance(half_life, (int, float)) or isinstance(half_life, bool) or half_life <= 0:
            raise ConfigError(f"ema.half_lives.{name}: expected a positive number of images, got {half_life!r}")
    _positive("ema.rampup", config.ema.rampup)
    _validate_posthoc(config)

    r = config.run
    for key in ("total_images", "checkpoint_every", "keep_checkpoints", "log_every", "milestone_every",
                "sample_every"):
        _positive(f"run.{key}", getattr(r, key))
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", r.device):
        raise ConfigError(f"run.device: {r.device!r} is not a device; use cpu, cuda or cuda:N")
    if r.init_from is None and (r.init_weights is not None or r.init_optimizer):
        raise ConfigError("run.init_weights and run.init_optimizer choose what run.init_from gives: set run.init_from "
                          "(--init-from) too")
    if r.init_from is not None and not str(r.init_from).strip():
        raise ConfigError("run.init_from is empty: name a run directory or checkpoint (or null)")

    e = config.eval
    for key in ("every", "num_samples", "extractor_resolution", "reference_count", "steps", "patience", "loss_every",
                "loss_bins", "loss_per_bin"):
        _positive(f"eval.{key}", getattr(e, key))
    metrics = [m.strip() for m in e.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in ("fid", "kid", "precision_recall")]
    if bad or not metrics:
        raise ConfigError(f"eval.metrics: unknown {', '.join(bad) or '(none)'}; choose from fid, kid, precision_recall")
    if e.patience is not None and "fid" not in metrics:
        raise ConfigError("eval.patience stops on FID: add fid to eval.metrics")
    if e.extractor_resolution is not None and e.extractor_resolution < 75:
        raise ConfigError(f"eval.extractor_resolution must be >= 75 (Inception-v3), got {e.extractor_resolution}")
    if e.num_samples < 2 or (e.reference_count is not None and e.reference_count < 2):
        raise ConfigError("eval.num_samples and eval.reference_count must be >= 2 (a covariance needs 2 samples)")
    if e.validation not in ("test", "train", "none"):
        raise ConfigError(f"eval.validation: choose test, train or none, got {e.validation!r}")

    s = config.sample
    _check("sample.sampler", sampler_name, s.sampler, stacklevel=4)  # a former name is accepted, with a warning
    if s.spacing not in SPACINGS:
        raise ConfigError(f"sample.spacing: unknown spacing {s.spacing!r}; choose one of {', '.join(SPACINGS)}")
    _positive("sample.steps", s.steps)
    _positive("sample.grid_columns", s.grid_columns)
    _check("sample", GuidanceSettings.from_sample, s)
    if s.ema is not None and s.ema not in config.ema.half_lives:
        raise ConfigError(f"sample.ema: no EMA named {s.ema!r}; this config has {', '.join(config.ema.half_lives)}")

    c = config.cascade
    if c.low_resolution is not None:
        _check("cascade", CascadeSettings, c.low_resolution, c.noise_aug, c.aug_max, c.sample_snr)
        if config.eval.every is not None or config.eval.loss_every is not None:
            raise ConfigError("eval.every / eval.loss_every: in-training evaluation of a cascade stage is not "
                              "supported (it needs low-resolution inputs); set them to null and evaluate the "
                              "cascade with benchmarks/cascade_mnist.py")
    d = config.data
    if d.augment:
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in d.augment_options.items()}
        _check("data.augment", AugmentSettings, p=d.augment, **options)
    if d.captions:
        if d.name in DATASETS and d.name not in CAPTIONED_DATASETS:
            raise ConfigError(f"data.captions: dataset {d.name!r} has no captions; captions exist for "
                              f"{', '.join(CAPTIONED_DATASETS)} and image folders (metadata.jsonl, .txt files)")
        if not d.conditional:
            raise ConfigError("data.captions picks each image's caption by its class: it needs data.conditional: true")
    if config.network.kind == "autoencoder":
        _validate_autoencoder(config)
    else:
        check_guidance(config, d.conditional or d.captions)
    _validate_latent(config)
    _validate_video(config)
    if d.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels must be 1, 3 or null, got {d.channels}")
    _positive("data.resolution", d.resolution)
    _positive("data.limit", d.limit)
    _positive("data.workers", d.workers, allow_zero=True)
    _positive("data.min_size", d.min_size)
    if d.intensity is not None:
        _check("data.intensity", check_intensity, d.intensity)
    _validate_folder(config)
    return config


def _validate_learned_schedule(config: Config) -> None:
    """VDM's learned schedule trains its shape on the variance of the bound's estimator, which is free only where
    the loss is the bound (docs/objectives.md, "Learned noise schedule"): anything else would change the objective
    as the schedule moves."""
    o = config.objective
    if o.weighting != "elbo":
        raise ConfigError(f"objective.weighting: the learned schedule trains on the variational bound; use elbo, not "
                          f"{o.weighting} (another weighting is not invariant to the schedule's shape)")
    if o.time_distribution != "uniform" or o.time_options:
        raise ConfigError("objective.time_distribution: the learned schedule needs uniform t on [0, 1] with no "
                          "options (the bound is the integral over uniform t; the schedule itself moves the noise "
                          "levels)")
    if o.time_mode == "importance":
        raise ConfigError("objective.time_mode: importance sampling does not go with the learned schedule (its "
                          "statistics would go stale as the schedule moves); use low_discrepancy or stratified")
    if o.noise_conditioning != "logsnr":
        raise ConfigError(f"objective.noise_conditioning: the learned schedule needs logsnr, not "
                          f"{o.noise_conditioning} (a network told t would see its noise levels move)")
    if o.schedule_options.get("learn_endpoints", True) and config.latent.autoencoder is not None:
        raise ConfigError("objective.schedule_options.learn_endpoints: the endpoints train on a decoder of 8-bit "
                          "pixels; a latent run keeps them fixed (learn_endpoints: false)")


def _validate_posthoc(config: Config) -> None:
    """The post-hoc EMA's tracked lengths, its interval and budget; names that would collide with its own."""
    m = config.ema
    reserved = [name for name in m.half_lives if name.startswith(("power_", "phema_"))]
    if reserved:
        raise ConfigError(f"ema.half_lives: EMA name {reserved[0]!r} is reserved (power_*: the post-hoc EMA's tracked "
                          "averages, phema_*: its reconstructions); choose another name")
    if not m.posthoc:
        return
    if not m.posthoc_sigma_rels:
        raise ConfigError("ema.posthoc_sigma_rels: the post-hoc EMA needs at least one tracked length (EDM2 tracks "
                          "two, e.g. [0.05, 0.10])")
    for i, sigma_rel in enumerate(m.posthoc_sigma_rels):
        try:
            check_sigma_rel(sigma_rel, f"ema.posthoc_sigma_rels[{i}]")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    labels = [sigma_rel_label(s) for s in m.posthoc_sigma_rels]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"ema.posthoc_sigma_rels: {m.posthoc_sigma_rels} repeats a length")
    _positive("ema.posthoc_every", m.posthoc_every)
    _positive("ema.posthoc_budget_mb", m.posthoc_budget_mb)


def _validate_folder(config: Config) -> None:
    d = config.data
    _check("data", FolderTransform, d.resolution or 1, d.channels or 3, d.fit, d.filter, tuple(d.background))
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1) (a share of the folder's files), got {d.val_fraction}")
    if d.val_fraction and d.val_dir is not None:
        raise ConfigError("data.val_fraction and data.val_dir both name a held-out split: give one")
    if d.storage != "memory" and d.intensity is not None:
        raise ConfigError(f"data.intensity rewrites every image in memory; it needs data.storage: memory, not "
                          f"{d.storage}")
    if d.xflip and config.latent.autoencoder is not None:
        raise ConfigError("data.xflip: a latent run flips through its cache: use latent.flip instead")
    if d.xflip and config.video.frames is not None:
        raise ConfigError("data.xflip doubles an image dataset; video runs read clips")


def _validate_autoencoder(config: Config) -> None:
    a = config.autoencoder
    for key in ("kl_weight", "perceptual_weight", "gan_weight", "gan_start_images"):
        _positive(f"autoencoder.{key}", getattr(a, key), allow_zero=True)
    for key in ("disc_channels", "disc_layers", "disc_lr", "stats_images"):
        _positive(f"autoencoder.{key}", getattr(a, key))
    if config.latent.autoencoder is not None:
        raise ConfigError("latent.autoencoder: an autoencoder run (network.kind autoencoder) trains on pixels; "
                          "set latent.autoencoder in the diffusion model's config instead")
    if config.cascade.low_resolution is not None or config.data.captions or config.data.augment:
        raise ConfigError("network.kind autoencoder: cascade, data.captions and data.augment are for diffusion "
                          "models; an autoencoder trains on the plain images")


def _validate_latent(config: Config) -> None:
    latent = config.latent
    _positive("latent.encode_batch", latent.encode_batch)
    if latent.autoencoder is None:
        return
    if config.cascade.low_resolution is not None:
        raise ConfigError("latent.autoencoder: a cascade stage works on pixels; latent cascades are not supported")
    if config.data.augment:
        raise ConfigError("latent.autoencoder: data.augment transforms pixels, but a latent run trains on cached "
                          "latents (only latent.flip applies)")
    if config.data.intensity is not None:
        raise ConfigError("latent.autoencoder: data.intensity draws per-image pixel intensities; a latent run "
                          "trains on cached latents")


def _validate_video(config: Config) -> None:
    v, kind = config.video, config.network.kind
    if v.frames is None:
        if kind == "video_unet":
            raise ConfigError("network.kind video_unet draws clips: set video.frames (the clip length, e.g. 8)")
        changed = [key for key in ("image_fraction", "context_frames") if getattr(v, key)]
        if changed:
            raise ConfigError(f"video.{changed[0]} is for video runs: set video.frames and network.kind video_unet")
        return
    if kind != "video_unet":
        raise ConfigError(f"video.frames is set ({v.frames}) but network.kind is {kind}, an image network: use "
                          "network.kind video_unet (diffusekit.networks.video)")
    _positive("video.frames", v.frames)
    if not 0.0 <= v.image_fraction < 1.0:
        raise ConfigError(f"video.image_fraction must be in [0, 1) (a share of each batch), got {v.image_fraction}")
    if not 0 <= v.context_frames < v.frames:
        raise ConfigError(f"video.context_frames must be in 0..{v.frames - 1} (at least one frame is generated), "
                          f"got {v.context_frames}")
    if not 0.0 <= v.p_context <= 1.0:
        raise ConfigError(f"video.p_context must be in [0, 1], got {v.p_context}")
    others = {"latent.autoencoder": config.latent.autoencoder is not None,
              "cascade.low_resolution": config.cascade.low_resolution is not None,
              "data.augment": bool(config.data.augment),
              "data.intensity": config.data.intensity is not None, "eval.every": config.eval.every is not None}
    unsupported = [key for key, used in others.items() if used]
    if unsupported:
        raise ConfigError(f"{unsupported[0]} is not supported for video runs (video.frames is set); sampled clips "
                          "are scored by diffusekit.metrics.video (docs/video.md)")
    if config.data.captions:
        _validate_video_captions(config)


def _validate_video_captions(config: Config) -> None:
    """Text conditioning of clips: captions exist for one-digit moving MNIST and for video folders."""
    name, options = config.data.name, config.video.options
    if name in CLIP_DATASETS and name not in CAPTIONED_DATASETS:
        raise ConfigError(f"data.captions: the clip dataset {name!r} has no captions; captions exist for "
                          f"{', '.join(n for n in CLIP_DATASETS if n in CAPTIONED_DATASETS)} and video folders "
                          "(metadata.jsonl, .txt files)")
    if name == "moving-mnist" and options.get("digits", 2) != 1:
        raise ConfigError("data.captions on moving-mnist names the clip's digit: set video.options.digits: 1 "
                          f"(got {options.get('digits', 2)!r}; clips of several digits have no label)")
