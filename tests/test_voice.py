"""Face packets riding the voice's Opus padding (transport/voice.py) and the leaner RTP of a call
(transport/overhead.py): exact against a real Opus decoder, and safe on hostile bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from talkcodec.transport.voice import (
    MAX_CARRIED_BYTES,
    FaceOverVoice,
    carried,
    carrier,
    opus_frames,
    opus_with_padding,
)

from talkcodec.audio import OPUS_RATE, OpusDecoder, OpusEncoder
from talkcodec.errors import PacketError


def speech_like(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * OPUS_RATE)) / OPUS_RATE
    tone = np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))  # a voiced, syllable-rate tone
    return (0.3 * tone + 0.02 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module", params=[20, 40, 60])
def opus_packets(request) -> list[bytes]:
    encoder = OpusEncoder(12000, OPUS_RATE, request.param)
    return [data for _, data in encoder.encode(speech_like(1.0)) + encoder.encode(None)]


def two_frame_packets(packets: list[bytes]) -> list[bytes]:
    """Code 1 (two equal frames) and code 2 (two frames of different lengths) packets built from
    real single-frame ones of the same configuration."""
    singles = [p for p in packets if p[0] & 3 == 0]
    if len(singles) < 2:
        return []
    a, b = singles[0], next((p for p in singles[1:] if len(p) != len(singles[0]) and p[0] == singles[0][0]), None)
    out = [bytes([(a[0] & ~3) | 1]) + a[1:] + a[1:]]
    if b is not None and len(a) - 1 < 252:
        out.append(bytes([(a[0] & ~3) | 2, len(a) - 1]) + a[1:] + b[1:])
    return out


def decoded(packets: list[bytes]) -> np.ndarray:
    decoder = OpusDecoder()
    return np.concatenate([decoder.decode(p) for p in packets])


@pytest.mark.parametrize("padding", [b"", b"x", b"y" * 253, b"z" * 254, b"w" * 255, bytes(range(256)) * 2])
def test_padded_opus_packets_decode_exactly_as_the_originals(opus_packets, padding):
    originals = opus_packets + two_frame_packets(opus_packets)
    padded = [opus_with_padding(p, padding) for p in originals]
    for original, made in zip(originals, padded):
        toc, frames, got = opus_frames(made)
        assert toc >> 2 == original[0] >> 2 and frames == opus_frames(original)[1] and got == padding
    np.testing.assert_array_equal(decoded(padded), decoded(originals))


def test_face_packets_ride_in_order_within_the_cap_and_large_ones_spill(opus_packets):
    class Channel:
        def __init__(self):
            self.sent = []

        def send(self, data):
            self.sent.append(data)

    spill = Channel()
    face = FaceOverVoice(spill)
    packets = [bytes([i]) * (20 + i) for i in range(40)]  # 40 packets, ~1.6 kB in all
    for packet in packets:
        face.send(packet)
    face.send(b"L" * MAX_CARRIED_BYTES)  # too large to ride
    assert spill.sent == [b"L" * MAX_CARRIED_BYTES]
    assert face.bufferedAmount == sum(map(len, packets))
    rode = []
    while padding := face.take():
        assert len(padding) <= MAX_CARRIED_BYTES
        voice, got = carried(opus_with_padding(opus_packets[0], padding))
        assert 0 <= voice - len(opus_packets[0]) <= 4  # the voice, a code 3 header and the padding's length
        rode += got
    assert rode == packets and face.bufferedAmount == 0
    with pytest.raises(ValueError, match="cannot ride"):
        FaceOverVoice().send(b"L" * MAX_CARRIED_BYTES)


def test_padding_that_is_not_a_carrier_carries_nothing(opus_packets):
    assert carried(opus_packets[0]) == (len(opus_packets[0]), [])
    assert carried(opus_with_padding(opus_packets[0], bytes(40)))[1] == []  # another sender's zeroed padding
    damaged = carrier([b"abc", b"defg"])[:-2] + b"\x7f"  # the second packet cut short
    assert carried(opus_with_padding(opus_packets[0], damaged))[1] == [b"abc"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_hostile_voice_packets_never_raise_and_carry_at_most_their_bytes(data):
    try:
        _, frames, padding = opus_frames(data)
        assert sum(map(len, frames)) + len(padding) <= len(data)
    except PacketError:
        pass
    voice, packets = carried(data)
    assert 0 <= voice <= len(data) and sum(map(len, packets)) <= len(data)


def test_the_receiver_takes_only_frames_from_the_voice(sample_video):
    from talkcodec.transport.receiver import FaceReceiver

    import talkcodec
    from talkcodec.packet import PacketKind
    from talkcodec.video import read_frames

    encoder = talkcodec.get_codec("mesh").encoder(fps=25)
    packets = [p for frame in read_frames(sample_video, fps=25, max_seconds=0.2) for p in encoder.encode(frame)]
    encoder.close()
    reference = next(p for p in packets if p.kind == PacketKind.REFERENCE)
    frame = next(p for p in packets if p.kind == PacketKind.FRAME)
    receiver = FaceReceiver()
    receiver.on_message(reference.to_bytes(), frames_only=True)  # a reference does not ride the voice
    assert receiver.stats.total.packets_refused == 1
    receiver.on_message(frame.to_bytes(), frames_only=True)
    assert receiver.stats.total.frame_packets_received == 1
    receiver.close()


def test_the_offer_has_no_header_extensions():
    from aiortc import RTCSessionDescription
    from talkcodec.transport.overhead import without_header_extensions

    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=rtpmap:96 opus/48000/2\r\n"
    lean = without_header_extensions(RTCSessionDescription(sdp=sdp, type="offer"))
    assert "extmap" not in lean.sdp and "a=rtpmap:96 opus/48000/2" in lean.sdp and lean.type == "offer"
