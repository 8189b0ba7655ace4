"""Exponential moving averages of the weights, parameterised by a half-life in training images.

EDM (Karras et al. 2022, appendix F.3): after each step of ``batch`` images the average moves with
``beta = 0.5 ** (batch / half_life_images)``, so the averaging horizon does not depend on the batch size.
With ``rampup`` (EDM uses 0.05) the half-life is at most ``rampup * cur_nimg`` early on, so the average
is not dominated by the random initialisation. Several rates can be tracked at once (:class:`EMASet`).

:class:`PowerEMA` is EDM2's power-function average (Karras et al. 2024), whose snapshots let any other length be
reconstructed after training (:mod:`diffusekit.posthoc_ema`). The set stores it among the EMAs under the
name ``power_<sigma_rel>`` (e.g. ``power_0p050``), so checkpoints and resumes carry it like the others.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..distributed import full_tensor
from ..posthoc_ema import exponential_beta, gamma_of_sigma_rel, power_beta, sigma_rel_label

__all__ = ["EMA", "PowerEMA", "EMASet", "power_ema_name"]


class EMA:
    def __init__(self, model: nn.Module, half_life_images: float, rampup: float | None = 0.05):
        if not half_life_images > 0:
            raise ValueError(f"EMA half-life must be > 0 images, got {half_life_images}")
        self.half_life_images, self.rampup = float(half_life_images), rampup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, cur_nimg: int, batch: int) -> float:
        return exponential_beta(self.half_life_images, cur_nimg, batch, self.rampup)

    @torch.no_grad()
    def update(self, model: nn.Module, cur_nimg: int, batch: int) -> None:
        """Fold in ``model`` after a step that brought the image count to ``cur_nimg``: one multi-tensor lerp
        over all weights (a per-tensor loop costs a kernel launch per tensor)."""
        beta = self.beta(cur_nimg, batch)
        averaged = list(self.model.parameters())
        # FSDP: the shards gathered (the average stays whole)
        current = [full_tensor(p.detach()).to(a.dtype) for a, p in zip(averaged, model.parameters(), strict=True)]
        torch._foreach_lerp_(averaged, current, 1 - beta)
        buffers = list(self.model.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(model.buffers()))


def power_ema_name(sigma_rel: float) -> str:
    """The name a tracked power-function EMA has in the set and in checkpoints, e.g. ``power_0p050``."""
    return f"power_{sigma_rel_label(sigma_rel)}"


class PowerEMA(EMA):
    """EDM2's power-function EMA of relative length ``sigma_rel``: ``beta = (1 - 1/t) ** (gamma + 1)`` after optimizer
    step ``t = cur_nimg / batch`` (the first step copies the weights; no ramp-up is needed)."""

    def __init__(self, model: nn.Module, sigma_rel: float):
        self.sigma_rel, self.gamma = float(sigma_rel), gamma_of_sigma_rel(sigma_rel)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, cur_nimg: int, batch: int) -> float:
        return power_beta(self.gamma, cur_nimg / batch)


class EMASet:
    """Named EMAs, e.g. ``{"ema_0.5M": 500_000, "ema_2M": 2_000_000}`` half-lives in images, then one
    :class:`PowerEMA` per ``posthoc_sigma_rels`` entry (named by :func:`power_ema_name`)."""

    def __init__(self, model: nn.Module, half_lives: dict[str, float], rampup: float | None = 0.05,
                 posthoc_sigma_rels: tuple[float, ...] = ()):
        self.emas: dict[str, EMA] = {name: EMA(model, h, rampup) for name, h in half_lives.items()}
        for sigma_rel in posthoc_sigma_rels:
            self.emas[power_ema_name(sigma_rel)] = PowerEMA(model, sigma_rel)

    @property
    def power(self) -> list[PowerEMA]:
        """The tracked power-function EMAs (the post-hoc EMA's, empty when it is off)."""
        return [ema for ema in self.emas.values() if isinstance(ema, PowerEMA)]

    def update(self, model: nn.Module, cur_nimg: int, batch: int) -> None:
        for ema in self.emas.values():
            ema.update(model, cur_nimg, batch)

    def __getitem__(self, name: str) -> EMA:
        if name not in self.emas:
            raise KeyError(f"no EMA named {name!r}; this run has {', '.join(self.emas) or 'none'}")
        return self.emas[name]

    def state_dicts(self) -> dict[str, dict]:
        return {name: ema.model.state_dict() for name, ema in self.emas.items()}

    def load_state_dicts(self, states: dict[str, dict]) -> None:
        missing = set(self.emas) - set(states)
        if missing:
            raise ValueError(f"checkpoint lacks EMA weights {sorted(missing)}")
        for name, ema in self.emas.items():
            ema.model.load_state_dict(states[name])
