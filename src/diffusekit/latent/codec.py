"""A frozen autoencoder as the data space of a diffusion model: images -> latents -> images.

:func:`load_autoencoder` accepts one of our autoencoder runs or checkpoints (``network.kind: autoencoder``) or
a diffusers-format ``AutoencoderKL`` directory (``config.json`` + ``diffusion_pytorch_model.safetensors``,
read into our own modules: diffusers is not imported). Either way it returns a :class:`LatentAutoencoder`:

- ``encode(x) -> z``: the latent distribution's mean, unscaled, for ``x`` in [-1, 1] NCHW;
- ``decode(z) -> x``: unscaled latents to images;
- ``normalize(z) = (z - shift_factor) * scaling_factor`` and its inverse: the latents the diffusion model sees
  (diffusers' convention; LDM's ``scale_factor`` is the case shift 0). Both factors are per channel; for
  our autoencoders they are estimated from data and stored with the weights, for diffusers ones they come from
  the config.
- ``digest``: the SHA-256 of the weights and factors: the latent cache's key, and the check that a latent
  model is decoded by the autoencoder it was trained with.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from ..config import Config, from_dict
from ..errors import CheckpointError, UsageError
from ..models import build_network, load_checkpoint, resolve_checkpoint, select_weights
from ..networks.autoencoder import Autoencoder
from ..networks.autoencoder_diffusers import load_diffusers_autoencoder

__all__ = ["LatentAutoencoder", "load_autoencoder", "is_diffusers_autoencoder", "NotAnAutoencoder"]


class NotAnAutoencoder(CheckpointError):
    """A path given as an autoencoder holds something else (a diffusion checkpoint, an unrelated folder)."""


def is_diffusers_autoencoder(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "AutoencoderKL"
    except (OSError, ValueError):
        return False


class LatentAutoencoder:
    """A frozen :class:`~diffusekit.networks.autoencoder.Autoencoder` in evaluation mode, without gradients."""

    def __init__(self, module: Autoencoder, source: str, weights: str, device: str | torch.device = "cpu",
                 image_shape: tuple[int, int, int] | None = None):
        self.module = module.to(device, torch.float32).eval().requires_grad_(False)
        self.source, self.weights, self.device = source, weights, torch.device(device)
        self.image_shape = image_shape  # what it was trained on (None: unknown, a diffusers autoencoder)

    # -- the scaling the diffusion model sees ----------------------------------------------------------------
    @property
    def scaling_factor(self) -> Tensor:
        """[C]: the diffusion model's latents are ``(z - shift_factor) * scaling_factor``."""
        return self.module.latent_scale

    @property
    def shift_factor(self) -> Tensor:
        return self.module.latent_shift

    @property
    def latent_channels(self) -> int:
        return self.module.latent_channels

    @property
    def downsample_factor(self) -> int:
        return self.module.downsample_factor

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(self.module.latent_shape(tuple(image_shape)))

    def normalize(self, z: Tensor) -> Tensor:
        return self.module.normalize_latent(z)

    def denormalize(self, z: Tensor) -> Tensor:
        return self.module.denormalize_latent(z)

    # -- images <-> latents ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean (unscaled) of images ``x`` in [-1, 1], NCHW; on the autoencoder's device."""
        return self.module.encode(x.to(self.device, torch.float32)).mode()

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents -> images (about [-1, 1]). The weights are frozen, so this records a graph only for a
        ``z`` that requires gradients (an inverse-problem solver differentiating through the decoder)."""
        return self.module.decode(z.to(self.device, torch.float32))

    def decode_normalized(self, z: Tensor) -> Tensor:
        """What a latent diffusion model samples -> images: undo the scaling, then decode."""
        return self.decode(self.denormalize(z.to(self.device, torch.float32)))

    @cached_property
    def digest(self) -> str:
        """SHA-256 over the weights and buffers (latent factors included), in name order."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.module.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"autoencoder": self.source, "weights": self.weights, "digest": self.digest,
                "downsample_factor": self.downsample_factor, "latent_channels": self.latent_channels,
                "scaling_factor": [round(float(v), 6) for v in self.scaling_factor],
                "shift_factor": [round(float(v), 6) for v in self.shift_factor]}


def load_autoencoder(path: str | Path, ema: str | None = None, device: str | torch.device = "cpu") -> LatentAutoencoder:
    """Our autoencoder run / checkpoint (``ema``: an EMA name, ``"model"``, or None for its first EMA) or a
    diffusers ``AutoencoderKL`` directory (``ema`` must be None)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"no autoencoder at {path}: give an autoencoder run directory or checkpoint "
                         "(diffusekit train --preset ...-ae) or a diffusers AutoencoderKL directory")
    if is_diffusers_autoencoder(path):
        if ema is not None:
            raise UsageError(f"{path} is a diffusers autoencoder: it has no EMAs (latent.ema must be null)")
        return LatentAutoencoder(load_diffusers_autoencoder(path), str(path.resolve()), "diffusers", device)
    try:
        checkpoint = resolve_checkpoint(path)
    except CheckpointError:
        raise NotAnAutoencoder(f"{path} is neither a diffusers AutoencoderKL directory (config.json with "
                               "_class_name AutoencoderKL) nor an autoencoder run or checkpoint") from None
    _, model_state, ema_states, state = load_checkpoint(checkpoint)
    config = from_dict(Config, state["config"])
    info = state["data_info"]
    if config.network.kind != "autoencoder":
        raise NotAnAutoencoder(f"{checkpoint} is a {config.network.kind} diffusion model "
                               f"({tuple(info['image_shape'])} images), not an autoencoder")
    name = ema or next(iter([n for n in config.ema.half_lives if n in ema_states] or ema_states), "model")
    weights = select_weights(checkpoint, name, model_state, ema_states)
    module = build_network(config.network, tuple(info["image_shape"]), 0)
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint}: its {name} weights do not fit the autoencoder its config describes: "
                              f"{str(e).splitlines()[0]}") from None
    return LatentAutoencoder(module, str(checkpoint.resolve()), name, device, tuple(info["image_shape"]))
