"""Classifier rejection sampling: redraw class-conditional samples that a classifier reads as another class.

The idea is the classifier-based rejection sampling of VQ-VAE-2 (Razavi, van den Oord & Vinyals 2019,
"Generating diverse high-fidelity images with VQ-VAE-2", sec. 3.3), which keeps only the samples a pretrained
classifier assigns to the requested class; here the test is hard (the classifier's top class must equal the
requested one) and a rejected sample is drawn again with fresh noise. Why: a class-conditional model draws
some digits of the wrong class (about 15% of the demo model's at guidance w = 1); raising w repairs that
by narrowing and saturating every sample, while rejection leaves the accepted samples untouched and spends
extra draws only where the condition failed. What it samples is ``p(x | c)`` restricted to the images the
classifier reads as ``c``, so it inherits that classifier's errors and biases; judge the result with a
*different* classifier (accuracy under the rejecting one is 100% by construction).

Seeds: round 0 is exactly :func:`diffusekit.generate.generate` (image i from noise seeded by ``(seed, i)``), so
rejection never changes a sample accepted in the first round. Round r >= 1 redraws the still-rejected images,
in index order, as one ``generate`` call with seed ``seed + r * ROUND_SEED_STRIDE`` (fresh noise each round):
the output is reproducible for the same arguments, but a redrawn image depends on which others were rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .conditions import Conditions, select
from .generate import generate
from .guidance import GuidanceSettings
from .metrics.classifier import classify
from .models import load_guide

__all__ = ["ROUND_SEED_STRIDE", "RejectionResult", "rejection_sample", "generation_draw", "generate_with_rejection"]

# a prime: round r uses seed + r * stride (noise seeds stay below 2**64 for some 18,000 rounds)
ROUND_SEED_STRIDE = 1_000_000_007

DrawFn = Callable[[Tensor, int], Tensor]  # (sample indices [k], round) -> images [k, ...]
PredictFn = Callable[[Tensor], Tensor]  # images [k, ...] -> predicted labels [k]


@dataclass
class RejectionResult:
    """``images``/``labels``: the final sample i and its requested class. ``accepted[i]``: whether its final
    draw was classified as requested (False only when ``max_rounds`` ran out; its last draw is kept).
    ``predicted``: the classifier's label of each final image. ``rounds_used[i]``: how many times sample i was
    drawn (1: only in round 0). ``round_draws``: images drawn in each round."""

    images: Tensor
    labels: Tensor
    accepted: Tensor
    predicted: Tensor
    rounds_used: Tensor
    round_draws: list[int] = field(default_factory=list)
    max_rounds: int = 10

    @property
    def draws(self) -> int:
        return sum(self.round_draws)

    @property
    def first_round_acceptance(self) -> float:
        """The fraction of samples accepted in round 0 (the classifier's agreement with plain sampling)."""
        return int((self.accepted & (self.rounds_used == 1)).sum()) / len(self.labels)

    @property
    def acceptance_rate(self) -> float:
        """Accepted samples per draw, over all rounds."""
        return int(self.accepted.sum()) / self.draws

    def describe(self) -> dict:
        """Plain-valued statistics, for JSON."""
        n, accepted = len(self.labels), int(self.accepted.sum())
        return {"max_rounds": self.max_rounds, "n": n, "accepted": accepted, "draws": self.draws,
                "round_draws": list(self.round_draws), "first_round_acceptance": self.first_round_acceptance,
                "acceptance_rate": self.acceptance_rate, "draws_per_sample": self.draws / n,
                "unaccepted": torch.nonzero(~self.accepted).flatten().tolist()}


def rejection_sample(draw: DrawFn, predict: PredictFn, labels: Tensor, *, max_rounds: int = 10) -> RejectionResult:
    """Draw every sample with ``draw(arange(n), 0)``, then redraw the ones for which ``predict`` disagrees with
    ``labels`` with ``draw(rejected_indices, r)`` in rounds r = 1, 2, ... until all are accepted or ``max_rounds``
    rounds (round 0 included) were drawn. A sample still rejected then keeps its last draw, marked
    ``accepted=False``."""
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise ValueError(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
    if labels is None:
        raise ValueError("rejection sampling needs class labels (a class-conditional model)")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or len(labels) == 0 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be a non-empty 1-D tensor of class indices, got shape {tuple(labels.shape)} "
                         f"dtype {labels.dtype}")
    labels = labels.long().cpu()
    n = len(labels)
    images: Tensor | None = None
    predicted = torch.full((n,), -1, dtype=torch.long)
    rounds_used = torch.zeros(n, dtype=torch.long)
    accepted = torch.zeros(n, dtype=torch.bool)
    round_draws: list[int] = []
    todo = torch.arange(n)
    for r in range(max_rounds):
        batch = draw(todo, r)
        if not isinstance(batch, Tensor) or batch.ndim < 1 or len(batch) != len(todo):
            raise ValueError(f"draw returned {tuple(getattr(batch, 'shape', ()))} for {len(todo)} indices in round {r}")
        guess = torch.as_tensor(predict(batch)).long().cpu()
        if guess.shape != (len(todo),):
            raise ValueError(f"predict returned shape {tuple(guess.shape)} for {len(todo)} images in round {r}")
        batch = batch.cpu()
        if images is None:
            images = torch.empty((n, *batch.shape[1:]), dtype=batch.dtype)
        images[todo] = batch
        predicted[todo] = guess
        rounds_used[todo] += 1
        ok = guess == labels[todo]
        accepted[todo[ok]] = True
        round_draws.append(len(todo))
        todo = todo[~ok]
        if len(todo) == 0:
            break
    return RejectionResult(images, labels, accepted, predicted, rounds_used, round_draws, max_rounds)


def generation_draw(denoiser, image_shape: tuple[int, int, int], labels: Tensor, *, num_classes: int, seed: int = 0,
                    first: int = 0, condition: Conditions | None = None, **generate_kwargs) -> DrawFn:
    """The ``draw`` of :func:`rejection_sample` for :func:`generate`: round 0 is ``generate`` over all samples,
    round r draws the given indices with seed ``seed + r * ROUND_SEED_STRIDE`` (module docstring)."""
    labels = torch.as_tensor(labels, dtype=torch.long)

    def draw(indices: Tensor, r: int) -> Tensor:
        extra = {} if condition is None else {"condition": select(condition, indices)}
        return generate(denoiser, len(indices), image_shape, labels=labels[indices], num_classes=num_classes,
                        seed=seed + r * ROUND_SEED_STRIDE, first=first, **extra, **generate_kwargs)
    return draw


def generate_with_rejection(denoiser, n: int, image_shape: tuple[int, int, int], *, labels: Tensor | None,
                            num_classes: int, classifier: nn.Module, max_rounds: int = 10,
                            guidance: float | GuidanceSettings = 1.0, guide=None, device: str | torch.device = "cpu",
                            **generate_kwargs) -> RejectionResult:
    """:func:`generate` (same keyword arguments: ``sampler``, ``steps``, ``seed``, ``first``, ...) with every image
    checked by ``classifier`` (:func:`diffusekit.metrics.classify`: one-channel 28x28 or 32x32 images) and
    redrawn while it reads as another class than ``labels``, for at most ``max_rounds`` rounds in all."""
    if not num_classes:
        raise ValueError("rejection sampling needs a class-conditional model (num_classes > 0)")
    if labels is None:
        raise ValueError("rejection sampling needs class labels, one per image")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (n,):
        raise ValueError(f"labels must be {n} class indices, got shape {tuple(labels.shape)}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
    settings = guidance if isinstance(guidance, GuidanceSettings) else GuidanceSettings(scale=float(guidance))
    if guide is None and settings.autoguide is not None:
        guide = load_guide(settings, image_shape, num_classes, device)  # once, not once per round
    draw = generation_draw(denoiser, image_shape, labels, num_classes=num_classes, guidance=settings, guide=guide,
                           device=device, **generate_kwargs)
    return rejection_sample(draw, lambda images: classify(classifier, images), labels, max_rounds=max_rounds)
