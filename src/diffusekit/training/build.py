"""Objects from a :class:`~diffusekit.config.Config`: the network, the denoiser around it, the loss.

Shared by the trainer, the sampling command and evaluation, so a checkpoint is always rebuilt exactly
as it was trained. ``image_shape`` is (channels, resolution, resolution) of the training data.
"""

from __future__ import annotations

from torch import nn

from .. import parameterizations, schedules, time_sampling, weighting
from ..config import Config, DataConfig, NetworkConfig
from ..data import DATASETS, ImageArrays, open_dataset, resize_arrays
from ..denoiser import Denoiser
from ..loss import DiffusionLoss
from ..networks.dit import DiT
from ..networks.unet import UNet

__all__ = ["load_training_data", "build_network", "build_denoiser", "build_loss"]


def _first(arrays: ImageArrays, limit: int | None) -> ImageArrays:
    if limit is None:
        return arrays
    return ImageArrays(arrays.images[:limit], arrays.labels[:limit], arrays.num_classes, arrays.class_names)


def load_training_data(data: DataConfig) -> ImageArrays:
    """The configured dataset: the split, its first ``limit`` examples, at the configured size."""
    if data.limit is None or data.name not in DATASETS:  # folders are decoded straight to the size
        return _first(open_dataset(data.name, split=data.split, resolution=data.resolution, channels=data.channels,
                                   mode=data.resize), data.limit)
    arrays = _first(open_dataset(data.name, split=data.split), data.limit)  # subset first: less to resize
    return resize_arrays(arrays, data.resolution, data.channels, data.resize)


def build_network(network: NetworkConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"images must be square, got {height}x{width}")
    # YAML gives lists; the networks' layout arguments are tuples
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in network.options.items()}
    common = {"img_resolution": height, "in_channels": channels, "num_classes": num_classes, **options}
    if network.kind == "unet":
        common.setdefault("out_channels", channels)
        return UNet.from_preset(network.preset, **common)
    return DiT.from_name(network.preset, **common)


def build_denoiser(config: Config, network: nn.Module) -> Denoiser:
    o = config.objective
    return Denoiser(network, schedules.get(o.schedule, **o.schedule_options),
                    parameterizations.get(o.parameterization, **o.parameterization_options),
                    sigma_data=o.sigma_data, noise_conditioning=o.noise_conditioning)


def build_loss(config: Config) -> DiffusionLoss:
    o = config.objective
    return DiffusionLoss(schedules.get(o.schedule, **o.schedule_options),
                         parameterizations.get(o.parameterization, **o.parameterization_options),
                         time_sampling.get(o.time_distribution, o.time_mode, **o.time_options),
                         weighting.get(o.weighting, **o.weighting_options))
