"""Generating images from a trained model: checkpoint loading, per-sample seeds, classifier-free guidance.

- :func:`load_model` (from :mod:`diffusekit.models`, re-exported here) rebuilds the network exactly as trained
  from a checkpoint (or a run directory's newest valid one) and returns a denoiser around the chosen EMA (or the
  raw weights).
- :func:`generate` draws ``n`` images. Sample i starts from noise seeded by ``(seed, i)``, so an image
  does not depend on which other images are drawn, nor on the batch size beyond float rounding (batched
  convolutions may sum in another order) for the deterministic samplers; stochastic ones also draw
  per-batch noise seeded by ``(seed, first index)``. The same call always gives the same output.
- Guidance (:mod:`diffusekit.guidance`): a float is classifier-free guidance with that weight (``w = 1``
  is the plain conditional model and costs one network call; otherwise the conditional and null halves go
  through the network as one batch: the null class and/or the learned null text of a text condition); a
  :class:`GuidanceSettings` adds rescale, weight schedules, a guidance interval, thresholding, or
  autoguidance by another checkpoint (:func:`load_guide`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .conditions import select, to_device
from .denoiser import Denoiser
from .errors import CheckpointError
from .guidance import GuidanceSettings, apply_guidance, null_condition
from .latent import load_autoencoder
from .models import Execution, LoadedModel, load_guide, resolve_checkpoint
from .models import load_model as load_network
from .sampling import sample, timesteps

__all__ = ["LoadedModel", "load_model", "load_guide", "generate", "class_major_labels", "resolve_checkpoint",
           "image_noise"]


def load_model(path, ema: str | None = None, device: str | torch.device = "cpu",
               execution: Execution | None = None) -> LoadedModel:
    """:func:`diffusekit.models.load_model`, and for a latent model its autoencoder as ``decode``: the one it was
    trained with, checked by digest (a changed autoencoder would decode the latents into other images)."""
    model = load_network(path, ema, device, execution)
    if model.latent is not None:
        stored = model.latent
        weights = None if stored["weights"] == "diffusers" else stored["weights"]
        autoencoder = load_autoencoder(stored["autoencoder"], weights, device)
        if autoencoder.digest != stored["digest"]:
            raise CheckpointError(f"{model.checkpoint} was trained on the latents of {stored['autoencoder']} "
                                  f"({stored['weights']}), whose weights have changed since (digest "
                                  f"{autoencoder.digest[:12]} against {stored['digest'][:12]}): a latent model only "
                                  "decodes with the autoencoder it was trained with")
        model.decode = autoencoder.decode_normalized
    return model


def class_major_labels(n: int, num_classes: int) -> Tensor:
    """Labels 0,0,..,1,1,.. covering the classes as evenly as possible (a grid row per class)."""
    return torch.sort(torch.arange(n) % num_classes).values


def image_noise(shape: tuple[int, ...], seed: int, first: int, count: int) -> Tensor:
    """The starting noise of images first..first+count-1 [count, *shape] (float32): image i's from seed (seed, i)."""
    out = torch.empty((count, *shape), dtype=torch.float32)
    for j in range(count):
        g = torch.Generator().manual_seed(seed * 1_000_003 + first + j)
        out[j] = torch.randn(shape, generator=g, dtype=torch.float32)
    return out


@torch.no_grad()
def generate(denoiser: Denoiser, n: int, image_shape: tuple[int, int, int], *, labels: Tensor | None = None,
             num_classes: int = 0, sampler: str = "multistep", steps: int = 20, spacing: str = "uniform",
             guidance: float | GuidanceSettings = 1.0, options: dict | None = None, seed: int = 0,
             batch_size: int = 250, device: str | torch.device = "cpu", progress=None, first: int = 0,
             guide: Denoiser | None = None, condition: dict | None = None, decode=None,
             ts: Tensor | None = None) -> Tensor:
    """``n`` images, float32 [n, C, H, W] in (about) [-1, 1], on the CPU. ``labels``: [n] class indices for a
    conditional model (None: unconditional, or the null class for a conditional one). ``first``: the index
    of the first image, so a shard (images first..first+n-1) equals that slice of one big call. ``guide``: the
    autoguidance model, if already loaded (else it is loaded from ``guidance.autoguide``). ``condition``: more
    per-image conditions, each ``[n, ...]`` (e.g. a cascade stage's ``image`` and ``aug_level``, from
    :func:`diffusekit.cascade.sampling_condition`; or a text-conditioned model's ``text``, ``text_mask`` and
    ``text_pooled``, which classifier-free guidance contrasts with the null text). ``decode``: a latent model's
    decoder (``LoadedModel.decode``), applied to each batch: the images are then the decoded ones, while
    ``image_shape`` stays the latent shape the sampler draws. ``ts``: an explicit time grid (e.g. a tuned one,
    :mod:`diffusekit.sampling.grid_files`), used instead of ``steps`` and ``spacing``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    for key, value in (condition or {}).items():
        if value.shape[0] != n:
            raise ValueError(f"condition {key!r} holds {value.shape[0]} items for {n} images")
    if labels is not None:
        if not num_classes:
            raise ValueError("class labels were given but the model is unconditional")
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must be {n} class indices in 0..{num_classes - 1}")
    settings = guidance if isinstance(guidance, GuidanceSettings) else GuidanceSettings(scale=float(guidance))
    autoguided = settings.autoguide is not None or guide is not None
    text = condition is not None and condition.get("text") is not None
    if settings.active and not autoguided and labels is None and not text:
        raise ValueError("classifier-free guidance needs class labels (a conditional model and --class or "
                         "class-major labels) or a text condition; autoguidance (--autoguide) also works "
                         "unconditionally")
    if autoguided and guide is None:
        guide = load_guide(settings, image_shape, num_classes, device)
    schedule = denoiser.schedule
    ts = timesteps(schedule, steps, spacing) if ts is None else ts
    denoise = apply_guidance(denoiser, settings, ts=ts, schedule=schedule,
                             null=null_condition(num_classes) if num_classes or text else None, guide=guide)
    per_image = {**({} if labels is None else {"labels": labels}), **(condition or {})}  # the sampler's cond
    out = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        noise = image_noise(image_shape, seed, first + start, count).to(device)
        cond = to_device(select(per_image, slice(start, start + count)), device)
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + first + start + 7_919)
        x = sample(denoise, noise, ts, schedule, sampler, generator=generator, cond=cond, **(options or {}))
        if decode is not None:
            x = decode(x)
        out.append(x.float().cpu())
        if progress is not None:
            progress(count)
    return torch.cat(out)
