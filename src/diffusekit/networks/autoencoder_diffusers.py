"""Load a diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, as
written by ``save_pretrained``) into :class:`~diffusekit.networks.autoencoder.Autoencoder`, without importing
diffusers.

The parameter names already agree; what is translated here is the config, the latent normalisation and the
attention names of checkpoints converted from the original LDM code:

- ``scaling_factor`` and ``shift_factor`` (``None`` = 0) become ``latent_scale`` and ``latent_shift``, so the
  diffusion model sees ``(z - shift_factor) * scaling_factor`` (the SD3 / FLUX pipelines);
- per-channel ``latents_mean`` / ``latents_std`` (SDXL's pipelines, which use both or neither:
  ``(z - mean) * scaling_factor / std``) become ``latent_shift = mean``, ``latent_scale = scaling_factor / std``;
- legacy attention names ``query``, ``key``, ``value``, ``proj_attn`` become ``to_q``, ``to_k``, ``to_v``,
  ``to_out.0`` (as diffusers' own loader does), and 1x1-conv-shaped ``[C, C, 1, 1]`` attention weights become the
  ``[C, C]`` matrices of the linear layers.

Anything else this autoencoder cannot build (another class, block type or activation, an unknown config key, an
unexpected weight) raises :class:`~diffusekit.errors.UnsupportedAutoencoder` naming it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import BadFileError, MissingFileError, UnsupportedAutoencoder
from .autoencoder import Autoencoder

__all__ = ["load_diffusers_autoencoder", "autoencoder_options", "convert_legacy_names"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# diffusers' AutoencoderKL arguments and their defaults (a config written by an older diffusers may lack some).
DIFFUSERS_DEFAULTS = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    block_out_channels=(64,), layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=32,
    sample_size=32, scaling_factor=0.18215, shift_factor=None, latents_mean=None, latents_std=None,
    force_upcast=True, use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True,
)
# Hints for diffusers' pipelines (tiling size, fp32 upcast) that do not change the network.
PIPELINE_HINTS = ("sample_size", "force_upcast")
ARCHITECTURE_KEYS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
                     "norm_num_groups", "mid_block_add_attention", "use_quant_conv", "use_post_quant_conv")

_LEGACY_ATTENTION = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_LEGACY_RENAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_ATTENTION_WEIGHT = re.compile(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def load_diffusers_autoencoder(directory: str | Path, variant: str | None = None) -> Autoencoder:
    """The autoencoder saved in ``directory`` (a diffusers ``AutoencoderKL`` folder, or a pipeline folder with one
    in ``vae/``), in eval mode, float32. ``variant`` reads ``diffusion_pytorch_model.<variant>.safetensors``
    (e.g. ``fp16``). Only safetensors weights are read."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingFileError(f"diffusers autoencoder folder {directory} does not exist")
    if not (directory / CONFIG_NAME).is_file() and (directory / "vae" / CONFIG_NAME).is_file():
        directory = directory / "vae"
    config_path = directory / CONFIG_NAME
    options, shift, scale = autoencoder_options(_read_config(config_path), source=config_path)
    try:
        model = Autoencoder(**options)
    except ValueError as error:
        raise BadFileError(f"{config_path}: {error}") from error
    weights_path = _weights_path(directory, variant)
    state = convert_legacy_names(_read_weights(weights_path))
    _check_weights(model, state, weights_path)
    state["latent_shift"] = torch.tensor(shift, dtype=torch.float32)
    state["latent_scale"] = torch.tensor(scale, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    return model.eval()


def autoencoder_options(config: dict, source: str | Path = CONFIG_NAME) -> tuple[dict, list[float], list[float]]:
    """``(Autoencoder arguments, latent_shift, latent_scale)`` from a diffusers ``AutoencoderKL`` config."""
    class_name = config.get("_class_name")
    if class_name != "AutoencoderKL":
        raise UnsupportedAutoencoder(f"{source}: unsupported _class_name {class_name!r}; only AutoencoderKL loads")
    for key, value in config.items():
        if not key.startswith("_") and key not in DIFFUSERS_DEFAULTS:
            raise UnsupportedAutoencoder(f"{source}: unsupported config key {key!r} = {value!r}")
    get = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    levels = _int_list(get, "block_out_channels", source)
    for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = get[key]
        if not isinstance(types, (list, tuple)) or len(types) != len(levels):
            raise UnsupportedAutoencoder(f"{source}: {key} = {types!r} needs one entry per block_out_channels "
                                         f"entry ({len(levels)})")
        for block_type in types:
            if block_type != allowed:
                raise UnsupportedAutoencoder(f"{source}: unsupported {key} entry {block_type!r} = {types!r}; "
                                             f"only {allowed} blocks load")
    if get["act_fn"] != "silu":
        raise UnsupportedAutoencoder(f"{source}: unsupported act_fn {get['act_fn']!r}; only silu loads")
    for key in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
        if not isinstance(get[key], int) or isinstance(get[key], bool):
            raise BadFileError(f"{source}: {key} must be an integer, got {get[key]!r}")
    for key in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
        if not isinstance(get[key], bool):
            raise BadFileError(f"{source}: {key} must be true or false, got {get[key]!r}")
    options = {key: get[key] for key in ARCHITECTURE_KEYS}
    options["block_out_channels"] = tuple(levels)
    shift, scale = _latent_normalization(get, get["latent_channels"], source)
    return options, shift, scale


def _latent_normalization(get: dict, channels: int, source) -> tuple[list[float], list[float]]:
    scaling = _number(get, "scaling_factor", source)
    if scaling <= 0:
        raise BadFileError(f"{source}: scaling_factor must be > 0, got {scaling}")
    mean, std = get["latents_mean"], get["latents_std"]
    if mean is None and std is None:
        shift = 0.0 if get["shift_factor"] is None else _number(get, "shift_factor", source)
        return [shift] * channels, [scaling] * channels
    if mean is None or std is None:
        given = "latents_mean" if std is None else "latents_std"
        raise UnsupportedAutoencoder(f"{source}: {given} = {get[given]!r} without its partner; diffusers' pipelines "
                                     "use latents_mean and latents_std together or not at all")
    if get["shift_factor"] not in (None, 0, 0.0):
        raise UnsupportedAutoencoder(f"{source}: shift_factor = {get['shift_factor']!r} together with "
                                     "latents_mean: no diffusers pipeline uses both")
    mean, std = _float_list(get, "latents_mean", source), _float_list(get, "latents_std", source)
    for key, values in (("latents_mean", mean), ("latents_std", std)):
        if len(values) != channels:
            raise BadFileError(f"{source}: {key} has {len(values)} entries for {channels} latent channels")
    if any(s <= 0 for s in std):
        raise BadFileError(f"{source}: latents_std must be > 0, got {std}")
    return mean, [scaling / s for s in std]


def convert_legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the attention weights of LDM-era checkpoints (``query``, ``key``, ``value``, ``proj_attn``) and
    reshape 1x1-conv attention weights ``[C, C, 1, 1]`` to ``[C, C]``; other entries pass unchanged."""
    converted = {}
    for name, tensor in state.items():
        match = _LEGACY_ATTENTION.match(name)
        if match:
            name = f"{match[1]}.{_LEGACY_RENAMES[match[2]]}.{match[3]}"
        if _ATTENTION_WEIGHT.search(name) and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
            tensor = tensor[:, :, 0, 0]
        if name in converted:
            raise BadFileError(f"weight {name!r} appears under both its legacy and its current name")
        converted[name] = tensor
    return converted


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise MissingFileError(f"diffusers autoencoder config {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadFileError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise BadFileError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def _weights_path(directory: Path, variant: str | None) -> Path:
    stem = "diffusion_pytorch_model" + (f".{variant}" if variant else "")
    path = directory / f"{stem}.safetensors"
    if path.is_file():
        return path
    pickled = directory / f"{stem}.bin"
    if pickled.is_file():
        raise UnsupportedAutoencoder(
            f"{pickled}: only safetensors weights are read (a .bin file is a pickle, which can run code); convert "
            f"it once with diffusers: AutoencoderKL.from_pretrained(folder).save_pretrained(folder)")
    raise MissingFileError(f"diffusers autoencoder weights {path} do not exist")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise BadFileError(f"{path} is not a readable safetensors file: {error}") from error


def _check_weights(model: Autoencoder, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()
                if name not in ("latent_shift", "latent_scale")}
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        name = unexpected[0]
        raise UnsupportedAutoencoder(f"{path}: unsupported weight {name!r} (shape {tuple(state[name].shape)})"
                                     f"{f' and {len(unexpected) - 1} more' if len(unexpected) > 1 else ''}; "
                                     "the config does not describe this network")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise BadFileError(f"{path}: missing weight {missing[0]!r}"
                           f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}")
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise BadFileError(f"{path}: weight {name!r} has shape {tuple(state[name].shape)}, the config "
                               f"implies {tuple(shape)}")


def _number(get: dict, key: str, source) -> float:
    value = get[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadFileError(f"{source}: {key} must be a number, got {value!r}")
    return float(value)


def _float_list(get: dict, key: str, source) -> list[float]:
    values = get[key]
    if not isinstance(values, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                    for v in values):
        raise BadFileError(f"{source}: {key} must be a list of numbers, got {values!r}")
    return [float(v) for v in values]


def _int_list(get: dict, key: str, source) -> list[int]:
    values = get[key]
    if (not isinstance(values, (list, tuple)) or not values
            or any(isinstance(v, bool) or not isinstance(v, int) for v in values)):
        raise BadFileError(f"{source}: {key} must be a non-empty list of integers, got {values!r}")
    return list(values)
