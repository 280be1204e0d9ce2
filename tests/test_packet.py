from fractions import Fraction

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from talkcodec.errors import PacketError, UnsupportedVersionError
from talkcodec.packet import (
    MAX_PACKET_BYTES,
    Packet,
    PacketKind,
    _dictionaries,
    decode_image,
    encode_image,
    pack,
    register_dictionary,
    train_dictionary,
    unpack,
)

MESH = 1

EXAMPLES = [
    Packet(MESH, PacketKind.FRAME, 0, b"\x01\x02\x03", key=True, ref_id=0, fps=Fraction(25)),
    Packet(MESH, PacketKind.FRAME, 1000, b"abc", key=True, ref_id=7, fps=Fraction(30000, 1001)),
    Packet(MESH, PacketKind.FRAME, 1001, b"\x00" * 9, key_distance=1),
    Packet(MESH, PacketKind.FRAME, 40, b"", key_distance=15),
    Packet(MESH, PacketKind.FRAME, 48, b"\x05" * 20, key=True, ref_id=1, fps=Fraction(25), frames=4),
    Packet(MESH, PacketKind.FRAME, 52, b"\x07" * 12, key_distance=4, frames=64),
    Packet(MESH, PacketKind.REFERENCE, 3, b"x" * 5000, ref_id=255),
]


@pytest.mark.parametrize("kind", [2, 3])
def test_the_reserved_packet_kinds_are_refused(kind):
    wire = bytearray(Packet(MESH, PacketKind.REFERENCE, 3, b"x", ref_id=1).to_bytes())
    wire[0] = (wire[0] & ~0b11000) | (kind << 3)
    with pytest.raises(PacketError, match=f"unknown packet kind {kind}"):
        Packet.from_bytes(bytes(wire))


@pytest.mark.parametrize("packet", EXAMPLES, ids=lambda p: f"{p.kind.name}-{p.seq}")
def test_roundtrip(packet):
    wire = packet.to_bytes()
    back = Packet.from_bytes(wire)
    assert back == packet and back.to_bytes() == wire


def test_delta_header_is_five_bytes():
    packet = Packet(MESH, PacketKind.FRAME, 5000, b"", key_distance=12)
    assert len(packet.to_bytes()) == 5  # flags, codec, 2-byte seq, 1-byte key distance
    assert packet.key_seq == 4988


def test_a_packet_of_n_frames_pays_one_more_header_byte():
    single = Packet(MESH, PacketKind.FRAME, 5000, b"", key_distance=12)
    bundle = Packet(MESH, PacketKind.FRAME, 5000, b"", key_distance=12, frames=8)
    assert len(bundle.to_bytes()) == len(single.to_bytes()) + 1
    assert (bundle.key_seq, bundle.last_seq) == (4988, 5007)


@pytest.mark.parametrize("frames", [0, 65])
def test_frame_count_is_bounded_on_the_sender_too(frames):
    with pytest.raises(PacketError, match="1..64 frames"):
        Packet(MESH, PacketKind.FRAME, 5, b"", key_distance=1, frames=frames).to_bytes()


def test_zstd_only_when_smaller():
    repetitive = Packet(MESH, PacketKind.REFERENCE, 0, b"ab" * 1000)
    assert len(repetitive.to_bytes()) < 100 and repetitive.to_bytes()[0] & 0b10
    random = Packet(MESH, PacketKind.REFERENCE, 0, np.random.default_rng(0).bytes(1000))
    assert not random.to_bytes()[0] & 0b10 and len(random.to_bytes()) == 1000 + 4


def test_trained_dictionary_shrinks_small_structured_payloads():
    rng = np.random.default_rng(0)
    samples = [pack({"kp": rng.integers(-50, 50, 30).tolist(), "jac": rng.integers(-9, 9, 40).tolist()}) for _ in range(400)]
    payload = samples[-1]
    plain = len(Packet(3, PacketKind.FRAME, 1, payload, key_distance=1).to_bytes())
    register_dictionary(3, train_dictionary(samples[:-1], 2048))
    try:
        packet = Packet(3, PacketKind.FRAME, 1, payload, key_distance=1)
        assert len(packet.to_bytes()) < plain
        assert Packet.from_bytes(packet.to_bytes()).payload == payload
    finally:
        _dictionaries.pop(3)


def test_newer_version_is_named():
    wire = bytearray(EXAMPLES[0].to_bytes())
    wire[0] = (wire[0] & 0x1F) | (2 << 5)
    with pytest.raises(UnsupportedVersionError, match="version 2 is newer"):
        Packet.from_bytes(bytes(wire))


def test_unknown_codec_id_is_named():
    wire = bytearray(EXAMPLES[0].to_bytes())
    wire[1] = 42
    with pytest.raises(PacketError, match="unknown codec id 42"):
        Packet.from_bytes(bytes(wire))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "too short"),
        (bytes([0x20 | (1 << 3) | 0b10, 1, 0, 7]) + b"not zstd", "zstd"),
        (bytes([0x20 | (1 << 3) | 0b1, 1, 0, 0, 2]), "frame count on a non-frame"),
        (bytes([0x20 | 0b1, 1, 5, 1, 1]), "with 1 frames"),
        (bytes([0x20 | 0b1, 1, 5, 1, 65]), "with 65 frames"),
        (bytes([0x20 | (3 << 3), 1, 0]), "kind"),
        (bytes([0x20, 1, 5, 9]), "impossible key"),
        (b"\x24\x01\x00\x00\x00\x01", "zero frame rate"),
        (b"\x20" * (MAX_PACKET_BYTES + 1), "limit"),
    ],
)
def test_malformed_packets_get_one_line_errors(data, message):
    with pytest.raises(PacketError, match=message):
        Packet.from_bytes(data)


def test_zstd_bomb_is_refused():
    import zstandard

    bomb = zstandard.ZstdCompressor(level=3).compress(b"\x00" * (64 << 20))
    with pytest.raises(PacketError, match="inflates"):
        Packet.from_bytes(bytes([0x20 | (1 << 3) | 0b10, 1, 0, 0]) + bomb)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_random_bytes_only_raise_packet_error(data):
    try:
        Packet.from_bytes(data)
    except PacketError:
        pass


@settings(max_examples=300)
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_packets_only_raise_packet_error(packet, data):
    wire = bytearray(packet.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    try:
        Packet.from_bytes(bytes(wire[:cut]))
    except PacketError:
        pass


def test_image_roundtrip_and_limits(astronaut_frame):
    for fmt in ("webp", "jpeg"):
        back = decode_image(encode_image(astronaut_frame, fmt, 95))
        assert back.shape == astronaut_frame.shape
        assert np.abs(back.astype(int) - astronaut_frame).mean() < 4
    huge = encode_image(np.zeros((8, 3000, 3), np.uint8), "jpeg")
    with pytest.raises(PacketError, match="exceeds"):
        decode_image(huge)
    with pytest.raises(PacketError, match="unreadable"):
        decode_image(b"RIFF\x00\x00\x00\x00WEBPgarbage")
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)  # a 40000x40000 PNG header: a decompression bomb
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(PacketError):
        decode_image(png)


@pytest.mark.parametrize(
    "blob", [b"\xc1", msgpack.packb([0] * 70000), msgpack.packb({i: 1 for i in range(300)}), b"\xdb\xff\xff\xff\xff"]
)
def test_unpack_is_bounded(blob):
    with pytest.raises(PacketError):
        unpack(blob)
