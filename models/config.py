"""Network configs from JSON: nested config dataclasses rebuilt from plain dicts, every field
checked for its type and range before anything is built (a weights file's config is untrusted)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

T = TypeVar("T")


def bounded(default: Any, low: float, high: float, length: tuple[int, int] | None = None) -> Any:
    """A config field whose value (each item, for a tuple of ``length`` items) lies in ``low..high``."""
    return dataclasses.field(default=default, metadata={"range": (low, high), "length": length})


def _check(owner: str, field: dataclasses.Field, value: Any) -> Any:
    """``value`` as the field's type, or ValueError/TypeError; numbers must lie in the field's range."""
    name, default = f"{owner}.{field.name}", field.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise TypeError(f"{name} must be a list")
        low, high = field.metadata["length"]
        if not low <= len(value) <= high:
            raise ValueError(f"{name} must have {low}..{high} items, not {len(value)}")
        return tuple(_number(name, default[0], item, field.metadata["range"]) for item in value)
    return _number(name, default, value, field.metadata["range"])


def _number(name: str, default: Any, value: Any, bounds: tuple[float, float]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number")
    if isinstance(default, int) and not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    if not math.isfinite(value) or not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{name} = {value} is outside {bounds[0]:g}..{bounds[1]:g}")
    return type(default)(value)


def config_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Build config dataclass ``cls`` from a dict (e.g. read from a weights file), recursing into
    fields whose default factory is a dataclass; lists become tuples; unknown keys, wrong types
    and values outside a field's ``bounded`` range raise ValueError / TypeError."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}: expected a dict, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in set(d) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown[:5]}")
    kwargs = {}
    for name, value in d.items():
        factory = fields[name].default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            kwargs[name] = config_from_dict(factory, value)
        else:
            kwargs[name] = _check(cls.__name__, fields[name], value)
    return cls(**kwargs)


def unbounded_fields(cls: type) -> list[str]:
    """Fields of ``cls`` (and the configs nested in it) with no declared range: a test keeps this empty."""
    missing = []
    for f in dataclasses.fields(cls):
        factory = f.default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            missing += unbounded_fields(factory)
        elif not isinstance(f.default, bool) and "range" not in f.metadata:
            missing.append(f"{cls.__name__}.{f.name}")
    return missing
