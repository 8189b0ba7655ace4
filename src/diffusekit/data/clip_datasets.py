"""A clip dataset by name or path: Moving MNIST, Cahn-Hilliard, or a folder of videos."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .cahn_hilliard import cahn_hilliard
from .clips import ClipArrays
from .moving_mnist import moving_mnist
from .video_folder import VideoFolder, video_folder

__all__ = ["CLIP_DATASETS", "load_clips"]

CLIP_DATASETS = {"moving-mnist": moving_mnist, "cahn-hilliard": cahn_hilliard}


def load_clips(name_or_path: str | Path, split: str = "train", *, frames: int, resolution: int | None = None,
               channels: int | None = None, **options) -> ClipArrays | VideoFolder:
    """Clips of ``frames`` frames from a built-in clip dataset (:data:`CLIP_DATASETS`) or a folder of videos.

    Built-ins are made at ``resolution`` (None: their default, 64) and keep their one grey channel unless
    ``channels`` is 3; ``options`` go to the generator (e.g. ``count``, ``seed``, ``digits``, ``stride``). A name
    that is a built-in wins over a folder of that name: write ``./moving-mnist`` for the folder. A folder needs
    ``resolution`` (``channels`` defaults to 3), has only the ``train`` split and takes the options of
    :func:`~diffusekit.data.video_folder.video_folder` (``stride``, ``strict``, ``min_frames``).
    """
    if isinstance(name_or_path, str) and name_or_path in CLIP_DATASETS:
        if resolution is not None:
            options["resolution"] = resolution
        data = CLIP_DATASETS[name_or_path](split, frames=frames, **options)
        return data if channels is None else data.with_channels(channels)
    if not Path(name_or_path).expanduser().is_dir():
        raise UsageError(f"unknown clip dataset {str(name_or_path)!r}: neither a built-in clip dataset "
                         f"({', '.join(CLIP_DATASETS)}) nor an existing folder of videos")
    if resolution is None:
        raise UsageError(f"resolution is needed to load the video folder {name_or_path}: its frames are resized to it")
    if split != "train":
        raise UsageError(f"a video folder has only the 'train' split (all its clips), got {split!r}: "
                         "give the test videos as a folder of their own")
    return video_folder(name_or_path, frames, resolution, channels or 3, **options)
