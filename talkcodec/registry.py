"""The one registry of codecs, and their frozen wire ids.

``CODEC_IDS`` is part of the wire format: an id, once released, never changes meaning and is
never reused. Codec classes register themselves with ``@register_codec``; their modules are
imported lazily by ``get_codec`` so ``import talkcodec`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .errors import UnknownCodecError

if TYPE_CHECKING:
    from .api import Codec

#: Frozen wire ids (docs/FORMAT.md). Add new codecs at the end with a new number.
CODEC_IDS: dict[str, int] = {"mesh": 1, "avfr": 2, "apb": 3}
CODEC_NAMES: dict[int, str] = {i: n for n, i in CODEC_IDS.items()}

#: Where each codec's implementation lives (imported on first use).
_MODULES: dict[str, str] = {
    "mesh": "talkcodec.codecs.mesh",
    "avfr": "talkcodec.codecs.avfr",
    "apb": "talkcodec.codecs.apb",
}

_CODECS: dict[str, type[Codec]] = {}

C = TypeVar("C", bound="type[Codec]")


def register_codec(name: str) -> Callable[[C], C]:
    """Class decorator: ``@register_codec("mesh")`` makes the class reachable by name."""
    if name not in CODEC_IDS:
        raise ValueError(f"codec {name!r} has no frozen wire id in CODEC_IDS")

    def decorate(cls: C) -> C:
        cls.name = name
        cls.codec_id = CODEC_IDS[name]
        _CODECS[name] = cls
        return cls

    return decorate


def list_codecs() -> list[str]:
    """Names of the codecs this installation can run."""
    return sorted(_MODULES)


def import_codecs() -> None:
    """Import every codec's module now (no weights are loaded): for callers that must not
    stall on a first import later, like a call's receiver."""
    for name, module in _MODULES.items():
        if name not in _CODECS:
            importlib.import_module(module)


def codec_class(name: str) -> type[Codec]:
    """The codec class registered as ``name`` (its ``Settings`` describe its settings)."""
    if name not in _MODULES:
        raise UnknownCodecError(f"unknown codec {name!r}; available: {', '.join(list_codecs())}")
    if name not in _CODECS:
        importlib.import_module(_MODULES[name])
    return _CODECS[name]


def get_codec(name: str, **settings: Any) -> Codec:
    """Build a codec by name; ``settings`` are the fields of that codec's settings dataclass."""
    return codec_class(name)(**settings)
