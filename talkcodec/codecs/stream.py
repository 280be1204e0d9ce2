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

import numpy as np

from ..api import Codec, Decoder, Frame
from ..errors import PacketError
from ..packet import Packet, PacketKind
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
