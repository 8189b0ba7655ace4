"""Building named objects (``get(name, **options)``) with errors that name the choices."""

from __future__ import annotations

from collections.abc import Callable, Mapping


def build(kind: str, builders: Mapping[str, Callable], name: str, options: dict):
    """``builders[name](**options)``; an unknown name or option raises an error that lists what exists."""
    if name not in builders:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(builders)}")
    try:
        return builders[name](**options)
    except TypeError as e:
        raise TypeError(f"bad options for {kind} {name!r}: {e}") from None
