"""Temporal metrics for moving-digit clips (moving MNIST: one digit per clip on a black background, moving at a
constant velocity and reflected at the walls; Srivastava et al. 2015).

The digit is tracked by its intensity-weighted centre of mass (:func:`digit_centroids`); that is exact when the
whole digit lies inside the frame, which the bouncing physics guarantees for data clips. From the track:

- :func:`motion_smoothness`: under the physics the per-axis displacement ``d_t = c_{t+1} - c_t`` is the constant
  velocity except at a bounce, where the step that crosses the wall is shortened to ``|v| - 2 * overshoot`` and
  the sign flips. Steps next to a sign flip are set aside per axis; on the remaining ones the displacement
  should not change (speed variation and acceleration 0).
- :func:`identity_agreement`: the digit cropped around its centroid and classified in every frame (the MNIST
  :class:`~diffusekit.metrics.classifier.DigitCNN`); a generated digit should not change identity over time.

Compare generated clips with data clips computed the same way: a track rendered at whole-pixel positions
(sub-pixel velocities rounded per frame) has a small acceleration of its own.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .classifier import IMAGE_SIZE, classify
from .clips import as_uint8_clips

__all__ = ["digit_centroids", "motion_smoothness", "identity_agreement", "digit_crops"]


def _gray(clips: np.ndarray) -> np.ndarray:
    """uint8 [N, F, H, W, C] -> float64 [N, F, H, W] in [0, 255] (the channels' mean)."""
    return clips.astype(np.float64).mean(-1)


def digit_centroids(clips: np.ndarray | Tensor, background: int = 0) -> np.ndarray:
    """Intensity-weighted centre of mass ``(row, col)`` of every frame in pixel-index coordinates: float64
    ``[N, F, 2]``. Pixels at or below ``background`` (uint8 scale; 0 = exact for data clips, a few levels ignore
    a generated clip's faint haze) weigh nothing; a frame without ink gets NaN (count them with ``np.isnan``)."""
    if not 0 <= background < 255:
        raise ValueError(f"background must be in 0..254 (uint8 scale), got {background}")
    gray = _gray(as_uint8_clips(clips))
    weights = np.where(gray > background, gray, 0.0)
    mass = weights.sum((2, 3))
    rows = (weights.sum(3) * np.arange(gray.shape[2])).sum(2)
    cols = (weights.sum(2) * np.arange(gray.shape[3])).sum(2)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids = np.stack([rows / mass, cols / mass], axis=-1)
    centroids[mass == 0] = np.nan
    return centroids


def _track(values, name: str, frames: int | None = None) -> np.ndarray:
    """[N, F, 2] or [N, F, 1, 2] (one digit of a dataset's [N, F, D, 2] positions) -> float64 [N, F, 2]."""
    x = np.asarray(values, np.float64)
    if x.ndim == 4:
        if x.shape[2] != 1:
            raise ValueError(f"{name}: the motion metrics follow one digit per clip, got {x.shape[2]} digits "
                             f"(shape {x.shape})")
        x = x[:, :, 0]
    if x.ndim != 3 or x.shape[2] != 2:
        raise ValueError(f"{name} must be (row, col) tracks [N, F, 2] (or [N, F, 1, 2]), got shape {x.shape}")
    if frames is not None and x.shape[1] != frames:
        raise ValueError(f"{name} has {x.shape[1]} frames, the clips {frames}")
    if x.shape[1] < 3:
        raise ValueError(f"{name}: motion needs at least 3 frames (2 steps), got {x.shape[1]}")
    return x


def _away_from_walls(track: np.ndarray) -> np.ndarray:
    """bool [N, F - 1, 2]: per axis, the steps of ``track`` [N, F, 2] not touched by a bounce.

    A bounce flips the displacement's sign; the step that crosses the wall is shortened (possibly to 0). A step
    is set aside when its sign differs from the previous or next step's, or when those two differ (a bounce
    that leaves this step at exactly 0). A zero velocity (all signs 0) sets nothing aside."""
    sign = np.sign(np.diff(track, axis=1))
    flip = np.zeros(sign.shape, bool)
    opposite = sign[:, 1:] * sign[:, :-1] < 0  # between step t and t + 1
    flip[:, 1:] |= opposite
    flip[:, :-1] |= opposite
    flip[:, 1:-1] |= sign[:, 2:] * sign[:, :-2] < 0  # around a step of 0
    return ~flip & np.isfinite(sign)


def motion_smoothness(clips_or_centroids, *, positions=None, background: int = 0) -> dict:
    """How constant the digit's velocity is, from clips (5-d, see :func:`digit_centroids`) or centroid tracks
    ``[N, F, 2]`` (float, px).

    - ``speed``: mean ``|c_{t+1} - c_t|`` (Euclidean, px/frame) over all steps between frames with ink.
    - ``speed_cv``: per clip and axis, the standard deviation over time of ``|d_t|`` divided by its mean, over
      the steps away from walls (at least 2, mean > 0); averaged over clips and axes (None when none qualify).
    - ``acceleration``: mean ``|d_{t+1} - d_t|`` (Euclidean, px/frame^2) over consecutive steps both away from
      walls on both axes (None when there are none).
    - ``kept_fraction``: the fraction of (step, axis) displacements away from walls; ``empty_frames``.

    ``positions``: ground-truth top-left positions ``[N, F, 2]`` (or ``[N, F, 1, 2]``) of the same clips. Walls
    are then found on that track (exact for any centroid noise), and ``centroid_error`` is reported: the mean
    Euclidean distance between the centroid and the position plus the clip's mean offset (the digit's own
    centre of mass within its box, constant per clip)."""
    data = clips_or_centroids
    if isinstance(data, Tensor) or (np.ndim(data) == 5):
        centroids = digit_centroids(data, background)
    else:
        centroids = np.asarray(data, np.float64)
    centroids = _track(centroids, "centroids")
    truth = None if positions is None else _track(positions, "positions", centroids.shape[1])
    if truth is not None and truth.shape[0] != centroids.shape[0]:
        raise ValueError(f"positions are given for {truth.shape[0]} clips, the clips are {centroids.shape[0]}")
    steps = np.diff(centroids, axis=1)  # [N, F - 1, 2]
    finite = np.isfinite(steps)
    kept = _away_from_walls(centroids if truth is None else truth) & finite
    lengths = np.linalg.norm(steps, axis=-1)
    result: dict = {"clips": int(centroids.shape[0]), "frames": int(centroids.shape[1]),
                    "empty_frames": int(np.isnan(centroids[..., 0]).sum()),
                    "speed": float(lengths[np.isfinite(lengths)].mean()) if np.isfinite(lengths).any() else None,
                    "kept_fraction": float(kept.mean())}

    magnitude = np.where(kept, np.abs(steps), 0.0)
    count = kept.sum(1)  # [N, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = magnitude.sum(1) / count
        spread = np.sqrt((np.where(kept, magnitude - mean[:, None], 0.0) ** 2).sum(1) / count)
    usable = (count >= 2) & (mean > 0)
    result["speed_cv"] = float((spread[usable] / mean[usable]).mean()) if usable.any() else None

    pair = kept[:, 1:].all(-1) & kept[:, :-1].all(-1)  # [N, F - 2]
    change = np.linalg.norm(np.diff(steps, axis=1), axis=-1)
    result["acceleration"] = float(change[pair].mean()) if pair.any() else None

    if truth is not None:
        offset = centroids - truth
        with np.errstate(invalid="ignore"):
            error = np.linalg.norm(offset - np.nanmean(offset, axis=1, keepdims=True), axis=-1)
        result["centroid_error"] = float(np.nanmean(error)) if np.isfinite(error).any() else None
    return result


def digit_crops(clips: np.ndarray | Tensor, digit_size: int, centroids: np.ndarray | None = None,
                background: int = 0) -> tuple[Tensor, np.ndarray]:
    """Windows of ``digit_size`` px centred on each frame's centroid (zero outside the frame), resized to 28x28
    for :func:`~diffusekit.metrics.classifier.classify`: (float ``[M, 1, 28, 28]`` in [-1, 1] for the M frames
    with ink, bool ``[N, F]`` saying which frames those are). MNIST digits are centred on their centre of mass in
    their 28x28 box, so a window on the centroid frames them as the classifier saw them in training."""
    if int(digit_size) != digit_size or digit_size < 1:
        raise ValueError(f"digit_size must be a positive number of pixels, got {digit_size}")
    digit_size = int(digit_size)
    clips = as_uint8_clips(clips)
    if centroids is None:
        centroids = digit_centroids(clips, background)
    has_ink = np.isfinite(centroids).all(-1)
    gray = _gray(clips)[has_ink]  # [M, H, W]
    start = np.floor(centroids[has_ink] - (digit_size - 1) / 2 + 0.5).astype(np.int64)  # [M, 2], rounded
    padded = np.pad(gray, ((0, 0), (digit_size, digit_size), (digit_size, digit_size)))
    offsets = np.arange(digit_size)
    rows = (start[:, 0, None] + offsets + digit_size)[:, :, None]  # [M, S, 1]
    cols = (start[:, 1, None] + offsets + digit_size)[:, None, :]  # [M, 1, S]
    windows = torch.from_numpy(padded[np.arange(len(gray))[:, None, None], rows, cols]).float()[:, None]
    if digit_size != IMAGE_SIZE and len(windows):
        windows = F.interpolate(windows, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False,
                                antialias=digit_size > IMAGE_SIZE)
    return windows / 127.5 - 1, has_ink


def identity_agreement(clips: np.ndarray | Tensor, classifier: nn.Module, digit_size: int, requested=None, *,
                       background: int = 0, batch_size: int = 500) -> dict:
    """Does the digit keep its identity over the clip? Every frame's crop (:func:`digit_crops`) is classified.

    - ``agreement``: per clip, the fraction of frames classified as the clip's majority class (ties: the smaller
      class; a frame without ink never agrees), averaged over clips.
    - ``consistent_clips``: the fraction of clips whose frames all get the same class.
    - with ``requested`` (int labels ``[N]``): ``requested_accuracy``, the fraction of all frames classified as
      their clip's requested label, and ``majority_accuracy``, the fraction of clips whose majority class is it.
    - ``clips``, ``frames`` (per clip), ``empty_frames``.
    """
    clips = as_uint8_clips(clips)
    n, frames = clips.shape[:2]
    crops, has_ink = digit_crops(clips, digit_size, background=background)
    predicted = np.full((n, frames), -1, np.int64)
    if len(crops):
        predicted[has_ink] = classify(classifier, crops, batch_size).cpu().numpy()
    classes = int(max(predicted.max(), 0)) + 1
    counts = np.stack([np.bincount(row[row >= 0], minlength=classes) for row in predicted])  # [N, classes]
    majority = np.where(counts.sum(1) > 0, counts.argmax(1), -1)
    agrees = (predicted == majority[:, None]) & has_ink
    result = {"clips": int(n), "frames": int(frames), "empty_frames": int((~has_ink).sum()),
              "agreement": float(agrees.mean(1).mean()), "consistent_clips": float(agrees.all(1).mean())}
    if requested is not None:
        labels = np.asarray(requested.cpu() if isinstance(requested, Tensor) else requested)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"requested must be integer labels [{n}] (one per clip), got {labels.dtype} "
                             f"{labels.shape}")
        result["requested_accuracy"] = float((predicted == labels[:, None]).mean())
        result["majority_accuracy"] = float((majority == labels).mean())
    return result
