"""Config files: YAML (``.yaml`` / ``.yml``), TOML (``.toml``) or JSON, read into plain dicts; the resolved
config is written back as YAML."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from .typed import ConfigError, to_dict

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["read_file", "write_yaml", "dump_yaml"]


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: unknown format {suffix!r}; use .yaml, .yml, .toml or .json")
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - parser errors of three libraries
        reason = " ".join(str(e).split())  # parsers explain over several lines: one line for the CLI
        raise ConfigError(f"config file {path} cannot be read: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections at the top, got {type(data).__name__}")
    return data


def dump_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)


def write_yaml(config, path: str | Path) -> Path:
    """Write the config atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(dump_yaml(config))
    os.replace(tmp, path)
    return path
