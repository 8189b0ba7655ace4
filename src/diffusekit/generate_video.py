"""Generating clips from a video model: whole clips, clips of another length, and prediction from given frames.

- No context: ``n`` clips of ``frames`` frames, drawn at once by :func:`diffusekit.generate.generate` (clip i from
  noise seeded by ``(seed, i)``). A length other than the trained one needs temporal positions that generalise
  (relative or rotary; the network refuses more frames than an absolute table holds).
- Prediction (a network built with frame conditioning): the first ``k`` frames of each context clip are given
  and the rest generated, in windows of the trained length F. The first window holds the k given frames and
  F - k new ones; each later window is given the last k frames made so far and adds F - k more, until
  ``frames`` frames exist (autoregressive extension, as video diffusion models extend clips: Ho et al. 2022,
  sec. 3.1 use reconstruction guidance instead, a conditional network is the simpler exact route when it is
  trained for it). Window w draws its noise with the indices ``w * n + i``, so windows never share noise, and
  the given frames are copied into the output unchanged.
- History guidance (``history_guidance`` = w > 1; Song et al. 2025, "History-Guided Video Diffusion", its
  vanilla form): classifier-free guidance on the given frames, D = D(x | no frames) + w (D(x | frames) -
  D(x | no frames)). A prediction model has learned both: ``video.p_context`` of its training clips carry
  given frames, the others none. It costs a second network evaluation per step and composes with the label
  or text guidance, which applies to the history-guided prediction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Denoiser
from .generate import generate

__all__ = ["HistoryGuided", "generate_clips"]


class HistoryGuided:
    """``denoiser`` guided towards its prediction given the frames in ``cond["context"]`` and away from its
    prediction given none (history guidance, Song et al. 2025): D_u + w (D_c - D_u)."""

    def __init__(self, denoiser: Denoiser, weight: float):
        if not weight >= 1.0:
            raise ValueError(f"history_guidance must be >= 1 (1 = none), got {weight}")
        self.denoiser, self.weight, self.schedule = denoiser, float(weight), denoiser.schedule

    def __call__(self, x: Tensor, t: Tensor, cond: dict | None = None) -> Tensor:
        if cond is None or cond.get("context") is None:
            raise ValueError("history guidance needs given frames (cond['context'] and cond['context_mask'])")
        given = self.denoiser(x, t, cond)
        none = {**cond, "context": torch.zeros_like(cond["context"]),
                "context_mask": torch.zeros_like(cond["context_mask"])}
        without = self.denoiser(x, t, none)
        return without + self.weight * (given - without)


def generate_clips(denoiser: Denoiser, n: int, clip_shape: tuple[int, int, int, int], *, frames: int | None = None,
                   context: Tensor | None = None, context_frames: int = 0, frame_conditioning: bool = False,
                   condition: dict | None = None, history_guidance: float = 1.0, progress=None,
                   **options) -> Tensor:
    """``n`` clips float32 [n, C, frames, H, W] on the CPU. ``clip_shape``: the trained ``(C, F, H, W)``;
    ``frames``: the length to make (default F). ``context``: [n, C, >= k, H, W] clips whose first
    ``context_frames`` = k frames are given (the network must be built with ``frame_conditioning``).
    ``history_guidance``: w of history guidance on the given frames (1 = none; needs ``context``).
    ``options``: those of :func:`~diffusekit.generate.generate` (labels, sampler, steps, guidance, seed, ...)."""
    channels, trained, height, width = clip_shape
    frames = trained if frames is None else int(frames)
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if context is None:
        if context_frames:
            raise ValueError("context_frames was given without context clips")
        if history_guidance != 1.0:
            raise ValueError("history guidance needs given frames (context clips and context_frames)")
        extra = {}
        if frame_conditioning:  # a prediction model asked for whole clips: no frame is given
            extra = {"context": torch.zeros(n, channels, frames, height, width),
                     "context_mask": torch.zeros(n, frames, dtype=torch.bool)}
        return generate(denoiser, n, (channels, frames, height, width), condition={**(condition or {}), **extra},
                        progress=progress, **options)
    k = int(context_frames)
    if not frame_conditioning:
        raise ValueError("this model was not trained with frame conditioning (video.context_frames is 0): it cannot "
                         "continue given frames")
    if not 1 <= k < trained:
        raise ValueError(f"context_frames must be in 1..{trained - 1} (the model makes {trained}-frame windows), "
                         f"got {k}")
    if frames <= k:
        raise ValueError(f"frames ({frames}) must exceed context_frames ({k}): nothing would be generated")
    expected = (n, channels, height, width)
    if context.ndim != 5 or (context.shape[0], *context.shape[1:2], *context.shape[3:]) != expected:
        raise ValueError(f"context must be clips [{n}, {channels}, >= {k}, {height}, {width}], got "
                         f"{list(context.shape)}")
    if context.shape[2] < k:
        raise ValueError(f"the context clips have {context.shape[2]} frames, fewer than context_frames {k}")
    if history_guidance != 1.0:
        denoiser = HistoryGuided(denoiser, history_guidance)
    made = context[:, :, :k].float().cpu()
    given = torch.zeros(n, trained, dtype=torch.bool)
    given[:, :k] = True
    first, window = options.pop("first", 0), 0
    windows = -(-(frames - k) // (trained - k))
    while made.shape[2] < frames:
        known = torch.zeros(n, channels, trained, height, width)
        known[:, :, :k] = made[:, :, -k:]
        cond = {**(condition or {}), "context": known, "context_mask": given}
        out = generate(denoiser, n, (channels, trained, height, width), condition=cond, first=first + window * n,
                       **options)
        made = torch.cat([made, out[:, :, k:]], dim=2)
        window += 1
        if progress is not None:
            progress(n / windows)
    return made[:, :, :frames]
