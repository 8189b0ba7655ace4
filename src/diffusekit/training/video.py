"""What a video run adds to a training batch: image groups (joint video + image training) and context frames.

Joint training (Ho et al. 2022, "Video Diffusion Models", sec. 3): a fixed share ``video.image_fraction`` of
every micro-batch are groups of F independent images in place of clips. With ``video.mask_images`` the network
is told so (``cond["independent"]``) and masks their temporal attention to the identity, so each image is
denoised on its own; without it (the ablation) the group goes in as if it were a clip. For a class-conditional
run a group shows F images of the class of the clip it replaces (or the null class when the image source has
no labels).

Prediction (``video.context_frames`` = K > 0): on a share ``video.p_context`` of the clips the first k frames,
k uniform in 1..K, are given to the network (``cond["context"]`` holds them, zeros elsewhere, and
``cond["context_mask"]`` says which frames are given); the loss leaves those frames out.

Every draw comes from the trainer's generator, after the ones the loop makes, so a resumed run draws the same.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from ..config import Config, ConfigError
from ..data import CLIP_DATASETS, ClipArrays, ImageArrays, VideoFolder, load_clips, open_dataset

__all__ = ["VideoBatches", "load_training_clips", "load_image_pool"]


def load_training_clips(config: Config, split: str | None = None) -> ClipArrays | VideoFolder:
    """The configured clips (``data.name``: a built-in clip dataset or a folder of videos) of ``split`` (default
    ``data.split``), the first ``data.limit`` of them, at ``data.resolution`` / ``data.channels``; ``video.options``
    go to the dataset (e.g. moving MNIST's ``count`` and ``digit_size``, Cahn-Hilliard's ``frame_step``)."""
    d, v = config.data, config.video
    options = dict(v.options)
    if d.name not in CLIP_DATASETS:
        options.setdefault("strict", d.strict)
        if d.captions:  # a folder's labels then number its videos' distinct captions
            options["captions"] = True
    try:
        clips = load_clips(d.name, split or d.split, frames=v.frames, resolution=d.resolution, channels=d.channels,
                           **options)
    except TypeError as e:  # an option the dataset does not take
        raise ConfigError(f"video.options for {d.name}: {e}") from None
    if d.limit is not None:
        if not isinstance(clips, ClipArrays):
            raise ConfigError("data.limit selects clips of a built-in clip dataset; a video folder is used whole")
        clips = clips.subset(np.arange(min(d.limit, len(clips))))
    return clips


def load_image_pool(config: Config, clips: ClipArrays | VideoFolder) -> ImageArrays:
    """The images that make up image groups: ``video.image_data`` (a built-in image dataset or a folder of images,
    at the frame size, or a built-in clip dataset whose frames are taken one by one, with ``video.image_options``)
    or, by default, the frames of the training clips."""
    v = config.video
    channels, _, height, width = clips.item_shape
    if v.image_data is None:
        if not isinstance(clips, ClipArrays):
            raise ConfigError("video.image_fraction with a video folder needs video.image_data: a built-in image "
                              "dataset or a folder of images at the frames' size")
        return clips.frames_as_images()
    if v.image_data in CLIP_DATASETS:
        options = {**v.options, **v.image_options}
        source = load_clips(v.image_data, config.data.split, frames=1, resolution=height, channels=channels,
                            **options)
        return source.frames_as_images()
    images = open_dataset(v.image_data, split=config.data.split, resolution=height, channels=channels,
                          **v.image_options)
    if images.item_shape != (channels, height, width):
        raise ConfigError(f"video.image_data {v.image_data}: its images are {images.item_shape}, the clips' frames "
                          f"{(channels, height, width)}")
    return images


@dataclasses.dataclass
class VideoBatches:
    """Turns a micro-batch of clips into the video run's batch: ``(x0, cond additions, loss mask or None)``."""

    config: Config
    pool: ImageArrays | None  # image groups' source (None without joint training)
    conditional: bool  # labels go to the network
    null_label: int  # the null class (num_classes) for image groups without labels
    frame_conditioning: bool  # the network takes context / context_mask

    def __post_init__(self):
        self._by_class = None
        if self.pool is not None and self.conditional and self.pool.num_classes:
            self._by_class = [np.flatnonzero(self.pool.labels == c) for c in range(self.pool.num_classes)]

    def _image_groups(self, labels: Tensor, frames: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``len(labels)`` groups of ``frames`` images [G, C, F, H, W] and their labels."""
        count = len(labels)
        if self._by_class is not None:  # F images of each replaced clip's class
            picks = []
            for label in labels.tolist():
                members = self._by_class[label]
                if len(members) == 0:
                    raise ConfigError(f"video.image_data has no image of class {label}")
                draw = torch.randint(len(members), (frames,), generator=generator).numpy()
                picks.append(members[draw])
            index = np.concatenate(picks)
            group_labels = labels
        else:
            index = torch.randint(len(self.pool), (count * frames,), generator=generator).numpy()
            group_labels = torch.full_like(labels, self.null_label)
        images, _ = self.pool.tensors(index)  # [G*F, C, H, W]
        groups = images.reshape(count, frames, *images.shape[1:]).transpose(1, 2)
        return groups, group_labels

    def __call__(self, x0: Tensor, labels: Tensor, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor | None]:
        """``(x0, labels, cond, mask)`` for clips ``x0`` [B, C, F, H, W] and their ``labels`` [B]."""
        v = self.config.video
        batch, frames = x0.shape[0], x0.shape[2]
        cond: dict[str, Tensor] = {}
        images = round(v.image_fraction * batch) if self.pool is not None else 0
        independent = torch.zeros(batch, dtype=torch.bool)
        if images:  # the first rows become image groups
            x0, labels = x0.clone(), labels.clone()
            x0[:images], labels[:images] = self._image_groups(labels[:images], frames, generator)
            independent[:images] = True
        if v.mask_images and self.pool is not None:
            cond["independent"] = independent.to(x0.device)
        mask = None
        if self.frame_conditioning:
            chosen = (torch.rand(batch, generator=generator) < v.p_context) & ~independent
            k = torch.randint(1, v.context_frames + 1, (batch,), generator=generator)
            given = chosen[:, None] & (torch.arange(frames)[None, :] < k[:, None])
            given = given.to(x0.device)
            cond["context"] = x0 * given[:, None, :, None, None].to(x0.dtype)
            cond["context_mask"] = given
            mask = ~given[:, None, :, None, None]
        return x0, labels, cond, mask
