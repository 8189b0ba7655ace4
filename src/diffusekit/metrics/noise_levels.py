"""Loss per noise level on training and held-out images, and the gap between them.

Why: a model that memorizes its training set fits the training images better than the population, so its
held-out loss rises while its training loss keeps falling. Rising validation loss is therefore a necessary
sign of memorization: no rise, no memorization; a rise alone does not prove copying (see
:mod:`diffusekit.metrics.memorization` for the nearest-neighbour test on samples). The gap shows first at
medium and high log-SNR, where a denoiser can snap a noisy training image back onto itself; at low log-SNR
every denoiser predicts roughly the data mean. Splitting the loss by noise level as in Karras et al. 2022
(fig. 5) and EDM2 (Karras et al. 2024, loss by noise level) shows where the two curves part.

:class:`NoiseLevelProbe` draws everything once (images, noise, times, labels) from its own generator, so every
call evaluates the same points and curves over training compare like with like: only the network changes.
Each bin is evaluated at its midpoint in log-SNR (not jittered inside the bin): deterministic, and the exact
loss at one known noise level. The value is :attr:`~diffusekit.loss.LossOutput.unweighted`, the weighted
F-space MSE the network is trained on at that level, without importance-sampling weights; the training time
distribution plays no part, so ``noise/*/mean`` (a uniform mean over bins in log-SNR) is not the training
loss. Train and validation points of the same slot share their noise (common random numbers), so the gap
is less noisy than the difference of two independent estimates.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..loss import DiffusionLoss
from ..schedules import Schedule

if TYPE_CHECKING:
    from ..data import ImageArrays

__all__ = ["NoiseLevelBins", "NoiseLevelProbe", "LOGSNR_LIMIT"]

#: Infinite log-SNR ends (t = 0; t = 1 at zero terminal SNR) are clipped to +-LOGSNR_LIMIT, as the denoiser does.
LOGSNR_LIMIT = 30.0


@dataclass(frozen=True, eq=False)
class NoiseLevelBins:
    """Log-SNR bins: ``edges`` (float64, strictly ascending, ``len = bins + 1``), low log-SNR (noisy) first."""

    edges: Tensor

    def __post_init__(self):
        edges = torch.as_tensor(self.edges, dtype=torch.float64).detach().cpu().reshape(-1)
        if len(edges) < 2 or not bool(torch.isfinite(edges).all()) or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError(f"bin edges must be at least 2 finite, strictly ascending values, got {edges.tolist()}")
        object.__setattr__(self, "edges", edges)

    @classmethod
    def for_schedule(cls, schedule: Schedule, bins: int = 8, t_min: float = 1e-3,
                     t_max: float = 1 - 1e-3) -> NoiseLevelBins:
        """``bins`` bins evenly spaced in log-SNR between ``logsnr(t_max)`` and ``logsnr(t_min)`` (infinite
        ends clipped to +-:data:`LOGSNR_LIMIT`)."""
        if bins < 1 or not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need bins >= 1 and 0 <= t_min < t_max <= 1, got {bins}, {t_min}, {t_max}")
        lo, hi = schedule.logsnr(torch.tensor([t_max, t_min], dtype=torch.float64)).clamp(-LOGSNR_LIMIT,
                                                                                          LOGSNR_LIMIT).tolist()
        if not lo < hi:
            raise ValueError(f"{schedule!r} has no log-SNR range between t = {t_min} and {t_max}")
        return cls(torch.linspace(lo, hi, bins + 1, dtype=torch.float64))

    def __len__(self) -> int:
        return len(self.edges) - 1

    @property
    def centers(self) -> Tensor:
        """The log-SNR at which each bin is evaluated: its midpoint."""
        return (self.edges[:-1] + self.edges[1:]) / 2

    def times(self, schedule: Schedule) -> Tensor:
        """The time of each bin's center on ``schedule``."""
        return schedule.t_from_logsnr(self.centers).to(torch.float64)

    def labels(self) -> list[str]:
        """Names like ``lsnr-6.0..-4.0`` (log-SNR from -6 to -4): characters ``[A-Za-z0-9.-]`` only, so valid
        in TensorBoard tags and JSON keys. One decimal, more only where needed to keep the names distinct."""
        for decimals in range(1, 10):
            text = [_number(float(e), decimals) for e in self.edges]
            names = [f"lsnr{a}..{b}" for a, b in zip(text[:-1], text[1:], strict=True)]
            if len(set(names)) == len(names):
                return names
        return [f"lsnr{float(a)!r}..{float(b)!r}" for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)]


def _number(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}"
    return text[1:] if float(text) == 0.0 and text.startswith("-") else text  # no "-0.0"


@dataclass(frozen=True)
class _ProbeSet:
    x0: Tensor  # [bins * per_bin, ...] on the CPU, bin-major
    labels: Tensor | None  # [bins * per_bin] or None


class NoiseLevelProbe:
    """Deterministic per-bin losses on fixed images: the same images, noise, times and condition labels
    every call, so curves over training compare like with like (the only thing that changes is the network).

    Args:
        loss: the training loss (its schedule, parameterization and weighting are used; its time sampler is
            neither drawn from nor updated).
        train_images, val_images: float ``[N, ...]`` images (the probe keeps only the ones it draws, on the CPU).
            ``val_images=None``: no validation keys.
        train_labels, val_labels: class labels for conditional models, passed as ``cond={"labels": labels}``
            (the true labels, never the null class); both or neither when there is a validation set.
        bins: a :class:`NoiseLevelBins`, or a count for :meth:`NoiseLevelBins.for_schedule` on the loss's schedule.
        per_bin: points evaluated per bin and set. Images are drawn without replacement per bin when the set has
            ``per_bin`` images, otherwise every image is used equally often (each time with fresh noise).
        seed: seed of the probe's own generator; no global RNG is touched.
        batch_size: points per network call.

    A call costs ``bins * per_bin`` network evaluations per set (8 * 64 * 2 = 1024 with validation by default).
    """

    def __init__(self, loss: DiffusionLoss, train_images: Tensor, val_images: Tensor | None = None, *,
                 train_labels: Tensor | None = None, val_labels: Tensor | None = None,
                 bins: NoiseLevelBins | int = 8, per_bin: int = 64, seed: int = 0, batch_size: int = 256):
        if isinstance(bins, int):
            bins = NoiseLevelBins.for_schedule(loss.schedule, bins)
        if per_bin < 1 or batch_size < 1:
            raise ValueError(f"per_bin and batch_size must be >= 1, got {per_bin}, {batch_size}")
        if not train_images.is_floating_point():
            raise ValueError(f"images must be floating point (e.g. ImageArrays.tensors()), got {train_images.dtype}")
        if val_images is not None:
            if val_images.shape[1:] != train_images.shape[1:]:
                raise ValueError(f"train images {tuple(train_images.shape[1:])} and validation images "
                                 f"{tuple(val_images.shape[1:])} differ in shape")
            if (train_labels is None) != (val_labels is None):
                raise ValueError("give labels for both the training and the validation images, or for neither")
        self.loss, self.bins, self.per_bin, self.batch_size = loss, bins, int(per_bin), int(batch_size)
        generator = torch.Generator().manual_seed(seed)
        sets = {"train": (train_images, train_labels)}
        if val_images is not None:
            sets["val"] = (val_images, val_labels)
        self._sets = {name: self._draw(images, labels, generator) for name, (images, labels) in sets.items()}
        n = len(bins) * self.per_bin
        self._noise = torch.randn((n, *train_images.shape[1:]), generator=generator, dtype=train_images.dtype)
        self._t = bins.times(loss.schedule).repeat_interleave(self.per_bin)

    @classmethod
    def from_arrays(cls, loss: DiffusionLoss, train: ImageArrays, val: ImageArrays | None = None, *,
                    conditional: bool = False, bins: NoiseLevelBins | int = 8, per_bin: int = 64, seed: int = 0,
                    batch_size: int = 256) -> NoiseLevelProbe:
        """A probe on :class:`~diffusekit.data.ImageArrays` that converts only a fixed random subset of at most
        ``bins * per_bin`` images per set (not all 60k of MNIST). ``conditional``: pass the class labels."""
        count = (bins if isinstance(bins, int) else len(bins)) * per_bin
        generator = torch.Generator().manual_seed(seed + 1)  # the subsets; the probe's own draws use ``seed``

        def subset(arrays):
            chosen = torch.randperm(len(arrays), generator=generator)[:count].sort().values.numpy()
            images, labels = arrays.tensors(chosen)
            return images, labels if conditional else None

        train_images, train_labels = subset(train)
        val_images, val_labels = subset(val) if val is not None else (None, None)
        return cls(loss, train_images, val_images, train_labels=train_labels, val_labels=val_labels, bins=bins,
                   per_bin=per_bin, seed=seed, batch_size=batch_size)

    def _draw(self, images: Tensor, labels: Tensor | None, generator: torch.Generator) -> _ProbeSet:
        n = len(images)
        if n == 0:
            raise ValueError("the probe needs at least one image per set")
        if labels is not None and len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} images")
        rounds = math.ceil(self.per_bin / n)
        index = torch.cat([torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:self.per_bin]
                           for _ in range(len(self.bins))])
        x0 = images.detach()[index.to(images.device)].cpu()
        if labels is not None:
            labels = torch.as_tensor(labels)
            labels = labels[index.to(labels.device)].cpu()
        return _ProbeSet(x0, labels)

    @torch.no_grad()
    def __call__(self, network_fn, device: torch.device | str = "cpu") -> dict[str, float]:
        """Per-bin losses of ``network_fn`` (the raw-output callable the loss regresses, e.g.
        ``denoiser.network_output``; for an EMA, ``build_denoiser(config, ema.model).network_output``).

        Returns ``noise/{train,val,gap}/<label>`` and ``noise/{train,val,gap}/mean`` (means over bins), with
        gap = val - train. Modules (``network_fn`` itself or the module of a bound method) are in eval mode
        during the call and get their own training flags back afterwards. Autocast, if wanted, is the caller's.
        """
        with _eval_mode(network_fn):
            per_bin = {name: self._evaluate(network_fn, probe_set, device) for name, probe_set in self._sets.items()}
        if "val" in per_bin:
            per_bin["gap"] = per_bin["val"] - per_bin["train"]
        out = {}
        for name, values in per_bin.items():
            out.update({f"noise/{name}/{label}": float(v) for label, v in zip(self.bins.labels(), values, strict=True)})
            out[f"noise/{name}/mean"] = float(values.mean())
        return out

    def _evaluate(self, network_fn, probe_set: _ProbeSet, device) -> Tensor:
        values = torch.empty(len(probe_set.x0), dtype=torch.float64)
        for start in range(0, len(values), self.batch_size):
            part = slice(start, start + self.batch_size)
            cond = {} if probe_set.labels is None else {"labels": probe_set.labels[part].to(device)}
            output = self.loss(network_fn, probe_set.x0[part].to(device), noise=self._noise[part].to(device),
                               t=self._t[part], cond=cond)
            values[part] = output.unweighted.detach().to("cpu", torch.float64)
        return values.reshape(len(self.bins), self.per_bin).mean(1)


@contextlib.contextmanager
def _eval_mode(network_fn):
    """Eval mode for the module behind ``network_fn`` (dropout off), restoring every submodule's own flag."""
    module = network_fn if isinstance(network_fn, nn.Module) else getattr(network_fn, "__self__", None)
    if not isinstance(module, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
