"""The wire format: one ``Packet`` per frame, reference image or control message.

Layout (all of it documented in docs/FORMAT.md)::

    byte 0    version (bits 7-5) | kind (bits 4-3) | key (bit 2) | zstd (bit 1) | frames (bit 0)
    byte 1    codec id (frozen, see registry.CODEC_IDS)
    varint    seq: frame index on the stream's frame clock (time = seq / fps)
    FRAME key:    u8 ref_id, varint fps numerator, varint fps denominator
    FRAME delta:  varint key_distance (the key it depends on is seq - key_distance)
    FRAME, frames bit set: varint n (2..64): the packet carries frames seq .. seq + n - 1
    REFERENCE:    u8 ref_id
    kinds 2, 3:   reserved (control messages are typed JSON on their own channel: transport/control.py)
    payload   the rest; zstd-compressed (with the codec's dictionary, if it ships one) when the
              zstd bit is set. ``to_bytes`` picks whichever of raw and zstd is smaller.

A steady-state delta frame header is 5 bytes (1 kbps at 25 fps); the msgpack header
``[version, codec, seq, pts]`` it replaces was 7. A packet of n frames pays it once (the
sender holds n - 1 frames back: files and the bench, or calls that trade latency for bits). Parsing is bounded: packets over
``MAX_PACKET_BYTES``, payloads that inflate past ``MAX_PAYLOAD_BYTES``, and any malformed
field raise ``PacketError`` with a one-line message.
"""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import msgpack
import numpy as np
import zstandard

from .errors import PacketError, UnsupportedVersionError
from .quant import read_varint, write_varint
from .registry import CODEC_IDS, CODEC_NAMES

FORMAT_VERSION = 1
MAX_PACKET_BYTES = 1 << 20  # 1 MiB: a reference image at most; frames are tens of bytes
MAX_PAYLOAD_BYTES = 4 << 20  # bound on zstd inflation
MAX_IMAGE_SIDE = 2048  # reference images larger than this are refused
_ZSTD_MIN_PAYLOAD = 24  # below this zstd framing alone costs more than it could save
MAX_FRAMES_PER_PACKET = 64  # a FRAME packet carries 1..64 consecutive frames

_dictionaries: dict[int, zstandard.ZstdCompressionDict] = {}


class PacketKind(enum.IntEnum):
    FRAME = 0
    REFERENCE = 1


def register_dictionary(codec_id: int, dictionary: bytes) -> None:
    """Make a trained zstd dictionary the one used for ``codec_id``'s payloads (both ways)."""
    _dictionaries[codec_id] = zstandard.ZstdCompressionDict(dictionary)


def train_dictionary(samples: list[bytes], size: int = 4096) -> bytes:
    """Train a zstd dictionary on real payloads of one codec (ship the result with the codec)."""
    return zstandard.train_dictionary(size, samples).as_bytes()


def _compressor(codec_id: int) -> zstandard.ZstdCompressor:
    dictionary = _dictionaries.get(codec_id)
    params = dict(level=19, write_checksum=False, write_content_size=True, write_dict_id=False)
    return zstandard.ZstdCompressor(dict_data=dictionary, **params) if dictionary else zstandard.ZstdCompressor(**params)


def _decompress(codec_id: int, data: bytes) -> bytes:
    dictionary = _dictionaries.get(codec_id)
    dctx = zstandard.ZstdDecompressor(dict_data=dictionary) if dictionary else zstandard.ZstdDecompressor()
    try:
        with dctx.stream_reader(io.BytesIO(data)) as reader:
            out = reader.read(MAX_PAYLOAD_BYTES + 1)
    except zstandard.ZstdError as exc:
        raise PacketError(f"corrupted zstd payload ({exc})") from None
    if len(out) > MAX_PAYLOAD_BYTES:
        raise PacketError(f"payload inflates past {MAX_PAYLOAD_BYTES} bytes")
    return out


@dataclass(frozen=True)
class Packet:
    """One unit on the wire. ``len(packet.to_bytes())`` is what it costs, always."""

    codec_id: int
    kind: PacketKind
    seq: int
    payload: bytes = b""
    key: bool = False  # FRAME only: decodable without any other frame packet
    key_distance: int = 0  # FRAME delta only: seq - seq of the key it depends on
    ref_id: int = 0  # FRAME key / REFERENCE: which reference image (0..255)
    fps: Fraction | None = None  # FRAME key only: the stream's frame clock
    frames: int = 1  # FRAME only: it carries frames seq .. seq + frames - 1
    _wire: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def codec(self) -> str:
        return CODEC_NAMES[self.codec_id]

    @property
    def key_seq(self) -> int:
        """Seq of the key packet this frame packet depends on (itself for a key)."""
        return self.seq - self.key_distance

    @property
    def last_seq(self) -> int:
        """Seq of the last frame a FRAME packet carries."""
        return self.seq + self.frames - 1

    def to_bytes(self) -> bytes:
        if self._wire is not None:
            return self._wire
        self._validate()
        header = bytearray([0, self.codec_id])
        header += write_varint(self.seq)
        if self.kind == PacketKind.FRAME and self.key:
            assert self.fps is not None
            header.append(self.ref_id)
            header += write_varint(self.fps.numerator) + write_varint(self.fps.denominator)
        elif self.kind == PacketKind.FRAME:
            header += write_varint(self.key_distance)
        elif self.kind == PacketKind.REFERENCE:
            header.append(self.ref_id)
        if self.frames > 1:
            header += write_varint(self.frames)
        payload, compressed = self.payload, False
        if len(payload) >= _ZSTD_MIN_PAYLOAD:
            packed = _compressor(self.codec_id).compress(payload)
            if len(packed) < len(payload):
                payload, compressed = packed, True
        header[0] = (FORMAT_VERSION << 5) | (int(self.kind) << 3) | (self.key << 2) | (compressed << 1) | (self.frames > 1)
        wire = bytes(header) + payload
        if len(wire) > MAX_PACKET_BYTES:
            raise PacketError(f"packet of {len(wire)} bytes exceeds the {MAX_PACKET_BYTES}-byte limit")
        object.__setattr__(self, "_wire", wire)
        return wire

    def _validate(self) -> None:
        if self.codec_id not in CODEC_NAMES:
            raise PacketError(f"unknown codec id {self.codec_id}")
        if not 0 <= self.seq < 1 << 35 or not 0 <= self.ref_id < 256:
            raise PacketError("seq or ref_id out of range")
        if self.kind == PacketKind.FRAME and self.key and (self.fps is None or self.fps <= 0):
            raise PacketError("a key frame packet needs a positive fps")
        if self.kind == PacketKind.FRAME and not self.key and not 0 < self.key_distance <= self.seq:
            raise PacketError("a delta frame packet needs 0 < key_distance <= seq")
        if not 1 <= self.frames <= MAX_FRAMES_PER_PACKET or (self.frames > 1 and self.kind != PacketKind.FRAME):
            raise PacketError(f"a frame packet carries 1..{MAX_FRAMES_PER_PACKET} frames, other packets one")

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Packet:
        """Parse untrusted bytes. Raises ``PacketError`` (never anything else) on bad input."""
        data = bytes(data)
        if len(data) > MAX_PACKET_BYTES:
            raise PacketError(f"packet of {len(data)} bytes exceeds the {MAX_PACKET_BYTES}-byte limit")
        if len(data) < 3:
            raise PacketError(f"packet too short ({len(data)} bytes)")
        flags = data[0]
        version = flags >> 5
        if version != FORMAT_VERSION:
            if version > FORMAT_VERSION:
                raise UnsupportedVersionError(
                    f"packet format version {version} is newer than this talkcodec "
                    f"(reads version {FORMAT_VERSION}): upgrade talkcodec"
                )
            raise PacketError(f"not a talkcodec packet (format version {version})")
        kind_value = (flags >> 3) & 0b11
        if kind_value not in PacketKind._value2member_map_:
            raise PacketError(f"unknown packet kind {kind_value}")
        kind = PacketKind(kind_value)
        key, compressed = bool(flags & 0b100), bool(flags & 0b10)
        codec_id = data[1]
        if codec_id not in CODEC_NAMES:
            known = ", ".join(f"{n}={i}" for n, i in CODEC_IDS.items())
            raise PacketError(f"unknown codec id {codec_id} (this talkcodec knows {known})")
        seq, pos = read_varint(data, 2)
        fields: dict[str, Any] = {}
        if kind == PacketKind.FRAME and key:
            if pos >= len(data):
                raise PacketError("truncated key frame header")
            fields["ref_id"] = data[pos]
            num, pos = read_varint(data, pos + 1)
            den, pos = read_varint(data, pos)
            if num == 0 or den == 0:
                raise PacketError("key frame packet with a zero frame rate")
            fields["fps"] = Fraction(num, den)
        elif kind == PacketKind.FRAME:
            fields["key_distance"], pos = read_varint(data, pos)
            if not 0 < fields["key_distance"] <= seq:
                raise PacketError("delta frame packet names an impossible key")
        elif kind == PacketKind.REFERENCE:
            if pos >= len(data):
                raise PacketError("truncated reference header")
            fields["ref_id"] = data[pos]
            pos += 1
        elif key:
            raise PacketError("key flag on a non-frame packet")
        if flags & 1:
            if kind != PacketKind.FRAME:
                raise PacketError("frame count on a non-frame packet")
            fields["frames"], pos = read_varint(data, pos)
            if not 2 <= fields["frames"] <= MAX_FRAMES_PER_PACKET:
                raise PacketError(f"frame packet with {fields['frames']} frames (2..{MAX_FRAMES_PER_PACKET} allowed)")
        payload = data[pos:]
        if compressed:
            payload = _decompress(codec_id, payload)
        return cls(codec_id=codec_id, kind=kind, seq=seq, payload=payload, key=key, _wire=data, **fields)


# ---- payload helpers shared by the codecs -------------------------------------------------

_UNPACK_LIMITS = dict(
    max_bin_len=MAX_PAYLOAD_BYTES, max_str_len=4096, max_array_len=65536, max_map_len=256, max_ext_len=0
)


def pack(obj: Any) -> bytes:
    """msgpack, the envelope for structured payloads (reference metadata, control messages)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """Bounded msgpack parse of untrusted bytes; raises ``PacketError`` on anything malformed."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except Exception as exc:
        raise PacketError(f"malformed msgpack payload ({type(exc).__name__})") from None


def encode_image(rgb: np.ndarray, fmt: str = "webp", quality: int = 90) -> bytes:
    """Compress a reference image (H, W, 3) uint8 RGB as WebP or JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt.upper(), quality=quality, method=4 if fmt == "webp" else 0)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Decode untrusted WebP/JPEG/PNG bytes into (H, W, 3) uint8 RGB, refusing huge images."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in {"WEBP", "JPEG", "PNG"}:
                raise PacketError(f"reference image format {im.format} is not WebP, JPEG or PNG")
            if max(im.size) > MAX_IMAGE_SIDE:
                raise PacketError(f"reference image {im.size} exceeds {MAX_IMAGE_SIDE} px")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, PacketError):
            raise
        raise PacketError(f"unreadable reference image ({exc})") from None
