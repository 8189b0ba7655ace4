"""A trained model from a checkpoint (or a run directory's newest valid one), rebuilt exactly as it was trained.

:func:`load_model` reads the stored config and data description, builds the network with
:mod:`diffusekit.models.build` and loads the chosen EMA (or the raw weights) into it; :func:`load_guide`
loads an autoguidance model and checks that it draws the same images as the main one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, from_dict
from ..denoiser import Denoiser
from ..errors import UsageError
from ..guidance import GuidanceSettings
from ..learned_schedule import LearnedVP
from .build import build_denoiser, build_network, build_schedule, network_conditioning
from .checkpoint import CheckpointError, latest_valid, load_checkpoint
from .execution import ExecutedNetwork, Execution

__all__ = ["LoadedModel", "load_model", "load_guide", "trained_schedule", "resolve_checkpoint", "select_weights"]


def select_weights(checkpoint: Path, name: str, model_state: dict, ema_states: dict) -> dict:
    """The weights named ``name`` in a checkpoint: one of its EMAs, or ``"model"`` for the raw weights."""
    if name == "model":
        return model_state
    if name in ema_states:
        return ema_states[name]
    raise UsageError(f"{checkpoint} has no EMA named {name!r}; it has {', '.join(ema_states) or 'none'} "
                     "(or 'model' for the raw weights)")


@dataclass
class LoadedModel:
    denoiser: Denoiser
    config: Config
    image_shape: tuple[int, ...]  # (C, H, W), or (C, F, H, W) for a video model
    num_classes: int
    class_names: list[str]
    cur_nimg: int
    checkpoint: Path
    weights: str  # the EMA name or "model"
    latent: dict | None = None  # a latent model: its autoencoder (path, weights, digest) and the decoded image shape
    decode: Callable | None = None  # a latent model: sampled latents -> images (diffusekit.generate.load_model sets it)

    @property
    def is_video(self) -> bool:
        """A video model: it draws clips ``image_shape = (C, F, H, W)``."""
        return len(self.image_shape) == 4

    def describe_kind(self) -> str:
        """What it draws, for messages: e.g. "a video model (clips of 8 frames of 1x32x32)"."""
        if self.is_video:
            channels, frames, height, width = self.image_shape
            return f"a video model (clips of {frames} frames of {channels}x{height}x{width})"
        return f"an image model ({'x'.join(map(str, self.output_shape))} images)"

    def require_images(self, what: str) -> None:
        """Refuse a video model where only images can be made (``what``: the command or option)."""
        if self.is_video:
            raise UsageError(f"{what} makes images, but {self.checkpoint} is {self.describe_kind()}: sample it with "
                             "`diffusekit sample` (.gif/.mp4/.npz/.png outputs)")

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of the images it makes: ``image_shape`` (what the network sees) or, for a latent model, the
        decoded shape."""
        return tuple(self.latent["image_shape"]) if self.latent else self.image_shape


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the newest valid checkpoint of a run directory."""
    path = Path(path)
    if (path / "meta.json").exists():
        return path
    for directory in (path / "checkpoints", path):
        if directory.is_dir():
            found = latest_valid(directory)
            if found is not None:
                return found
    raise CheckpointError(f"{path} is neither a checkpoint nor a run directory with a valid checkpoint")


def load_model(path: str | Path, ema: str | None = None, device: str | torch.device = "cpu",
               execution: Execution | None = None) -> LoadedModel:
    """``ema``: an EMA name, ``"model"`` for the raw weights, or None for the config's ``sample.ema`` (else the
    first EMA). ``execution``: how the network runs (precision, channels-last, compile; default float32 eager)."""
    checkpoint = resolve_checkpoint(path)
    cur_nimg, model_state, ema_states, state = load_checkpoint(checkpoint)
    config = from_dict(Config, state["config"])
    info = state["data_info"]
    if config.network.kind == "autoencoder":
        raise UsageError(f"{checkpoint} is an autoencoder, not a diffusion model: use it as latent.autoencoder of a "
                         "latent diffusion run (or diffusekit.latent.load_autoencoder)")
    # the default is the config's first EMA, as in training; the checkpoint stores them sorted by name
    configured = [n for n in config.ema.half_lives if n in ema_states]
    name = ema or config.sample.ema or next(iter(configured or ema_states), "model")
    weights = select_weights(checkpoint, name, model_state, ema_states)
    image_shape = tuple(info["image_shape"])
    network = build_network(config.network, image_shape, info["num_classes"],
                            **network_conditioning(config, image_shape))
    try:
        network.load_state_dict(weights)
    except RuntimeError as e:  # missing, unexpected or misshapen tensors: the stored config does not build this net
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CheckpointError(f"{checkpoint}: its {name} weights do not fit the network its config describes "
                              f"({first}); the checkpoint was written by another version or edited: sample it with "
                              "the code and config of the run that wrote it") from None
    network.to(device, torch.float32).eval().requires_grad_(False)
    if execution is not None and execution != Execution():
        network = ExecutedNetwork(network, execution, device)
    schedule = trained_schedule(config, state, checkpoint)
    if isinstance(schedule, LearnedVP):  # its parameters on the network's device
        schedule.to(device)
    return LoadedModel(build_denoiser(config, network, schedule), config, tuple(info["image_shape"]),
                       info["num_classes"], list(info["class_names"]), cur_nimg, checkpoint, name, info.get("latent"))


def trained_schedule(config: Config, state: dict, checkpoint: Path):
    """The run's schedule: a learned one (``objective.schedule: learned``) with its trained parameters, stored
    in the checkpoint's training state under ``schedule``."""
    schedule = build_schedule(config)
    if not isinstance(schedule, LearnedVP):
        return schedule
    if "schedule" not in state:
        raise CheckpointError(f"{checkpoint} was trained with a learned schedule but holds no schedule parameters "
                              "(written by another version)")
    try:
        schedule.load_state_dict(state["schedule"])
    except ValueError as e:
        raise CheckpointError(f"{checkpoint}: {e}") from None
    return schedule


def load_guide(settings: GuidanceSettings, image_shape: tuple[int, int, int], num_classes: int,
               device: str | torch.device = "cpu") -> Denoiser | None:
    """The autoguidance model named by ``settings.autoguide`` (None when there is none), checked to draw the
    same images under the same conditions as the main model."""
    if settings.autoguide is None:
        return None
    guide = load_model(settings.autoguide, ema=settings.autoguide_ema, device=device)
    if guide.image_shape != tuple(image_shape) or guide.num_classes != num_classes:
        raise UsageError(f"the autoguidance model {guide.checkpoint} draws {guide.image_shape} images with "
                         f"{guide.num_classes} classes; the main model draws {tuple(image_shape)} with {num_classes}")
    return guide.denoiser
