"""Typed training configuration: dataclasses, named presets, YAML/TOML files and ``--set`` overrides.

``resolve(preset="mnist", files=["my.yaml"], overrides=["optim.lr=1e-3"])`` lays the file(s) and then the
overrides over the preset, checks every key, type and name, and returns a :class:`Config`. Unknown keys
and bad values raise :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

from .files import dump_yaml, read_file, write_yaml
from .presets import PRESETS, preset
from .schema import (
    AutoencoderConfig,
    CascadeConfig,
    Config,
    DataConfig,
    EMAConfig,
    EvalConfig,
    LatentConfig,
    NetworkConfig,
    ObjectiveConfig,
    OptimConfig,
    RunConfig,
    SampleConfig,
    VideoConfig,
)
from .typed import ConfigError, apply_override, from_dict, merge, parse_override, to_dict
from .validate import validate

__all__ = ["Config", "DataConfig", "ObjectiveConfig", "NetworkConfig", "OptimConfig", "EMAConfig", "RunConfig",
           "SampleConfig", "EvalConfig", "CascadeConfig", "AutoencoderConfig", "LatentConfig", "VideoConfig",
           "ConfigError",
           "PRESETS", "preset", "resolve", "from_dict", "to_dict", "merge", "apply_override", "parse_override",
           "read_file", "write_yaml", "dump_yaml", "validate"]


def resolve(preset_name: str | None = "tiny", files=(), overrides=()) -> Config:
    """Preset, then each config file in order, then each ``key=value`` override; validated."""
    config = preset(preset_name) if preset_name else Config()
    for path in files:
        config = merge(config, read_file(path))
    for text in overrides:
        keys, value = parse_override(text)
        config = apply_override(config, keys, value)
    return validate(config)
