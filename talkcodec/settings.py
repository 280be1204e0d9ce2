"""Codec settings: one frozen dataclass per codec whose fields are declared with ``setting()``
(default, one line of help, and a range or choices). ``build_settings`` checks what a user gives
(``--set key=value``, ``get_codec(name, **settings)``) and turns every mistake into one
``TalkcodecError`` naming the setting; ``describe_settings`` lists them (``talkcodec codecs``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import TalkcodecError


def setting(default: Any, help: str, range: tuple[float, float] | None = None,
            choices: tuple[str, ...] | None = None, receiver: bool = False) -> Any:  # fmt: skip
    """A settings field: ``range`` bounds a number (inclusive), ``choices`` lists the allowed texts,
    ``receiver``: the decoder reads it (a receiving peer passes it on; the sender's ride in the stream)."""
    metadata = {"help": help, "range": range, "choices": choices, "receiver": receiver}
    return dataclasses.field(default=default, metadata=metadata)


def receiver_settings(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The part of ``values`` that a decoder of settings class ``cls`` reads."""
    wanted = {f.name for f in dataclasses.fields(cls) if f.metadata.get("receiver")}
    return {name: value for name, value in values.items() if name in wanted}


def _kind(field: dataclasses.Field) -> tuple[str, bool]:
    """(base type name, whether None is allowed) from the field's annotation, e.g. 'int | None'."""
    names = [part.strip() for part in str(field.type).split("|")]
    return next(n for n in names if n != "None"), "None" in names


def accepted(field: dataclasses.Field) -> str:
    """What a field accepts, in words."""
    kind, optional = _kind(field)
    low_high, choices = field.metadata.get("range"), field.metadata.get("choices")
    if choices:
        text = "one of " + ", ".join(choices)
    elif kind == "bool":
        text = "true or false"
    elif kind in ("int", "float"):
        text = "an integer" if kind == "int" else "a number"
        text += f" in {low_high[0]:g}..{low_high[1]:g}" if low_high else ""
    else:
        text = "a text"
    return text + (" (or null)" if optional else "")


def _check(codec: str, field: dataclasses.Field, value: Any) -> Any:
    kind, optional = _kind(field)
    fail = TalkcodecError(f"{codec}: {field.name} must be {accepted(field)}, got {value!r}")
    if value is None:
        if optional:
            return None
        raise fail
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail
        return value
    if kind in ("int", "float"):
        wrong_type = isinstance(value, bool) or not isinstance(value, int if kind == "int" else int | float)
        if wrong_type:
            raise fail
        low_high = field.metadata.get("range")
        if not math.isfinite(value) or (low_high and not low_high[0] <= value <= low_high[1]):
            raise fail
        return int(value) if kind == "int" else float(value)
    if not isinstance(value, str) or (field.metadata.get("choices") and value not in field.metadata["choices"]):
        raise fail
    return value


def build_settings(cls: type, codec: str, values: dict[str, Any]) -> Any:
    """``cls(**values)`` with every value checked; unknown names and bad values: TalkcodecError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TalkcodecError(
            f"unknown setting(s) {', '.join(unknown)} for codec {codec!r}; valid settings: {', '.join(sorted(fields))}"
        )
    return cls(**{name: _check(codec, fields[name], value) for name, value in values.items()})


def describe_settings(cls: type) -> list[tuple[str, Any, str, str]]:
    """(name, default, what it accepts, help) of every setting."""
    return [(f.name, f.default, accepted(f), f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


def unchecked_settings(cls: type) -> list[str]:
    """Settings declared without ``setting()`` or numbers without a range (a test keeps it empty)."""
    missing = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or (_kind(f)[0] in ("int", "float") and not f.metadata.get("range")):
            missing.append(f.name)
    return missing
