"""Video metrics from the FID Inception-v3 run on every frame, pixel flicker, and one report for a clip set.

- :func:`frame_fid` (and :func:`frame_kid`): FID / KID over individual frames, all clips' frames pooled. It
  scores what frames look like and nothing about motion.
- :func:`fvd_proxy`: the Frechet distance (Heusel et al. 2017) of per-clip features pooled over time from the
  frame features (:func:`pooled_clip_features`). It is NOT Unterthiner et al.'s FVD (2018), which takes
  features from an I3D action-recognition network whose weights are not available offline; its numbers are
  not comparable to published FVDs, only between runs measured the same way.
- :func:`flicker`: the mean absolute frame-to-frame change of pixel values.

:func:`video_report` gathers these and, for moving-digit clips, the centroid, motion and identity metrics
of :mod:`diffusekit.metrics.motion`. Clips are uint8 ``[N, F, H, W, C]`` or float ``[N, C, F, H, W]`` in
[-1, 1] (:func:`~diffusekit.metrics.clips.as_uint8_clips`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .clips import as_uint8_clips
from .evaluate import sample_features
from .fid import fid_from_stats, frechet_distance_of_features
from .kid import kid
from .motion import identity_agreement, motion_smoothness
from .stats import FeatureStats

__all__ = ["clip_frame_features", "frame_fid", "frame_kid", "pooled_clip_features", "fvd_proxy", "flicker",
           "flicker_ratio", "video_report"]


def clip_frame_features(extractor, clips: np.ndarray | Tensor, batch_size: int = 50) -> np.ndarray:
    """Features of every frame: float32 ``[N, F, dim]`` (dim = 2048 for the FID Inception-v3).

    ``extractor``: an :class:`~diffusekit.metrics.inception.InceptionV3` (or anything with ``dim`` that maps
    uint8 NCHW batches to ``[B, dim]``), e.g. ``get_extractor("inception")``; every frame is resized and scaled
    exactly as an image is for FID."""
    clips = as_uint8_clips(clips)
    n, frames = clips.shape[:2]
    images = torch.from_numpy(clips.reshape(n * frames, *clips.shape[2:])).permute(0, 3, 1, 2)  # NCHW
    return sample_features(images, extractor, batch_size).numpy().reshape(n, frames, -1)


def _check_features(features, name: str) -> np.ndarray:
    x = np.asarray(features, np.float64)
    if x.ndim != 3:
        raise ValueError(f"{name} must be per-frame features [N, F, dim], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def _check_pair(features_a, features_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _check_features(features_a, "features_a"), _check_features(features_b, "features_b")
    if a.shape[2] != b.shape[2]:
        raise ValueError(f"feature sizes differ: {a.shape[2]} and {b.shape[2]}")
    return a, b


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance of two [n, d] feature sets (the route :func:`fid_from_stats` takes)."""
    if min(len(a), len(b)) < 2:
        raise ValueError(f"a Frechet distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    if max(len(a), len(b)) <= a.shape[1]:  # fewer samples than dimensions: skip the d x d covariances
        return frechet_distance_of_features(a, b)
    return fid_from_stats(FeatureStats.from_features(a), FeatureStats.from_features(b))


def frame_fid(features_a, features_b) -> float:
    """FID of the frames: the Frechet distance of ``[N * F, dim]`` from per-frame features ``[N, F, dim]``."""
    a, b = _check_pair(features_a, features_b)
    return _frechet(a.reshape(-1, a.shape[2]), b.reshape(-1, b.shape[2]))


def frame_kid(features_a, features_b, **options) -> dict:
    """KID (:func:`~diffusekit.metrics.kid.kid`, ``options`` passed on) of the frames, pooled as for
    :func:`frame_fid`."""
    a, b = _check_pair(features_a, features_b)
    return kid(a.reshape(-1, a.shape[2]), b.reshape(-1, b.shape[2]), **options)


def pooled_clip_features(features, differences: bool = True) -> np.ndarray:
    """Per-frame features ``[N, F, d]`` -> per-clip features ``[N, 3d]`` (``[N, 2d]`` without ``differences``):
    the time mean, the time standard deviation (population) and the mean absolute frame-to-frame difference
    ``mean_t |f_{t+1} - f_t|``.

    Why the difference block: mean and standard deviation do not change when a clip's frames are reordered,
    so they cannot tell a smooth clip from its frames shuffled (or from a flickering one); the mean absolute
    difference is the one order-sensitive statistic, the flicker of the clip in feature space. It is non-negative
    like the standard deviation and of the same scale, and it stays well conditioned for the Frechet distance:
    with fewer clips than dimensions (the usual case) the distance is computed from the centred features
    themselves (an SVD of an ``N x N`` matrix, :func:`frechet_distance_of_features`), which needs no inverse or
    Cholesky factor, so correlation between the blocks (exact for 2 frames: std = |difference| / 2) costs nothing.
    """
    x = _check_features(features, "features")
    if x.shape[1] < 2:
        raise ValueError(f"clips need at least 2 frames for time statistics, got {x.shape[1]}")
    parts = [x.mean(1), x.std(1)]
    if differences:
        parts.append(np.abs(np.diff(x, axis=1)).mean(1))
    return np.concatenate(parts, axis=1)


def fvd_proxy(features_a, features_b, differences: bool = True) -> float:
    """The Frechet distance of :func:`pooled_clip_features` (time mean, time std, mean |frame difference| of the
    Inception frame features: 6144-d per clip with the standard extractor, 4096-d without ``differences``).

    A stand-in for FVD that needs no I3D network: NOT comparable to published FVD numbers (which use I3D
    features of 16-frame 224x224 clips), only to itself, computed with the same extractor, frame count and
    ``differences`` setting."""
    a, b = _check_pair(features_a, features_b)
    return _frechet(pooled_clip_features(a, differences), pooled_clip_features(b, differences))


def flicker(clips: np.ndarray | Tensor) -> float:
    """Mean absolute frame difference ``|x_{t+1} - x_t|`` in [0, 1] units (uint8 / 255), averaged over pixels,
    channels, steps and clips. A moving object flickers too: compare generated clips against data clips."""
    x = as_uint8_clips(clips).astype(np.int16)
    return float(np.abs(np.diff(x, axis=1)).mean() / 255)


def flicker_ratio(generated: np.ndarray | Tensor, data: np.ndarray | Tensor) -> float:
    """``flicker(generated) / flicker(data)``: 1 when generated clips change between frames as much as data
    clips do; above 1, they flicker more."""
    reference = flicker(data)
    if reference == 0:
        raise ValueError("the data clips have no frame-to-frame change (flicker 0): the ratio is undefined")
    return flicker(generated) / reference


def video_report(generated_clips, reference_clips, *, extractor=None, classifier=None, digit_size: int | None = None,
                 requested=None, positions=None, batch_size: int = 50) -> dict:
    """Every metric that applies, as a JSON-serialisable dict.

    Always ``flicker`` (generated, reference, ratio). With ``extractor``: ``frame_fid``, ``frame_kid`` and
    ``fvd_proxy`` (with the extractor's description). With ``digit_size`` (moving digits, one per clip):
    ``motion`` (:func:`~diffusekit.metrics.motion.motion_smoothness` of both sets; ``positions``: ground-truth
    top-left positions ``[N, F, 2]`` of the reference clips) and, with ``classifier`` too, ``identity``
    (:func:`~diffusekit.metrics.motion.identity_agreement` of both sets, ``requested`` labels ``[N]`` scored
    for the generated set)."""
    generated, reference = as_uint8_clips(generated_clips), as_uint8_clips(reference_clips)
    report: dict = {"clips": {"generated": int(generated.shape[0]), "reference": int(reference.shape[0]),
                              "generated_frames": int(generated.shape[1]), "reference_frames": int(reference.shape[1])}}
    gen_flicker, ref_flicker = flicker(generated), flicker(reference)
    report["flicker"] = {"generated": gen_flicker, "reference": ref_flicker,
                         "ratio": gen_flicker / ref_flicker if ref_flicker > 0 else None}
    if extractor is not None:
        gen_features = clip_frame_features(extractor, generated, batch_size)
        ref_features = clip_frame_features(extractor, reference, batch_size)
        report["frame_fid"] = frame_fid(gen_features, ref_features)
        report["frame_kid"] = frame_kid(gen_features, ref_features)
        report["fvd_proxy"] = fvd_proxy(gen_features, ref_features)
        if hasattr(extractor, "describe"):
            report["extractor"] = extractor.describe()
    if digit_size is not None:
        report["motion"] = {"generated": motion_smoothness(generated),
                            "reference": motion_smoothness(reference, positions=positions)}
        if classifier is not None:
            report["identity"] = {
                "generated": identity_agreement(generated, classifier, digit_size, requested),
                "reference": identity_agreement(reference, classifier, digit_size)}
    return report
