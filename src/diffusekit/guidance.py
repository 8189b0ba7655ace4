"""Guidance: wrappers that turn one ``denoise(x_t, t, cond) -> x0_hat`` into another.

``cond`` is the mapping of named conditions (:mod:`diffusekit.conditions`); every wrapper passes it on
unchanged, and classifier-free guidance makes its null branch by replacing entries of it
(:func:`null_condition`).

Samplers never know about guidance and networks never see it (docs/design.md): every method here acts on
``x0_hat``. Because every parameterization is affine in ``x_t`` with the same coefficients for both
branches (``x0_hat = c_skip x_t + c_out F``), guiding ``x0_hat`` equals guiding eps, v, the flow velocity
or the score with the same weight, so one wrapper serves every model and every sampler.

- :func:`classifier_free`: ``(1 - w) D(x | null) + w D(x | c)`` (Ho & Salimans 2022). The
  conditional and null halves go through the network as one batch.
- :func:`autoguidance`: ``(1 - w) D_guide(x | c) + w D(x | c)`` where the guide is a weaker model of the
  same task, e.g. a smaller or less-trained one (Karras et al. 2024, "Guiding a diffusion model with a
  bad version of itself", eq. 2).
- ``rescale`` (phi): Lin et al. 2023, sec. 3.4: the guided prediction is rescaled to the per-sample
  standard deviation of the conditional one, then mixed ``phi * rescaled + (1 - phi) * guided``. Applied
  to x0_hat here (diffusers applies it to eps or v); it undoes the over-exposure large w causes.
- Guidance scales as functions of the step: :func:`constant`, :func:`increasing` (Muse, Chang et al.
  2023: w grows linearly over the steps, so early steps keep their diversity) and :func:`oscillating`
  (Imagen Video, Ho et al. 2022: a large w for the first ``warmup`` steps, then alternating high / low).
- :func:`limited_interval`: guidance only where ve_sigma lies in ``(lo, hi]`` (Kynkaanniemi et al. 2024);
  outside it the model runs once, unguided, which also saves network calls.
- :func:`static_threshold` (clip x0_hat to [-1, 1]) and :func:`dynamic_threshold` (Imagen, Saharia et al.
  2022, sec. 2.3: s = the p-th percentile of |x0_hat| per sample, at least 1; clip to [-s, s], divide by s).
- :func:`epsilon_scaling`: the noise prediction divided by lambda at sampling, x0_hat moved to match
  (Ning et al. 2024, "Elucidating the exposure bias in diffusion models", eq. 15: eps_theta / lambda_t, here
  with a constant lambda), their remedy for exposure bias (sampling-time inputs that differ from the
  training ones); lambda is fitted per model (docs/guidance.md).
- :func:`drop_conditions`: the training half of classifier-free guidance, per-example condition dropout
  to the learned null condition with probability p_uncond.

A step index is recovered from the time as the nearest point of the sampling grid ``ts``; a 2nd-order
sampler's extra evaluation at ``ts[i + 1]`` therefore uses step i + 1's weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor

from .conditions import Conditions, as_conditions, concat

__all__ = ["GuidanceSettings", "GUIDANCE_SCHEDULES", "THRESHOLDS", "classifier_free", "autoguidance", "constant",
           "increasing", "oscillating", "limited_interval", "static_threshold", "dynamic_threshold",
           "epsilon_scaling",
           "apply_guidance", "drop_conditions", "null_condition"]

DenoiseFn = Callable[..., Tensor]  # denoise(x_t, t, cond) -> x0_hat
GuidanceScale = Callable[[Tensor], Tensor]  # t [batch] -> w [batch]
GUIDANCE_SCHEDULES = ("constant", "increasing", "oscillating")
THRESHOLDS = ("none", "static", "dynamic")


# -- guidance scales ---------------------------------------------------------------------------------
def constant(w: float) -> GuidanceScale:
    return lambda t: torch.full_like(t, float(w))


def _step_index(ts: Tensor) -> Callable[[Tensor], Tensor]:
    grid = ts[:-1].to(torch.float64)  # the last point (t = 0) is never evaluated

    def index(t: Tensor) -> Tensor:
        return (t.to(torch.float64).reshape(-1, 1) - grid.to(t.device)).abs().argmin(dim=1)
    return index


def increasing(w: float, ts: Tensor, start: float = 1.0) -> GuidanceScale:
    """Muse: w_i = start + (w - start) i / (N - 1) at step i of N, so the first step is unguided (start = 1)."""
    index, steps = _step_index(ts), len(ts) - 1
    span = max(steps - 1, 1)

    def scale(t: Tensor) -> Tensor:
        return (start + (w - start) * index(t).to(t.dtype) / span).to(t.device)
    return scale


def oscillating(high: float, low: float, warmup: int, ts: Tensor) -> GuidanceScale:
    """Imagen Video: ``high`` for the first ``warmup`` steps, then high, low, high, ... (Ho et al. 2022)."""
    if warmup < 0:
        raise ValueError(f"oscillating guidance needs warmup >= 0 steps, got {warmup}")
    index = _step_index(ts)

    def scale(t: Tensor) -> Tensor:
        i = index(t).to(t.device)
        after = (i - warmup).clamp(min=0)
        use_high = (i < warmup) | (after % 2 == 0)
        return torch.where(use_high, torch.full_like(t, float(high)), torch.full_like(t, float(low)))
    return scale


def limited_interval(scale: GuidanceScale, schedule, lo: float, hi: float) -> GuidanceScale:
    """``scale`` where lo < ve_sigma(t) <= hi, else 1 (no guidance; Kynkaanniemi et al. 2024)."""
    if not 0.0 <= lo < hi:
        raise ValueError(f"the guidance interval needs 0 <= lo < hi in ve_sigma, got ({lo}, {hi}]")

    def limited(t: Tensor) -> Tensor:
        ve_sigma = schedule(t.to(torch.float64)).ve_sigma.to(t.device)
        inside = (ve_sigma > lo) & (ve_sigma <= hi)
        return torch.where(inside, scale(t), torch.ones_like(t))
    return limited


# -- guided denoisers ---------------------------------------------------------------------------------
def _per_sample(w: Tensor, like: Tensor) -> Tensor:
    return w.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _rescaled(guided: Tensor, conditional: Tensor, phi: float) -> Tensor:
    dims = tuple(range(1, guided.ndim))
    factor = conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp(min=1e-12)
    return phi * guided * factor + (1 - phi) * guided


def _as_scale(guidance: float | GuidanceScale) -> GuidanceScale:
    return guidance if callable(guidance) else constant(guidance)


def _guided(single: DenoiseFn, pair, guidance, rescale: float) -> DenoiseFn:
    """``pair(x, t, cond) -> (D, D_guide)``; ``single`` runs when every weight is 1 (one network call)."""
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"the guidance rescale phi must be in [0, 1], got {rescale}")
    scale = _as_scale(guidance)

    def denoise(x: Tensor, t: Tensor, cond: Conditions | None = None) -> Tensor:
        w = scale(t)
        if bool((w == 1).all()):
            return single(x, t, cond)
        main, guide = pair(x, t, cond)
        out = guide + _per_sample(w, main) * (main - guide)
        return _rescaled(out, main, rescale) if rescale else out
    return denoise


NullFn = Callable[[Conditions], Conditions]  # a condition -> its classifier-free null


def _null_text(text: Tensor, value: bool) -> Tensor:
    return torch.full((text.shape[0],), value, dtype=torch.bool, device=text.device)


def null_condition(num_classes: int) -> NullFn:
    """The classifier-free-guidance null of a condition, made by replacing entries: ``labels`` (when present)
    become the null class ``num_classes``; when ``text`` is present, ``text_null`` is set for every row (the
    network's learned null text). Other entries (image, augmentation level) stay."""

    def null(cond: Conditions) -> Conditions:
        out = dict(cond)
        if "labels" in cond:
            out["labels"] = torch.full_like(cond["labels"], num_classes)
        if "text" in cond:
            out["text_null"] = _null_text(cond["text"], True)
        return out
    return null


def _explicit_text_null(cond: Conditions) -> Conditions:
    """``cond`` with the network's default ``text_null`` (False: each row's own text) written out when it has
    text, so that it holds the same names as its null and the two concatenate."""
    if "text" not in cond or "text_null" in cond:
        return cond
    return {**cond, "text_null": _null_text(cond["text"], False)}


def classifier_free(denoise: DenoiseFn, guidance: float | GuidanceScale, null: NullFn, *,
                    rescale: float = 0.0) -> DenoiseFn:
    """``(1 - w) D(x | null(c)) + w D(x | c)``; with no condition (an empty mapping) the model runs unguided."""

    def pair(x, t, cond):
        # both halves hold the same names, so they go through the network as one batch
        conditional = _explicit_text_null(cond)
        both = denoise(torch.cat([x, x]), torch.cat([t, t]), concat(conditional, null(conditional)))
        return both.chunk(2)

    guided = _guided(lambda x, t, cond: denoise(x, t, cond), pair, guidance, rescale)

    def wrapped(x: Tensor, t: Tensor, cond: Conditions | None = None) -> Tensor:
        cond = as_conditions(cond)
        return guided(x, t, cond) if cond else denoise(x, t, cond)
    return wrapped


def autoguidance(denoise: DenoiseFn, guide: DenoiseFn, guidance: float | GuidanceScale, *,
                 rescale: float = 0.0) -> DenoiseFn:
    """``(1 - w) D_guide(x | c) + w D(x | c)`` (EDM2 autoguidance); both models see the same condition."""
    return _guided(lambda x, t, cond: denoise(x, t, cond),
                   lambda x, t, cond: (denoise(x, t, cond), guide(x, t, cond)), guidance, rescale)


def static_threshold(denoise: DenoiseFn) -> DenoiseFn:
    """x0_hat clipped to the data range [-1, 1] (Imagen's static thresholding)."""
    return lambda x, t, cond=None: denoise(x, t, cond).clamp(-1.0, 1.0)


def dynamic_threshold(denoise: DenoiseFn, percentile: float = 0.995) -> DenoiseFn:
    """Imagen (Saharia et al. 2022, sec. 2.3): s = max(1, quantile_p |x0_hat|) per sample; clip to [-s, s] / s."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"the dynamic-thresholding percentile must be in (0, 1], got {percentile}")

    def denoise_thresholded(x: Tensor, t: Tensor, cond: Conditions | None = None) -> Tensor:
        x0_hat = denoise(x, t, cond)
        flat = x0_hat.reshape(x0_hat.shape[0], -1).abs().float()
        s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x0_hat.dtype)
        s = s.reshape(-1, *([1] * (x0_hat.ndim - 1)))
        return torch.maximum(torch.minimum(x0_hat, s), -s) / s
    return denoise_thresholded


_PURE_NOISE_ALPHA = 1e-4


def epsilon_scaling(denoise: DenoiseFn, lam: float, schedule) -> DenoiseFn:
    """x0_hat with the implied noise eps_hat = (x_t - alpha x0_hat) / sigma divided by ``lam`` (Ning et al.
    2024), x_t held fixed: x0' = (x_t - sigma eps_hat / lam) / alpha = x0_hat / lam + (1 - 1 / lam) x_t / alpha.
    Where alpha = 0 (pure noise) x0_hat does not depend on eps and is returned unchanged; so is it below
    alpha = 1e-4 (ve_sigma > 1e4), zero up to rounding (the cosine schedule's alpha(1) is 6e-17), where
    x_t / alpha would be noise amplified without bound."""
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"epsilon scaling needs lambda > 0, got {lam}")
    if lam == 1.0:
        return denoise

    def denoise_scaled(x: Tensor, t: Tensor, cond: Conditions | None = None) -> Tensor:
        x0_hat = denoise(x, t, cond)
        alpha = schedule(t.to(torch.float64)).alpha.to(x.device)
        live = alpha > _PURE_NOISE_ALPHA
        a = _per_sample(torch.where(live, alpha, torch.ones_like(alpha)), x0_hat)
        scaled = x0_hat / lam + (1 - 1 / lam) * x.to(x0_hat.dtype) / a
        return torch.where(live.reshape(-1, *([1] * (x0_hat.ndim - 1))), scaled, x0_hat)
    return denoise_scaled


# -- settings: everything `sample`, `eval` and the config's sample section can ask for ----------------------
# GuidanceSettings field -> key of the config's sample section
SAMPLE_KEYS = {"scale": "guidance", "rescale": "guidance_rescale", "weight_schedule": "guidance_schedule",
               "low": "guidance_low", "warmup": "guidance_warmup", "interval": "guidance_interval",
               "threshold": "threshold", "percentile": "threshold_percentile", "autoguide": "autoguide",
               "autoguide_ema": "autoguide_ema", "eps_scale": "eps_scale"}


@dataclass
class GuidanceSettings:
    """Plain-valued guidance settings. ``scale`` is w (1 = none). With ``autoguide`` (a checkpoint or run
    directory of the guiding model) ``scale`` is the autoguidance weight instead of the CFG one."""

    scale: float = 1.0
    rescale: float = 0.0  # phi of Lin et al. 2023 (0.7 in the paper)
    weight_schedule: str = "constant"  # constant | increasing | oscillating
    low: float = 1.0  # oscillating: the low weight
    warmup: int = 0  # oscillating: steps at the high weight before alternating
    interval: tuple[float, float] | None = None  # (lo, hi] in ve_sigma where guidance applies
    threshold: str = "none"  # none | static | dynamic
    percentile: float = 0.995  # dynamic thresholding
    autoguide: str | None = None
    autoguide_ema: str | None = None
    eps_scale: float = 1.0  # lambda of epsilon scaling (Ning et al. 2024); 1 = off

    def __post_init__(self):
        if self.weight_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"unknown guidance schedule {self.weight_schedule!r}; choose one of "
                             f"{', '.join(GUIDANCE_SCHEDULES)}")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"unknown threshold {self.threshold!r}; choose one of {', '.join(THRESHOLDS)}")
        if self.interval is not None:
            if len(self.interval) != 2:
                raise ValueError(f"the guidance interval is two ve_sigma values (lo, hi), got {self.interval!r}")
            self.interval = (float(self.interval[0]), float(self.interval[1]))
            if not 0.0 <= self.interval[0] < self.interval[1]:
                raise ValueError(f"the guidance interval needs 0 <= lo < hi in ve_sigma, got {self.interval}")
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"the guidance rescale phi must be in [0, 1], got {self.rescale}")
        if not 0.0 < self.percentile <= 1.0:
            raise ValueError(f"the dynamic-thresholding percentile must be in (0, 1], got {self.percentile}")
        if self.warmup < 0:
            raise ValueError(f"oscillating guidance needs warmup >= 0 steps, got {self.warmup}")
        if not (math.isfinite(self.eps_scale) and self.eps_scale > 0):
            raise ValueError(f"eps_scale (epsilon scaling's lambda) must be > 0, got {self.eps_scale}")

    @property
    def active(self) -> bool:
        return self.scale != 1.0 or (self.weight_schedule == "oscillating" and self.low != 1.0)

    @classmethod
    def from_sample(cls, sample, **overrides) -> GuidanceSettings:
        """From a config's ``sample`` section (its ``guidance*``, ``threshold*`` and ``autoguide*`` keys), with
        ``overrides`` (None values keep the section's own)."""
        values = {field: getattr(sample, key) for field, key in SAMPLE_KEYS.items()}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def unguided(self) -> GuidanceSettings:
        """The same thresholding without guidance: for unconditional samples, or where no guide model exists
        yet (training-time grids)."""
        return replace(self, scale=1.0, weight_schedule="constant", autoguide=None, autoguide_ema=None)

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v != GuidanceSettings.__dataclass_fields__[k].default
                or k == "scale"}


def _scale(settings: GuidanceSettings, ts: Tensor, schedule) -> GuidanceScale:
    if settings.weight_schedule == "increasing":
        scale = increasing(settings.scale, ts)
    elif settings.weight_schedule == "oscillating":
        scale = oscillating(settings.scale, settings.low, settings.warmup, ts)
    else:
        scale = constant(settings.scale)
    if settings.interval is not None:
        scale = limited_interval(scale, schedule, *settings.interval)
    return scale


def apply_guidance(denoise: DenoiseFn, settings: GuidanceSettings, *, ts: Tensor, schedule,
                   null: NullFn | None = None, guide: DenoiseFn | None = None) -> DenoiseFn:
    """``denoise`` with the guidance and thresholding of ``settings`` on the sampling grid ``ts``. ``null``
    maps a condition to the null one (classifier-free); ``guide`` is the guiding model (autoguidance)."""
    out = denoise
    if settings.active:
        scale = _scale(settings, ts, schedule)
        if settings.autoguide is not None or guide is not None:
            if guide is None:
                raise ValueError(f"autoguidance needs the guiding model ({settings.autoguide}) loaded")
            out = autoguidance(denoise, guide, scale, rescale=settings.rescale)
        else:
            if null is None:
                raise ValueError("classifier-free guidance needs a conditional model and a condition")
            out = classifier_free(denoise, scale, null, rescale=settings.rescale)
    out = epsilon_scaling(out, settings.eps_scale, schedule)  # on the guided prediction, before any clip
    if settings.threshold == "static":
        out = static_threshold(out)
    elif settings.threshold == "dynamic":
        out = dynamic_threshold(out, settings.percentile)
    return out


# -- training ------------------------------------------------------------------------------------------
def drop_conditions(labels: Tensor, p_uncond: float, null_index: int, generator: torch.Generator | None) -> Tensor:
    """Per-example condition dropout (Ho & Salimans 2022): each label becomes the null class with
    probability ``p_uncond``."""
    drop = torch.rand(labels.shape[0], generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_index), labels)
