"""Face packets carried inside the voice's Opus packets, so that the face pays no headers of its own.

A data-channel message costs ~90 bytes of IP/UDP/DTLS/SCTP headers and makes the other side
send an SCTP acknowledgement back; at 8-25 face packets a second that is 7-25 kbps on the wire
for 1-4 kbps of face data. The voice already crosses the network every 20-60 ms in SRTP packets,
so the face rides in them: in the Opus packet's own padding (RFC 6716 section 3.2.5, code 3
packets), which every Opus decoder skips, inside the SRTP payload, so it is encrypted like the
voice (an RTP header extension, RFC 8285, would travel in the clear) and the voice stays
decodable by any Opus receiver. RFC 6716 asks encoders to zero the padding so it cannot be a
covert channel; here both ends are talkcodec and the padding's use is documented (docs/FORMAT.md,
"Face over voice"), and a receiver that is not talkcodec only plays the voice.

Padding layout: the byte ``CARRIER_TAG``, then per face packet a varint length and the packet
(``docs/FORMAT.md``). What comes from the other side is untrusted: a packet that does not parse
carries no face (its voice still plays), and the face packets are checked by the receiver like
those from the data channel.

The receiver takes the voice packets before aiortc does (``listen``). The carrier is lossy like the voice (no retransmission: the ``frames`` channel is unordered with
no retransmission too); references and control messages stay on the reliable ``control`` channel.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from talkcodec.audio import OpusDecoder
from talkcodec.errors import PacketError
from talkcodec.quant import read_varint, write_varint

CARRIER_TAG = 0x74  # first padding byte of a talkcodec carrier (version 1); a zeroed padding starts with 0
MAX_CARRIED_BYTES = 600  # face bytes per voice packet: the RTP packet stays far under a 1200-byte MTU
MAX_OPUS_FRAME = 1275  # RFC 6716 R2: the largest frame an Opus packet may hold


def _frame_length(length: int) -> bytes:
    """RFC 6716 section 3.2.1: one byte below 252, else two."""
    if length < 252:
        return bytes([length])
    first = 252 + (length & 3)
    return bytes([first, (length - first) >> 2])


def _read_frame_length(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise PacketError("Opus packet cut in a frame length")
    if data[pos] < 252:
        return data[pos], pos + 1
    if pos + 1 >= len(data):
        raise PacketError("Opus packet cut in a frame length")
    return data[pos] + 4 * data[pos + 1], pos + 2


def opus_frames(packet: bytes) -> tuple[int, list[bytes], bytes]:
    """(TOC byte, the frames, the padding) of an Opus packet (RFC 6716 section 3.2); ``PacketError``
    if it is malformed."""
    if not packet:
        raise PacketError("empty Opus packet")
    toc, code, body = packet[0], packet[0] & 3, packet[1:]
    if code == 0:
        frames, padding = [body], b""
    elif code == 1:
        if len(body) % 2:
            raise PacketError("Opus code 1 packet of odd length")
        half = len(body) // 2
        frames, padding = [body[:half], body[half:]], b""
    elif code == 2:
        first, pos = _read_frame_length(body, 0)
        if pos + first > len(body):
            raise PacketError("Opus code 2 frame past the packet's end")
        frames, padding = [body[pos : pos + first], body[pos + first :]], b""
    else:
        if not body:
            raise PacketError("Opus code 3 packet without a frame count")
        vbr, padded, count = body[0] >> 7, (body[0] >> 6) & 1, body[0] & 0x3F
        if count == 0:
            raise PacketError("Opus code 3 packet of 0 frames")
        pos, pad = 1, 0
        while padded:
            if pos >= len(body):
                raise PacketError("Opus packet cut in its padding length")
            pad += 254 if body[pos] == 255 else body[pos]
            padded = body[pos] == 255
            pos += 1
        end = len(body) - pad
        if vbr:
            lengths = []
            for _ in range(count - 1):
                length, pos = _read_frame_length(body, pos)
                lengths.append(length)
            lengths.append(end - pos - sum(lengths))
        else:
            if (end - pos) % count:
                raise PacketError("Opus CBR frames of unequal length")
            lengths = [(end - pos) // count] * count
        if end < pos or min(lengths) < 0:
            raise PacketError("Opus frames past the packet's end")
        frames = []
        for length in lengths:
            frames.append(body[pos : pos + length])
            pos += length
        padding = body[end:]
    if any(len(f) > MAX_OPUS_FRAME for f in frames):
        raise PacketError(f"Opus frame over {MAX_OPUS_FRAME} bytes")
    return toc, frames, padding


def opus_with_padding(packet: bytes, padding: bytes) -> bytes:
    """The same Opus frames as a code 3 packet whose padding is ``padding`` (any padding it had is
    replaced); decoders play it exactly as ``packet``."""
    toc, frames, _ = opus_frames(packet)
    vbr = len({len(f) for f in frames}) > 1
    header = bytearray([(toc & ~3) | 3, vbr << 7 | (1 << 6 if padding else 0) | len(frames)])
    if padding:
        header += b"\xff" * (len(padding) // 254) + bytes([len(padding) % 254])  # 255 = 254 bytes and more
    if vbr:
        for frame in frames[:-1]:
            header += _frame_length(len(frame))
    return bytes(header) + b"".join(frames) + padding


def carrier(face_packets: list[bytes]) -> bytes:
    """The padding that carries ``face_packets``."""
    return bytes([CARRIER_TAG]) + b"".join(write_varint(len(p)) + p for p in face_packets)


def carried(opus_packet: bytes) -> tuple[int, list[bytes]]:
    """(bytes of voice, face packets) of a received Opus packet: the packet's length without its
    padding, and the face packets the padding carries ([] if none or it does not parse)."""
    try:
        _, _, padding = opus_frames(opus_packet)
    except PacketError:
        return len(opus_packet), []
    voice = len(opus_packet) - len(padding)
    if not padding or padding[0] != CARRIER_TAG:
        return voice, []  # no padding, or another sender's (zeroed) padding
    packets, pos = [], 1
    try:
        while pos < len(padding):
            length, pos = read_varint(padding, pos, max_bytes=2)
            if length == 0 or pos + length > len(padding):
                break  # damaged: what parsed before it is kept
            packets.append(padding[pos : pos + length])
            pos += length
    except PacketError:
        pass
    return voice, packets


class FaceOverVoice:
    """The sender's face packets waiting for the next voice packet: ``send`` and ``bufferedAmount``
    as a data channel has them (so ``FaceSender`` and ``LossyChannel`` take either), ``take`` for
    the audio track as it sends a packet. A packet too large to ride goes to ``spill`` (the
    ``frames`` data channel) instead."""

    def __init__(self, spill: Any = None) -> None:
        self.spill = spill
        self._waiting: deque[bytes] = deque()
        self.bufferedAmount = 0  # bytes waiting (the sender drops frames while too many wait)
        self.carried_bytes = 0  # padding bytes sent so far (face packets and their framing)

    def send(self, packet: bytes) -> None:
        if len(packet) > MAX_CARRIED_BYTES - 3:  # tag + a 2-byte length
            if self.spill is None:
                raise ValueError(f"a face packet of {len(packet)} bytes cannot ride the voice (at most {MAX_CARRIED_BYTES - 3})")
            self.spill.send(packet)
            return
        self._waiting.append(packet)
        self.bufferedAmount += len(packet)

    def take(self) -> bytes:
        """The padding for the voice packet leaving now: the waiting packets, oldest first, up to
        ``MAX_CARRIED_BYTES`` (b"" if none wait)."""
        taken: list[bytes] = []
        size = 1
        while self._waiting and size + len(self._waiting[0]) + 2 <= MAX_CARRIED_BYTES:
            packet = self._waiting.popleft()
            self.bufferedAmount -= len(packet)
            taken.append(packet)
            size += len(packet) + len(write_varint(len(packet)))
        if not taken:
            return b""
        padding = carrier(taken)
        self.carried_bytes += len(padding)
        return padding


def listen(rtp_receiver: Any, on_voice: Callable[[np.ndarray, int, int], None],
           on_face_packet: Callable[[bytes], None]) -> None:  # fmt: skip
    """Take the voice that ``rtp_receiver`` (aiortc's RTCRtpReceiver) gets as each RTP packet
    arrives: its samples (decoded here: mono float32, 48 kHz), RTP time and bytes of voice to
    ``on_voice``, the face packets it carries to ``on_face_packet``. aiortc's own receive path
    (a jitter buffer that holds 4 packets, 240 ms at 60 ms packets, then a decoder and a track)
    is not used: an audio-driven decoder needs the voice as it arrives, and the receiver places
    it by its RTP time (``playout.AudioPlacer``: lost packets leave silence). aiortc has no public
    hook for received RTP packets: this replaces the instance's handler."""
    opus = OpusDecoder()

    async def take(packet: Any, arrival_time_ms: int) -> None:
        voice, face_packets = carried(packet.payload)
        for face_packet in face_packets:
            on_face_packet(face_packet)
        on_voice(opus.decode(packet.payload), packet.timestamp, voice)

    rtp_receiver._handle_rtp_packet = take
