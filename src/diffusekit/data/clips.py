"""Short video clips held in memory: :class:`ClipArrays`, the clip analogue of :class:`ImageArrays`.

A clip is ``F`` frames of ``H x W`` pixels with ``C`` channels, stored as uint8 ``[F, H, W, C]``; a dataset holds
``N`` of them, an int64 label each, and optional per-clip ground truth (``extras``: e.g. the digit positions of
Moving MNIST, the simulation a Cahn-Hilliard clip was cut from). :meth:`ClipArrays.tensors` gives the layout that
3D convolutions take, ``[B, C, F, H, W]``, scaled to [-1, 1] as images are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from .builtin import ImageArrays
from .transform import to_channels

__all__ = ["ClipArrays", "clip_windows"]


@dataclass(frozen=True)
class ClipArrays:
    clips: np.ndarray  # uint8 [N, F, H, W, C]
    labels: np.ndarray  # int64 [N]
    num_classes: int
    class_names: tuple[str, ...]
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per-clip ground truth, each [N, ...]

    def __post_init__(self):
        if self.clips.ndim != 5:
            raise ValueError(f"clips must be [N, F, H, W, C], got shape {self.clips.shape}")
        if self.labels.shape != (len(self.clips),):
            raise ValueError(f"{len(self.clips)} clips but labels of shape {self.labels.shape}")
        for key, value in self.extras.items():
            if len(value) != len(self.clips):
                raise ValueError(f"extras[{key!r}] has {len(value)} rows for {len(self.clips)} clips")

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def frames(self) -> int:
        """F, the number of frames of every clip."""
        return int(self.clips.shape[1])

    @property
    def item_shape(self) -> tuple[int, int, int, int]:
        """(C, F, H, W) of one item as :meth:`tensors` gives it."""
        _, frames, height, width, channels = self.clips.shape
        return int(channels), int(frames), int(height), int(width)

    def tensors(self, indices=None) -> tuple[Tensor, Tensor]:
        """Clips as float ``[B, C, F, H, W]`` in [-1, 1] (x / 127.5 - 1) and int64 labels ``[B]``, for the given
        indices (all by default)."""
        clips = self.clips if indices is None else self.clips[np.asarray(indices)]
        labels = self.labels if indices is None else self.labels[np.asarray(indices)]
        clips = np.ascontiguousarray(clips)
        if not clips.flags.writeable:
            clips = clips.copy()
        x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def frames_as_images(self, limit: int | None = None) -> ImageArrays:
        """Every frame as an image, uint8 ``[N * F, H, W, C]`` in clip-major order, each with its clip's label;
        ``limit``: only the first ``limit`` frames (e.g. for an image metric that needs a sample)."""
        _, frames, height, width, channels = self.clips.shape
        images = self.clips.reshape(-1, height, width, channels)
        labels = np.repeat(self.labels, frames)
        if limit is not None:
            if limit < 0:
                raise UsageError(f"limit must be non-negative, got {limit}")
            images, labels = images[:limit], labels[:limit]
        return ImageArrays(images, labels, self.num_classes, self.class_names)

    def subset(self, indices) -> ClipArrays:
        """The clips at ``indices`` (with their labels and extras), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return ClipArrays(self.clips[indices], self.labels[indices], self.num_classes, self.class_names,
                          {key: value[indices] for key, value in self.extras.items()})

    def with_channels(self, channels: int) -> ClipArrays:
        """The same clips with 1 (ITU-R 601-2 luma) or 3 channels (grey repeated); see :func:`to_channels`."""
        n, frames, height, width, _ = self.clips.shape
        flat = to_channels(self.clips.reshape(n * frames, height, width, -1), channels)
        return ClipArrays(flat.reshape(n, frames, height, width, channels), self.labels, self.num_classes,
                          self.class_names, self.extras)


def clip_windows(length: int, frames: int, frame_step: int = 1, stride: int | None = None) -> np.ndarray:
    """Start indices of the clips cut from a sequence of ``length`` frames: a clip takes ``frames`` frames
    ``frame_step`` apart (spanning ``(frames - 1) * frame_step + 1``), and clips start every ``stride`` frames
    (default: the span, so clips do not overlap). Empty when the sequence is shorter than one span."""
    if frames < 1:
        raise UsageError(f"frames must be at least 1, got {frames}")
    if frame_step < 1:
        raise UsageError(f"frame_step must be at least 1, got {frame_step}")
    span = (frames - 1) * frame_step + 1
    stride = span if stride is None else stride
    if stride < 1:
        raise UsageError(f"stride must be at least 1, got {stride}")
    return np.arange(0, max(length - span + 1, 0), stride, dtype=np.int64)
