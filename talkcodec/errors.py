"""Typed errors. Every failure a user can cause ends in one of these, with a one-line message."""

from __future__ import annotations


class TalkcodecError(Exception):
    """Base class of every error talkcodec raises on purpose."""


class PacketError(TalkcodecError, ValueError):
    """Bytes that are not a valid talkcodec packet (truncated, corrupted, oversized)."""


class UnsupportedVersionError(PacketError):
    """A packet or file written by a newer talkcodec format version."""


class UnknownCodecError(TalkcodecError, KeyError):
    """A codec name or wire id that this talkcodec does not know."""

    def __str__(self) -> str:  # KeyError would print the repr with quotes
        return str(self.args[0]) if self.args else "unknown codec"


class ContainerError(TalkcodecError):
    """A .tkc file that cannot be read (not a .tkc file, or damaged before its first frame)."""


class InputError(TalkcodecError):
    """An input file that is not a readable video, or a video without a face."""


class WeightsError(TalkcodecError):
    """Missing, wrong or corrupted model weights."""
