"""Objects from a :class:`~diffusekit.config.Config`: the network, the denoiser around it, the loss.

Shared by the trainer, the sampling command and evaluation, so a checkpoint is always rebuilt exactly
as it was trained. ``image_shape`` is (channels, resolution, resolution) of the training data.
"""

from __future__ import annotations

from torch import nn

from .. import parameterizations, schedules, time_sampling, weighting
from ..cascade import CascadeSettings
from ..config import Config, ConfigError, NetworkConfig
from ..data.augment import AUGMENT_DIM, AugmentSettings
from ..denoiser import Denoiser
from ..loss import DiffusionLoss
from ..networks.autoencoder import Autoencoder
from ..networks.dit import DiT
from ..networks.unet import UNet
from ..networks.video import VideoUNet

__all__ = ["TEXT_DIM", "build_network", "network_conditioning", "cascade_settings", "augment_settings",
           "build_schedule", "build_denoiser", "build_loss"]

TEXT_DIM = 384  # all-MiniLM-L6-v2's width (diffusekit.text.TextEncoder)


def augment_settings(config: Config) -> AugmentSettings | None:
    """EDM's non-leaking augmentation of the training images, when ``data.augment`` > 0."""
    if not config.data.augment:
        return None
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in config.data.augment_options.items()}
    return AugmentSettings(p=config.data.augment, **options)


def cascade_settings(config: Config) -> CascadeSettings | None:
    """The super-resolution stage's conditioning, when ``cascade.low_resolution`` is set."""
    c = config.cascade
    if c.low_resolution is None:
        return None
    return CascadeSettings(c.low_resolution, c.noise_aug, c.aug_max, c.sample_snr)


def network_conditioning(config: Config, image_shape: tuple[int, ...]) -> dict:
    """The network options the data side implies: augmentation labels, a cascade's image and level inputs, and
    the text width of a caption-conditioned run (``data.captions``)."""
    options: dict = {}
    if config.video.context_frames:
        options["frame_conditioning"] = True
    if config.data.captions:
        options["text_dim"] = TEXT_DIM
    if augment_settings(config) is not None:
        options["augment_dim"] = AUGMENT_DIM
    cascade = cascade_settings(config)
    if cascade is not None:
        if image_shape[-1] % cascade.low_resolution or image_shape[-1] == cascade.low_resolution:
            raise ConfigError(f"cascade.low_resolution {cascade.low_resolution} must divide the stage's "
                              f"resolution {image_shape[-1]} (and be smaller)")
        options["cond_channels"] = image_shape[0]
        options["noise_aug"] = cascade.noise_aug
    return options


def build_network(network: NetworkConfig, image_shape: tuple[int, ...], num_classes: int,
                  **conditioning) -> nn.Module:
    """``conditioning``: :func:`network_conditioning`'s options (augment_dim, cond_channels, noise_aug).
    ``image_shape``: ``(C, H, W)``, or ``(C, F, H, W)`` for a video network (``network.kind: video_unet``)."""
    video = network.kind == "video_unet"
    if video != (len(image_shape) == 4):
        what = "clips (C, F, H, W)" if len(image_shape) == 4 else "images (C, H, W)"
        raise ConfigError(f"network.kind {network.kind} cannot be built for {what} of shape {tuple(image_shape)}: "
                          "video_unet takes clips (set video.frames), the image networks take images")
    channels, *frames, height, width = image_shape
    if height != width:
        raise ValueError(f"images must be square, got {height}x{width}")
    # YAML gives lists; the networks' layout arguments are tuples
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in network.options.items()}
    common = {"img_resolution": height, "in_channels": channels, "num_classes": num_classes, **conditioning,
              **options}
    try:
        if network.kind == "autoencoder":  # images in, the same images out: no classes, no conditioning
            if num_classes or conditioning:
                raise ConfigError("network.kind autoencoder takes no class labels or conditioning inputs")
            model = Autoencoder.from_preset(network.preset, in_channels=channels, out_channels=channels, **options)
            if height % model.downsample_factor:
                raise ConfigError(f"network: {height}x{width} images do not divide by the autoencoder's downsampling "
                                  f"factor {model.downsample_factor}; set data.resolution to a multiple of it")
            return model
        if network.kind == "unet":
            common.setdefault("out_channels", channels)
            return UNet.from_preset(network.preset, **common)
        if video:
            common.setdefault("out_channels", channels)
            return VideoUNet.from_preset(network.preset, frames=frames[0], **common)
        return DiT.from_name(network.preset, **common)
    except TypeError as e:  # an option the network does not take
        raise ConfigError(f"network.options: {e}") from None
    except ValueError as e:
        shape = "x".join(map(str, image_shape))
        raise ConfigError(f"network ({network.kind} {network.preset!r} for {shape} {'clips' if video else 'images'}): "
                          f"{e}") from None


def build_schedule(config: Config) -> schedules.Schedule:
    """The configured schedule. A learned one (``objective.schedule: learned``) is a fresh initialisation: a run
    builds it once and hands it to both :func:`build_denoiser` and :func:`build_loss`, and a checkpoint's trained
    one is loaded into it (``training_state["schedule"]``)."""
    o = config.objective
    return schedules.get(o.schedule, **o.schedule_options)


def build_denoiser(config: Config, network: nn.Module, schedule: schedules.Schedule | None = None) -> Denoiser:
    """``schedule``: the run's own (a learned schedule's trained state); None builds the configured one."""
    o = config.objective
    return Denoiser(network, schedule if schedule is not None else build_schedule(config),
                    parameterizations.get(o.parameterization, **o.parameterization_options),
                    sigma_data=o.sigma_data, noise_conditioning=o.noise_conditioning)


def build_loss(config: Config, schedule: schedules.Schedule | None = None) -> DiffusionLoss:
    """``schedule``: as in :func:`build_denoiser`."""
    o = config.objective
    return DiffusionLoss(schedule if schedule is not None else build_schedule(config),
                         parameterizations.get(o.parameterization, **o.parameterization_options),
                         time_sampling.get(o.time_distribution, o.time_mode, **o.time_options),
                         weighting.get(o.weighting, **o.weighting_options), o.input_perturbation)
