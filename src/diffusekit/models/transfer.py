"""One run's weights as the start of another (fine-tuning): the source checkpoint, what transfers, and the report.

A new run may differ from the run it starts from in its dataset, number of classes, resolution, conditioning and
recipe. :func:`read_source` finds the checkpoint (a checkpoint directory, or a run directory's newest valid one) and
:func:`check_transfer` refuses a source of another kind by name: an autoencoder for a diffusion model (or the reverse),
a video model for an image network, another network family (U-Net weights for a DiT), a latent model for a pixel
run. :func:`transfer_weights` then copies every tensor whose name and shape the new network shares with the source
and leaves the rest as the new network initialised them; :class:`TransferReport` lists those: ``missing`` (new
here), ``unexpected`` (in the source, unused here) and ``mismatched`` (same name, another shape).

Matching is by name and shape only, so a tensor whose meaning depends on the data is copied when its shape agrees:
a class-embedding table of the same size is taken over row for row even if the classes are other ones (the usual
practice of fine-tuning; the report's ``notes`` say when the class names differ). A table of another size is
initialised fresh (no partial copy of rows).

Convolutions do not depend on the resolution, so a U-Net changes resolution freely; a learned relative position
bias (``attention_position: relative``, a DiT's ``position: relative``) has one entry per offset and is
initialised fresh at another size. A DiT's absolute 2-D sin-cos table is not a weight: it is rebuilt for the new
token grid (the notes say so), positions the source never saw included.

An image U-Net may start a video U-Net: :class:`~diffusekit.networks.video.VideoUNet` holds a U-Net as ``unet``
and its temporal attention starts as the identity, so the video network first draws each frame as the image
network would (the temporal layers are reported as new).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._files import atomic_write
from ..config import Config, from_dict
from ..errors import BadFileError, MissingFileError, UsageError
from .checkpoint import latest_valid, load_checkpoint
from .load import select_weights

__all__ = ["TransferSource", "TransferReport", "read_source", "check_transfer", "transfer_weights",
           "source_optimizer_state"]


@dataclass
class TransferSource:
    """A checkpoint read to initialise another run: its config, data description, the chosen weights and the
    optimizer state."""

    checkpoint: Path
    cur_nimg: int
    config: Config
    info: dict  # the checkpoint's data_info: image_shape, num_classes, class_names (and latent)
    weights_name: str  # an EMA name or "model"
    weights: dict[str, torch.Tensor]
    optimizer: dict  # the optimizer's state_dict at that checkpoint

    @property
    def kind(self) -> str:
        return self.config.network.kind

    def describe(self) -> str:
        """E.g. ``a unet on 1x16x16 images of mnist (10 classes)``, for messages."""
        shape = "x".join(map(str, self.info["image_shape"]))
        items = "clips" if len(self.info["image_shape"]) == 4 else "images"
        latent = " (latents)" if self.info.get("latent") else ""
        return (f"a {self.kind} on {shape} {items}{latent} of {self.config.data.name} "
                f"({self.info['num_classes']} classes)")


@dataclass
class TransferReport:
    """What the new network took from the source. Tensor names are the new network's (``unet.``-prefixed for a
    video U-Net started from an image U-Net); ``unexpected`` uses the same names for the source's unused tensors."""

    source: str  # the checkpoint directory
    source_images: int  # the source's training images
    source_network: str
    weights: str  # the EMA name or "model"
    copied: int  # tensors copied
    total: int  # tensors of the new network (its state dict)
    missing: list[str] = field(default_factory=list)  # new here: initialised as the new network initialises them
    unexpected: list[str] = field(default_factory=list)  # in the source, not used here
    mismatched: list[dict] = field(default_factory=list)  # {"name", "source": shape, "target": shape}: fresh here
    notes: list[str] = field(default_factory=list)  # what else differs (resolution, classes, positions)
    optimizer: str = "fresh"  # "fresh" or "source": the optimizer state (moments, step counts)

    @property
    def complete(self) -> bool:
        """Every tensor of the new network came from the source and every source tensor was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        """The report as JSON at ``path`` (atomically)."""
        text = json.dumps(self.to_dict(), indent=1)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def summary(self, shown: int = 4) -> str:
        """A few lines for the log: the counts and the first ``shown`` names of each list."""
        def names(items: list[str]) -> str:
            more = f", ... ({len(items) - shown} more)" if len(items) > shown else ""
            return ", ".join(items[:shown]) + more

        lines = [f"initialised from {self.source} ({self.weights} weights, {self.source_images:,} training images): "
                 f"{self.copied} of {self.total} tensors copied; optimizer state {self.optimizer}"]
        if self.missing:
            lines.append(f"  new here, initialised fresh ({len(self.missing)}): {names(self.missing)}")
        if self.mismatched:
            shapes = [f"{m['name']} {m['source']} -> {m['target']}" for m in self.mismatched]
            lines.append(f"  other shape, initialised fresh ({len(shapes)}): {names(shapes)}")
        if self.unexpected:
            lines.append(f"  in the source, unused ({len(self.unexpected)}): {names(self.unexpected)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def _checkpoint_of(path: Path) -> Path:
    """``path`` itself (a checkpoint directory) or the newest valid checkpoint of the run directory ``path``."""
    if not path.exists():
        raise MissingFileError(f"run.init_from {path}: no such run directory or checkpoint")
    if (path / "meta.json").is_file():
        return path
    if path.is_dir() and ((path / "checkpoints").is_dir() or (path / "config.yaml").is_file()):
        found = latest_valid(path / "checkpoints")
        if found is None:
            raise BadFileError(f"run.init_from {path} is a run directory without a valid checkpoint: nothing to "
                               "initialise from (train it first, or name a checkpoint)")
        return found
    raise BadFileError(f"run.init_from {path} is neither a run directory (config.yaml, checkpoints/) nor a "
                       "checkpoint (meta.json)")


def read_source(path: str | Path, weights: str | None = None) -> TransferSource:
    """The checkpoint at ``path`` (a checkpoint directory or a run directory) with its ``weights``: an EMA name,
    ``"model"`` for the raw weights, or None for the EMA the source samples with (``sample.ema``, else its first)."""
    checkpoint = _checkpoint_of(Path(path))
    cur_nimg, model_state, ema_states, state = load_checkpoint(checkpoint)
    try:
        config = from_dict(Config, state["config"])
        info = dict(state["data_info"])
        optimizer = state["optimizer"]
    except (KeyError, TypeError, ValueError) as e:
        raise BadFileError(f"run.init_from {checkpoint}: its training state lacks the config or data description "
                           f"({e}); it was not written by diffusekit train") from None
    configured = [n for n in config.ema.half_lives if n in ema_states]
    name = weights or config.sample.ema or next(iter(configured or ema_states), "model")
    try:
        chosen = select_weights(checkpoint, name, model_state, ema_states)
    except UsageError as e:
        raise UsageError(f"run.init_weights: {e}") from None
    return TransferSource(checkpoint, int(cur_nimg), config, info, name, chosen, optimizer)


def check_transfer(source: TransferSource, config: Config, info: dict) -> str:
    """Refuse a source of another kind than the run ``config`` trains on ``info`` (its data_info); returns the
    prefix that the source's tensor names take in the new network (``"unet."`` for an image U-Net starting a video
    U-Net, else ``""``)."""
    ckpt, kind = source.checkpoint, config.network.kind
    if (source.kind == "autoencoder") != (kind == "autoencoder"):
        if source.kind == "autoencoder":
            raise BadFileError(f"run.init_from {ckpt} is an autoencoder, this run trains a diffusion model ({kind}): "
                               "an autoencoder serves a diffusion run as latent.autoencoder")
        raise BadFileError(f"run.init_from {ckpt} is a diffusion model ({source.kind}), this run trains an "
                           "autoencoder: initialise it from an autoencoder run")
    source_video, video = len(source.info["image_shape"]) == 4, len(info["image_shape"]) == 4
    if source_video and not video:
        raise BadFileError(f"run.init_from {ckpt} is a video model ({source.describe()}), this run trains an image "
                           f"model ({kind}): a video model's weights do not start an image network")
    if source.kind != kind and not (source.kind == "unet" and kind == "video_unet"):
        raise BadFileError(f"run.init_from {ckpt} holds a {source.kind} network, this run builds a {kind}: weights "
                           "transfer only between networks of one kind (or from an image unet into a video_unet)")
    if bool(source.info.get("latent")) != bool(info.get("latent")):
        what = "latents of an autoencoder" if source.info.get("latent") else "pixels"
        here = "latents of an autoencoder" if info.get("latent") else "pixels"
        raise BadFileError(f"run.init_from {ckpt} was trained on {what}, this run trains on {here}: the network "
                           "would see inputs of another meaning")
    return "unet." if source.kind == "unet" and kind == "video_unet" else ""


def _notes(source: TransferSource, config: Config, info: dict) -> list[str]:
    notes = []
    old, new = source.info["image_shape"], info["image_shape"]
    if old[-1] != new[-1]:
        notes.append(f"resolution {old[-1]} in the source, {new[-1]} here")
        if config.network.kind == "dit" and config.network.options.get("position", "absolute") == "absolute":
            notes.append("the DiT's 2-D sin-cos position table is fixed, not a weight: rebuilt for the new token grid")
    if source.info["num_classes"] != info["num_classes"]:
        notes.append(f"{source.info['num_classes']} classes in the source, {info['num_classes']} here")
    elif info["num_classes"] and list(source.info.get("class_names", [])) != list(info.get("class_names", [])):
        notes.append("the class-embedding rows were copied in order, but the classes are other ones "
                     f"({', '.join(source.info['class_names'][:3])}, ... -> {', '.join(info['class_names'][:3])}, ...)")
    old_latent, new_latent = source.info.get("latent"), info.get("latent")
    if old_latent and new_latent and old_latent.get("digest") != new_latent.get("digest"):
        notes.append("the source was trained on the latents of another autoencoder")
    return notes


@torch.no_grad()
def transfer_weights(network: nn.Module, source: TransferSource, config: Config, info: dict) -> TransferReport:
    """Copy into ``network`` (built by ``config`` for the data ``info`` describes) every source tensor whose name
    and shape it shares; the rest keep ``network``'s own initialisation. Refuses a source of another kind
    (:func:`check_transfer`)."""
    prefix = check_transfer(source, config, info)
    incoming = {prefix + name: tensor for name, tensor in source.weights.items()}
    target = network.state_dict()
    merged, missing, mismatched = {}, [], []
    for name, tensor in target.items():
        if name not in incoming:
            missing.append(name)
        elif tuple(incoming[name].shape) != tuple(tensor.shape):
            mismatched.append({"name": name, "source": list(incoming[name].shape), "target": list(tensor.shape)})
        else:
            merged[name] = incoming[name]
    network.load_state_dict(merged, strict=False)
    unexpected = [name for name in incoming if name not in target]
    return TransferReport(str(source.checkpoint), source.cur_nimg, source.describe(), source.weights_name,
                          copied=len(merged), total=len(target), missing=missing, unexpected=unexpected,
                          mismatched=mismatched, notes=_notes(source, config, info))


def source_optimizer_state(network: nn.Module, source: TransferSource, report: TransferReport,
                           fresh: dict) -> dict:
    """The source's optimizer state for ``network``'s optimizer, whose own (fresh) ``state_dict`` is ``fresh``;
    the new run keeps its hyperparameters (learning rate, betas), only the per-parameter state (Adam's moments
    and step counts) comes over. Allowed only when every parameter of ``network`` took the source's tensor of the
    same shape, in the same order; else a :class:`UsageError` naming the first that did not."""
    need = "--init-optimizer (run.init_optimizer) needs every parameter to match the source's"
    mismatched = {m["name"]: m for m in report.mismatched}
    names = [name for name, _ in network.named_parameters()]
    for name in names:
        if name in mismatched:
            m = mismatched[name]
            raise UsageError(f"{need}: {name} is {m['source']} in the source, {m['target']} here")
        if name in report.missing:
            raise UsageError(f"{need}: {name} is new here (not in the source)")
    state, groups = source.optimizer.get("state", {}), source.optimizer.get("param_groups", [])
    count = sum(len(group["params"]) for group in groups)
    if count != len(names):
        extra = f" ({report.unexpected[0]} of the source is not used here)" if report.unexpected else ""
        raise UsageError(f"{need}: the source's optimizer holds {count} parameters, this network has "
                         f"{len(names)}{extra}")
    for index, (name, parameter) in enumerate(network.named_parameters()):
        moment = state.get(index, {}).get("exp_avg")
        if moment is not None and tuple(moment.shape) != tuple(parameter.shape):
            raise UsageError(f"{need}: the source's optimizer state of parameter {index} has shape "
                             f"{list(moment.shape)}, {name} here {list(parameter.shape)}")
    return {"state": state, "param_groups": fresh["param_groups"]}
