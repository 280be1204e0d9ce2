"""The call's control messages: JSON text on the reliable ``control`` channel, typed and checked.

Everything the other side sends is untrusted. ``parse`` bounds a message's length before JSON
ever sees it, turns every failure of parsing or validation into one ``ControlError`` (the
caller counts it and carries on), and gives back a frozen dataclass with typed, ranged fields.
The messages and their limits are documented in docs/FORMAT.md ("Control messages").
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from talkcodec.errors import TalkcodecError
from talkcodec.packet import MAX_FRAMES_PER_PACKET

CONTROL_VERSION = 1
MAX_CONTROL_CHARS = 512  # the longest message is ~90 characters; anything longer is refused unread
MAX_SEQ = 1 << 35  # a varint seq is at most 35 bits on the wire


class ControlError(TalkcodecError):
    """A control message from the other side that is not one this talkcodec understands."""


@dataclass(frozen=True)
class Start:
    """The sender's frame clock: frame ``seq`` is captured at ``t0 + seq / fps`` (sender's time)."""

    type: ClassVar[str] = "start"
    t0: float  # seconds since the epoch on the sender's clock
    fps: float
    frames_per_packet: int = 1  # the sender holds n - 1 frames back for a packet of n


BYE_REASONS = ("hung_up", "input_ended")


@dataclass(frozen=True)
class Bye:
    """The sender stops; ``last_seq`` is its last frame (-1: it sent none); ``why``: one of
    ``BYE_REASONS`` (its user hung up, or its input file ended)."""

    type: ClassVar[str] = "bye"
    last_seq: int = -1
    why: str = "hung_up"


@dataclass(frozen=True)
class Alive:
    """Every 2 s from a side whose face does not ride its voice: still here."""

    type: ClassVar[str] = "alive"


@dataclass(frozen=True)
class KeyRequest:
    """The receiver lost a key packet: send the next frame as a key."""

    type: ClassVar[str] = "key"


@dataclass(frozen=True)
class ReferenceRequest:
    """The receiver has no usable reference: send a new one."""

    type: ClassVar[str] = "reference"


Message = Start | Bye | Alive | KeyRequest | ReferenceRequest
MESSAGES: dict[str, type] = {cls.type: cls for cls in (Start, Bye, Alive, KeyRequest, ReferenceRequest)}

# (low, high) of every numeric field, inclusive
RANGES: dict[str, tuple[float, float]] = {
    "t0": (0.0, 1e11),
    "fps": (1.0, 120.0),
    "frames_per_packet": (1, MAX_FRAMES_PER_PACKET),
    "last_seq": (-1, MAX_SEQ),
}
CHOICES: dict[str, tuple[str, ...]] = {"why": BYE_REASONS}  # the allowed values of every text field


def encode(message: Message) -> str:
    """The JSON text of ``message`` (with the protocol version)."""
    return json.dumps({"v": CONTROL_VERSION, "type": message.type, **asdict(message)}, separators=(",", ":"))


def _field(name: str, value: Any, kind: str) -> Any:
    if kind == "str":
        if value not in CHOICES[name]:
            raise ControlError(f"{name} must be one of {', '.join(CHOICES[name])}")
        return value
    low, high = RANGES[name]
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ControlError(f"{name} must be an integer")
    elif not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ControlError(f"{name} must be a finite number")
    if not low <= value <= high:
        raise ControlError(f"{name} {value} is outside {low:g}..{high:g}")
    return int(value) if kind == "int" else float(value)


def parse(data: str | bytes) -> Message:
    """One control message from the other side; ``ControlError`` for anything else."""
    if len(data) > MAX_CONTROL_CHARS:
        raise ControlError(f"control message of {len(data)} characters (at most {MAX_CONTROL_CHARS})")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, numbers too long
        raise ControlError(f"control message is not JSON ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ControlError("control message is not a JSON object")
    version = raw.pop("v", CONTROL_VERSION)  # peers before the version field speak version 1
    if type(version) is not int or version != CONTROL_VERSION:
        raise ControlError(f"control protocol version {str(version)[:20]} (this talkcodec speaks {CONTROL_VERSION})")
    name = raw.pop("type", None)
    cls = MESSAGES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ControlError("unknown control message type")
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ControlError(f"{cls.type} message with unknown fields")
    values = {name: _field(name, value, known[name].type) for name, value in raw.items()}
    if cls is Start and not {"t0", "fps"} <= set(values):
        raise ControlError("start message without t0 and fps")
    return cls(**values)
