"""Plain data <-> typed dataclasses, with errors that name the key and list what is allowed.

``from_dict(Config, data)`` checks every key and value against the dataclass annotations (nested
dataclasses, ``int``, ``float``, ``str``, ``bool``, ``X | None``, ``Literal[...]``, free-form ``dict``);
``merge`` lays a partial dict over a config; ``parse_override("optim.lr=1e-3")`` reads a ``--set``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

import yaml

from ..errors import ConfigError

__all__ = ["ConfigError", "from_dict", "to_dict", "merge", "parse_override", "apply_override"]


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _number(value, tp, path):
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected {tp.__name__}, got the bool {value!r}")
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; numbers from --set arrive as text too
        try:
            value = float(value) if tp is float else int(value.replace("_", ""), 0)
        except ValueError:
            try:
                as_float = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}") from None
            value = as_float
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    return float(value)


def _coerce(value, tp, path: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
        return from_dict(tp, value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not allowed; choose one of {', '.join(map(str, choices))}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if tp in (int, float):
        return _number(value, tp, path)
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{path}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    raise TypeError(f"{path}: unsupported annotation {tp!r}")  # a bug in the schema, not in the input


def from_dict(cls, data: dict, path: str = ""):
    """An instance of dataclass ``cls`` from ``data``; missing keys take their defaults."""
    hints = _hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        key = unknown[0]
        full = f"{path}.{key}" if path else key
        close = difflib.get_close_matches(str(key), list(hints), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown key {full!r}{hint}; allowed keys{' in ' + path if path else ''}: "
                          f"{', '.join(hints)}")
    values = {}
    for key, value in data.items():
        values[key] = _coerce(value, hints[key], f"{path}.{key}" if path else key)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def to_dict(config) -> dict:
    """Nested plain dicts (what YAML / JSON / the checkpoint store)."""
    return dataclasses.asdict(config)


def merge(config, data: dict, path: str = ""):
    """A copy of ``config`` with the (partial, nested) ``data`` laid over it: sections merge key by key,
    a value given for a plain dict field (``*_options``, ``ema.half_lives``) replaces it whole."""
    current = to_dict(config)
    _merge_into(current, data, type(config), path)
    return from_dict(type(config), current, path)


def _merge_into(current: dict, data, cls, path: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    for key, value in data.items():
        if key not in hints:
            from_dict(cls, {key: value}, path)  # raises the unknown-key error with the choices
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _merge_into(current[key], value, tp, f"{path}.{key}" if path else key)
        else:
            current[key] = value


def apply_override(config, keys: list[str], value):
    """A copy of ``config`` with ``value`` at the dotted key path. Inside a plain dict field the path
    sets one entry (``network.options.model_channels=64`` keeps the other options)."""
    data = to_dict(config)
    node, cls, path = data, type(config), ""
    for i, key in enumerate(keys):
        hints = _hints(cls) if cls is not None else None
        if hints is not None and key not in hints:
            from_dict(cls, {key: None}, path)  # raises the unknown-key error with the choices
        path = f"{path}.{key}" if path else key
        if i == len(keys) - 1:
            node[key] = value
            break
        tp = hints[key] if hints is not None else dict
        if hints is not None and not (dataclasses.is_dataclass(tp) or tp is dict or typing.get_origin(tp) is dict):
            raise ConfigError(f"{path} is a value, not a section: cannot set {'.'.join(keys)}")
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node, cls = node[key], (tp if dataclasses.is_dataclass(tp) else None)
    return from_dict(type(config), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001); the value is read as YAML (numbers, bools, null,
    lists, ``{a: 1}`` mappings), so ``--set network.options='{model_channels: 64}'`` works."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. optim.lr=1e-3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: bad key {key!r}: write section.field=value, e.g. optim.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())  # YAML explains over several lines: one line for the CLI
        raise ConfigError(f"--set {text!r}: cannot read the value as YAML: {reason}") from None
    return key.split("."), value
