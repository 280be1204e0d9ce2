"""What every talkcodec codec shares: a vector of symbols per frame in key / delta packets that
depend on a reference image.

Sender (``FramePacketizer``): a key packet every ``key_interval`` frames (or on request, or
after a new reference) codes its symbols alone; a delta codes the difference from its key's,
so a lost packet costs one frame. An empty payload means "no face: hold the last frame".
Receiver (``StreamDecoder``): keeps the last few references, follows keys and deltas, conceals
what it cannot decode (the last frame, else the reference), and says when it needs a key or a
reference. Codecs subclass it with how a reference packet is read and how symbols are drawn.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..api import Codec, Decoder, Encoder, Frame
from ..errors import PacketError
from ..face import CropSettings, FaceObservation, FaceTracker
from ..packet import Packet, PacketKind, encode_image, pack
from ..quant import VectorStream

MAX_REFERENCES = 4  # a decoder keeps the few most recent references


class FramePacketizer:
    """Sender side of key / delta coding for one stream."""

    def __init__(self, codec_id: int, key_interval: int, fps: Fraction):
        self.codec_id, self.key_interval, self.fps = codec_id, key_interval, fps
        self.want_key = False
        self._key_seq = -1
        self._key_symbols: np.ndarray | None = None

    def packet(self, seq: int, ref_id: int, symbols: np.ndarray | None, stream: VectorStream,
               base: np.ndarray | None = None) -> Packet:  # fmt: skip
        """The frame packet of ``symbols`` (None: no face) at ``seq``, drawn over ``ref_id``;
        keys are coded against ``base`` (the reference's own symbols) when given."""
        distance = seq - self._key_seq
        if self.want_key or self._key_symbols is None or distance >= self.key_interval:
            payload = b"" if symbols is None else stream.encode_key(symbols, base)
            self._key_seq, self._key_symbols, self.want_key = seq, symbols, False
            return Packet(self.codec_id, PacketKind.FRAME, seq, payload, key=True, ref_id=ref_id, fps=self.fps)
        payload = b"" if symbols is None else stream.encode_delta(symbols, self._key_symbols, distance)
        return Packet(self.codec_id, PacketKind.FRAME, seq, payload, key_distance=distance)


class StreamEncoder(Encoder):
    """Sender side shared by the codecs: the face front end, reference ids, key and reference
    requests, and when to send a new reference (first frame, moved crop, request, face found
    again, head turned ``refresh_degrees`` from the reference's). Subclasses say what a frame
    sends. ``settings`` needs key_interval, crop, refresh_degrees, reference_format/quality."""

    stream: VectorStream
    key_base: np.ndarray | None = None  # what keys are coded against (None: the typical values)

    def __init__(self, codec: Codec, fps: Fraction, settings: Any, segmentation: bool = False):
        self.codec, self.settings = codec, settings
        self.tracker = FaceTracker(CropSettings(track=settings.crop), segmentation=segmentation)
        self.packets = FramePacketizer(codec.codec_id, settings.key_interval, fps)
        self.last_observation: FaceObservation | None = None
        self._seq, self._ref_id = 0, -1
        self._ref_angles: np.ndarray | None = None  # head angles of the current reference; None: no face in it
        self._want_reference = False

    @abstractmethod
    def symbols(self, observation: FaceObservation) -> np.ndarray:
        """The quantized symbols of a frame with a face."""

    @abstractmethod
    def head_angles(self, observation: FaceObservation, symbols: np.ndarray) -> np.ndarray:
        """Head orientation in degrees (any fixed convention): drives the reference refresh."""

    @abstractmethod
    def reference_meta(self, observation: FaceObservation, symbols: np.ndarray | None) -> dict[str, Any]:
        """What a new reference packet carries besides its image (``symbols`` None: no face)."""

    def request_key(self) -> None:
        self.packets.want_key = True

    def request_reference(self) -> None:
        self._want_reference = True

    def encode(self, frame: np.ndarray, audio: np.ndarray | None = None) -> list[Packet]:
        observation = self.tracker.process(frame)
        self.last_observation = observation
        symbols = None if observation.landmarks is None else self.symbols(observation)
        angles = None if symbols is None else self.head_angles(observation, symbols)
        turned = (
            angles is not None and self._ref_angles is not None
            and np.abs(angles - self._ref_angles).max() > self.settings.refresh_degrees
        )  # fmt: skip
        found_again = symbols is not None and self._ref_angles is None
        packets: list[Packet] = []
        if self._ref_id < 0 or observation.crop_changed or self._want_reference or turned or found_again:
            self._ref_id = (self._ref_id + 1) % 256
            settings = self.settings
            meta = {"image": encode_image(observation.crop, settings.reference_format, settings.reference_quality),
                    **self.reference_meta(observation, symbols)}  # fmt: skip
            packets.append(Packet(self.codec.codec_id, PacketKind.REFERENCE, self._seq, pack(meta), ref_id=self._ref_id))
            self._ref_angles = angles
            self._want_reference, self.packets.want_key = False, True
        packets.append(self.packets.packet(self._seq, self._ref_id, symbols, self.stream, self.key_base))
        self._seq += 1
        return packets

    def close(self) -> None:
        self.tracker.close()


@dataclass
class StreamReference:
    image: np.ndarray  # (256, 256, 3) uint8 as received
    stream: VectorStream | None  # how its frames are coded; None: no face in it (frames hold)
    base: np.ndarray | None = None  # the reference's own symbols, which keys are coded against


class StreamDecoder(Decoder):
    """Receiver side: references, keys, deltas, concealment. Subclasses read references and draw."""

    def __init__(self, codec: Codec, reference: np.ndarray | None = None):
        self.codec = codec
        self._references: dict[int, StreamReference] = {}
        self._ref: StreamReference | None = None
        self._key_seq = -1
        self._key_symbols: np.ndarray | None = None
        self._fps = Fraction(25)
        self._last: Frame | None = None
        self._initial = reference
        self._needs_key = self._needs_reference = False

    @property
    def needs_key(self) -> bool:
        return self._needs_key

    @property
    def needs_reference(self) -> bool:
        return self._needs_reference

    @abstractmethod
    def read_reference(self, packet: Packet) -> StreamReference:
        """Parse a reference packet (``PacketError`` when malformed)."""

    @abstractmethod
    def render(self, reference: StreamReference, symbols: np.ndarray, seq: int) -> np.ndarray:
        """The (256, 256, 3) uint8 frame ``seq`` of ``symbols`` over ``reference``."""

    def _emit(self, image: np.ndarray | None, seq: int, concealed: bool) -> list[Frame]:
        if image is None:
            candidates = (self._last.image if self._last else None, self._ref.image if self._ref else None, self._initial)
            image = next((c for c in candidates if c is not None), None)
            if image is None:
                return []  # nothing to show yet
        frame = Frame(image, seq, float(seq / self._fps), concealed)
        self._last = frame
        return [frame]

    def decode(self, packet: Packet | None) -> list[Frame]:
        if packet is None:
            return self._emit(None, self._last.seq + 1 if self._last else 0, True)
        if packet.codec_id != self.codec.codec_id:
            raise PacketError(f"a {packet.codec} packet given to the {self.codec.name} decoder")
        if packet.kind == PacketKind.REFERENCE:
            reference = self.read_reference(packet)
            self._references.pop(packet.ref_id, None)  # a re-sent id counts as the newest
            self._references[packet.ref_id] = reference
            if len(self._references) > MAX_REFERENCES:
                del self._references[next(iter(self._references))]
            return []
        if packet.kind != PacketKind.FRAME:
            return []
        if packet.key:
            self._fps = packet.fps or self._fps
            self._ref = self._references.get(packet.ref_id)
            self._key_seq, self._key_symbols = packet.seq, None
            self._needs_reference = self._ref is None
            if self._ref is None:
                self._needs_key = True  # the reference was lost: the sender must resend it
                return self._emit(None, packet.seq, True)
            if not packet.payload or self._ref.stream is None:
                self._needs_key = False
                return self._emit(None, packet.seq, False)  # no face: hold
            try:
                self._key_symbols = self._ref.stream.decode_key(packet.payload, self._ref.base)
            except PacketError:
                self._needs_key = True  # a corrupt key: its deltas cannot decode either
                raise
            self._needs_key = False
            return self._emit(self.render(self._ref, self._key_symbols, packet.seq), packet.seq, False)
        if packet.key_seq != self._key_seq or self._ref is None:
            self._needs_key = True  # its key never arrived
            return self._emit(None, packet.seq, True)
        if not packet.payload or self._key_symbols is None or self._ref.stream is None:
            return self._emit(None, packet.seq, self._needs_key)  # a hold; concealment if the key was bad
        symbols = self._ref.stream.decode_delta(packet.payload, self._key_symbols, packet.key_distance)
        return self._emit(self.render(self._ref, symbols, packet.seq), packet.seq, False)
