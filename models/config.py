"""Network configs from JSON: nested config dataclasses rebuilt from plain dicts."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Build config dataclass ``cls`` from a dict (e.g. read from a weights file), recursing into
    fields whose default factory is a dataclass; lists become tuples; unknown keys raise ValueError."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}: expected a dict, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
    kwargs = {}
    for name, value in d.items():
        factory = fields[name].default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            value = config_from_dict(factory, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
