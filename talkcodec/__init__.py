"""talkcodec: send a face instead of pixels.

    import talkcodec
    codec = talkcodec.get_codec("mesh")          # talkcodec.list_codecs() names them all
    enc, dec = codec.encoder(fps=25), codec.decoder()
    packets = enc.encode(frame_rgb)               # list[Packet], [] allowed; enc.flush() at the end
    frames = dec.decode(talkcodec.Packet.from_bytes(packets[0].to_bytes()))
"""

from .api import Codec, Decoder, Encoder, Frame
from .errors import (
    ContainerError,
    InputError,
    PacketError,
    TalkcodecError,
    UnknownCodecError,
    UnsupportedVersionError,
    WeightsError,
)
from .packet import Packet, PacketKind
from .registry import CODEC_IDS, get_codec, list_codecs

__version__ = "0.1.0"

__all__ = [
    "CODEC_IDS", "Codec", "ContainerError", "Decoder", "Encoder", "Frame", "InputError", "Packet",
    "PacketError", "PacketKind", "TalkcodecError", "UnknownCodecError", "UnsupportedVersionError",
    "WeightsError", "get_codec", "list_codecs", "__version__",
]  # fmt: skip
