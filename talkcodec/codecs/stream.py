"""What every talkcodec codec shares: a vector of symbols per frame in key / delta packets that
depend on a reference image.

Sender (``FramePacketizer``): a key packet every ``key_interval`` frames (or on request, or
after a new reference) codes its symbols alone; a delta codes the difference from its key's,
so a lost packet costs one frame. An empty payload means "no face: hold the last frame".
With ``frames_per_packet`` n > 1 a packet carries up to n consecutive frames (never across
a key or a reference), each coded against the one before: fewer bits, n - 1 frames later,
and a lost packet costs its n frames.
Receiver (``StreamDecoder``): keeps the last few references, follows keys and deltas, conceals
what it cannot decode (the last frame, else the reference), and says when it needs a key or a
reference. Codecs subclass it with how a reference packet is read and how symbols are drawn.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache, partial
from typing import Any

import cv2
import numpy as np
from threadpoolctl import ThreadpoolController

from ..api import Codec, Decoder, Encoder, Frame
from ..errors import PacketError
from ..face import CROP_SIZE, MAX_SIZE, CropSettings, FaceObservation, FaceTracker, crop_square
from ..packet import MAX_FRAMES_PER_PACKET, Packet, PacketKind, decode_image, encode_image, pack
from ..quant import VectorStream
from ..settings import setting
from .reference_choice import ReferenceChoice, portrait_score

MAX_REFERENCES = 4  # a decoder keeps the few most recent references
SIZE_STEP = 16  # a capped size is rounded down to a multiple of this

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _thread_pools() -> ThreadpoolController:
    return ThreadpoolController()  # made on the first frame drawn: every BLAS a decoder uses is loaded by then


def one_blas_thread() -> Any:
    """Context: BLAS (numpy's and scipy's OpenBLAS) on one thread while a frame is drawn. Their
    threads spin after each small product (the warp's triangulation, the landmark geometry) and
    take the cores from PyTorch's: `apb` with its networks decoded at 9 fps on 2 cores, 27 with
    this (DECISIONS.md). ~20 us a frame."""
    return _thread_pools().limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class StreamSettings:
    """What every talkcodec codec's stream shares (each codec adds its own settings)."""

    key_interval: int = setting(25, "a key packet every this many frames (1 s at 25 fps)", (1, 10_000))
    precision: float = setting(1.0, "quantization step multiplier: 2.0 = coarser motion, fewer bits", (0.05, 100))
    frames_per_packet: int = setting(1, "send frames in packets of this many (fewer bits, n - 1 frames later)",
                                     (1, MAX_FRAMES_PER_PACKET))  # fmt: skip
    reference_format: str = setting("webp", "how the reference image is coded", choices=("webp", "jpeg"))
    reference_quality: int = setting(90, "the reference image's WebP/JPEG quality", (1, 100))
    refresh_degrees: float = setting(30.0, "resend the reference when the head turns this far from it", (1, 180))
    reference_search_s: float = setting(3.0, "seconds after the first reference in which a clearly better frame (sharper, "
                                        "mouth closed, eyes open, frontal) replaces it, at most twice; 0: never", (0, 60))
    crop: bool = setting(True, "false: input frames are already square face crops (the bench's)")
    size: int = setting(CROP_SIZE, "side of the drawn face in pixels: the reference is sent at it, the frames cost the "
                        "same; capped at the face's own size in the input (never upscaled)", (CROP_SIZE, MAX_SIZE))


@dataclass
class _Run:
    """Frames held back for one packet: consecutive, with a face, over one reference."""

    seq: int
    ref_id: int
    key: bool
    distance: int  # 0 for a key; else seq - its key's seq
    stream: VectorStream
    base: np.ndarray | None
    rows: list[np.ndarray]


class FramePacketizer:
    """Sender side of key / delta coding for one stream; ``frames_per_packet`` > 1 holds frames
    back and sends them in one packet (one header; each frame predicted from the one before), and
    rounds the key interval up to whole packets."""

    def __init__(self, codec_id: int, key_interval: int, fps: Fraction, frames_per_packet: int = 1):
        self.codec_id, self.fps, self.frames_per_packet = codec_id, fps, frames_per_packet
        # keys fall on whole packets: a key interval of 8 with packets of 3 would end every 8 frames
        # with a packet of 2 (a header more, a dearer first frame); rounded up, 9 = three packets
        self.key_interval = -(-key_interval // frames_per_packet) * frames_per_packet
        self.want_key = False
        self._key_seq = -1
        self._key_symbols: np.ndarray | None = None
        self._run: _Run | None = None

    def _key_due(self, seq: int) -> bool:
        return self.want_key or self._key_symbols is None or seq - self._key_seq >= self.key_interval

    def add(self, seq: int, ref_id: int, symbols: np.ndarray | None, stream: VectorStream,
            base: np.ndarray | None = None) -> list[Packet]:  # fmt: skip
        """The packets made ready by frame ``seq`` (``symbols`` None: no face) drawn over
        ``ref_id``; keys are coded against ``base`` (the reference's own symbols) when given."""
        out: list[Packet] = []
        if self._run is not None and (symbols is None or ref_id != self._run.ref_id or self._key_due(seq)):
            out += self.flush()
        if symbols is None:  # a hold goes alone, at once
            if self._key_due(seq):
                self._key_seq, self._key_symbols, self.want_key = seq, None, False
                out.append(Packet(self.codec_id, PacketKind.FRAME, seq, b"", key=True, ref_id=ref_id, fps=self.fps))
            else:
                out.append(Packet(self.codec_id, PacketKind.FRAME, seq, b"", key_distance=seq - self._key_seq))
            return out
        if self._run is None:
            key = self._key_due(seq)
            if key:
                self._key_seq, self._key_symbols, self.want_key = seq, symbols, False
            self._run = _Run(seq, ref_id, key, seq - self._key_seq, stream, base, [])
        self._run.rows.append(symbols)
        if len(self._run.rows) >= self.frames_per_packet:
            out += self.flush()
        return out

    def flush(self) -> list[Packet]:
        """The packet of the frames held back, if any."""
        run, self._run = self._run, None
        if run is None:
            return []
        rows = np.stack(run.rows)  # (n, D)
        if run.key:
            return [Packet(self.codec_id, PacketKind.FRAME, run.seq, run.stream.encode_key(rows, run.base),
                           key=True, ref_id=run.ref_id, fps=self.fps, frames=len(rows))]  # fmt: skip
        assert self._key_symbols is not None
        payload = run.stream.encode_delta(rows, self._key_symbols, run.distance)
        return [Packet(self.codec_id, PacketKind.FRAME, run.seq, payload, key_distance=run.distance, frames=len(rows))]


class StreamEncoder(Encoder):
    """Sender side shared by the codecs: the face front end, reference ids, key and reference
    requests, and when to send a new reference (first frame, moved crop, request, face found
    again, head turned ``refresh_degrees`` from the reference's, a clearly better portrait in
    the first ``reference_search_s``: ``reference_choice.py``). Subclasses say what a frame
    sends; ``frames_per_packet`` given overrides the settings' (the learned codecs pick it from
    the audio look-ahead)."""

    stream: VectorStream
    key_base: np.ndarray | None = None  # what keys are coded against (None: the typical values)

    def __init__(self, codec: Codec, fps: Fraction, settings: StreamSettings, frames_per_packet: int | None = None):
        self.codec, self.settings = codec, settings
        self.tracker = FaceTracker(CropSettings(track=settings.crop), segmentation=False)
        self.frames_per_packet = frames_per_packet or settings.frames_per_packet
        self.packets = FramePacketizer(codec.codec_id, settings.key_interval, fps, self.frames_per_packet)
        self.last_observation: FaceObservation | None = None
        self.size = self.capped_from = None  # fixed by the stream's first reference with a face
        self._frame: np.ndarray | None = None  # the last input frame (the sized crop is cut from it)
        self._seq, self._ref_id = 0, -1
        self._ref_angles: np.ndarray | None = None  # head angles of the current reference; None: no face in it
        self._want_reference = False
        self.choice = ReferenceChoice(round(settings.reference_search_s * float(fps)))

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

    def picture_size(self, observation: FaceObservation) -> int:
        """The side the receiver draws at: the ``size`` setting, capped at the side the crop has in
        the input (rounded down to ``SIZE_STEP``): a small face is never upscaled. Fixed by the
        first reference that shows a face (every frame of a stream has one size)."""
        if self.size is not None:
            return self.size
        native = max(CROP_SIZE, int(observation.crop_box[2]) // SIZE_STEP * SIZE_STEP)
        size = min(self.settings.size, native)
        if observation.landmarks is not None:
            self.size = size
            if size < self.settings.size:
                self.capped_from = self.settings.size
                log.warning("talkcodec: the face crop is %d px in this input: drawn at %d px, not the %d asked "
                            "(a face is never upscaled)", int(observation.crop_box[2]), size, self.settings.size)  # fmt: skip
        return size

    @property
    def last_crop(self) -> np.ndarray | None:
        """The last frame's face crop at the stream's picture size (what the receiver draws)."""
        observation = self.last_observation
        if observation is None or self._frame is None:
            return None
        return self._sized_crop(self._frame, observation, self.picture_size(observation))

    @staticmethod
    def _sized_crop(frame: np.ndarray, observation: FaceObservation, size: int) -> np.ndarray:
        if size == observation.crop.shape[0]:
            return observation.crop
        return crop_square(frame, observation.crop_box, size)

    def encode(self, frame: np.ndarray, audio: np.ndarray | None = None) -> list[Packet]:
        observation = self.tracker.process(frame)
        self.last_observation, self._frame = observation, frame
        symbols = None if observation.landmarks is None else self.symbols(observation)
        angles = None if symbols is None else self.head_angles(observation, symbols)
        turned = (
            angles is not None and self._ref_angles is not None
            and np.abs(angles - self._ref_angles).max() > self.settings.refresh_degrees
        )  # fmt: skip
        found_again = symbols is not None and self._ref_angles is None
        refresh = self._ref_id < 0 or observation.crop_changed or self._want_reference or turned or found_again
        score = None  # how good a reference this frame makes: scored when one goes out or may be replaced
        if symbols is not None and (refresh or self.choice.searching(self._seq)):
            assert observation.landmarks is not None and angles is not None
            score = portrait_score(observation.crop, observation.landmarks, angles)
        packets: list[Packet] = []
        if refresh or (score is not None and self.choice.better(self._seq, score)):
            packets += self.packets.flush()  # frames held back over the old reference go first
            self._ref_id = (self._ref_id + 1) % 256
            settings = self.settings
            picture = self._sized_crop(frame, observation, self.picture_size(observation))
            meta = {"image": encode_image(picture, settings.reference_format, settings.reference_quality),
                    **self.reference_meta(observation, symbols)}  # fmt: skip
            packets.append(Packet(self.codec.codec_id, PacketKind.REFERENCE, self._seq, pack(meta), ref_id=self._ref_id))
            self._ref_angles = angles
            self.choice.sent(self._seq, score)
            self._want_reference, self.packets.want_key = False, True
        packets += self.packets.add(self._seq, self._ref_id, symbols, self.stream, self.key_base)
        self._seq += 1
        return packets

    def flush(self) -> list[Packet]:
        return self.packets.flush()

    def skip(self) -> list[Packet]:
        packets = self.packets.flush()  # a packet's frames are consecutive: a gap ends it
        self._seq += 1
        return packets

    def close(self) -> None:
        self.tracker.close()


def reference_image(meta: dict[str, Any], codec: str) -> np.ndarray:
    """The (S, S, 3) picture of a reference packet's fields: S in CROP_SIZE..MAX_SIZE as sent;
    any other shape (untrusted) is resized to CROP_SIZE x CROP_SIZE."""
    if not isinstance(meta, dict) or not isinstance(meta.get("image"), bytes):
        raise PacketError(f"{codec} reference packet without an image")
    image = decode_image(meta["image"])
    height, width = image.shape[:2]
    if height != width or not CROP_SIZE <= height <= MAX_SIZE:
        image = cv2.resize(image, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    return image


@dataclass
class StreamReference:
    image: np.ndarray  # (S, S, 3) uint8 as received, S in CROP_SIZE..MAX_SIZE (landmarks stay in CROP_SIZE pixels)
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
        # frames of a packet of several, drawn when due: (seq, draw it or None for a hold, concealed)
        self._pending: deque[tuple[int, Callable[[], np.ndarray] | None, bool]] = deque()
        self._ready: list[Frame] = []  # drawn before a packet that then failed to decode
        self._floor = 0  # concealment never goes back before this seq (``skip_to``)

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
        """The (S, S, 3) uint8 frame ``seq`` of ``symbols`` over ``reference`` (S: its picture's side)."""

    def _emit(self, image: np.ndarray | None, seq: int, concealed: bool) -> list[Frame]:
        if image is None:
            candidates = (self._last.image if self._last else None, self._ref.image if self._ref else None, self._initial)
            image = next((c for c in candidates if c is not None), None)
            if image is None:
                return []  # nothing to show yet
        frame = Frame(image, seq, float(seq / self._fps), concealed)
        self._last = frame
        return [frame]

    def _conceal(self, packet: Packet, needs_key: bool = True) -> list[Frame]:
        """Hold frames for the frames ``packet`` carries (its first now, the rest when due)."""
        self._needs_key = needs_key
        self._pending.extend((seq, None, needs_key) for seq in range(packet.seq + 1, packet.last_seq + 1))
        return self._emit(None, packet.seq, needs_key)

    def _draw(self, reference: StreamReference, rows: np.ndarray, seq: int) -> list[Frame]:
        """Frame ``seq`` of the (n, D) symbol rows now; the later rows wait until they are due."""
        first = self._draw_one(seq, partial(self.render, reference, rows[0], seq), False)
        self._pending.extend((seq + i, partial(self.render, reference, row, seq + i), False) for i, row in enumerate(rows[1:], 1))
        return first

    def _draw_one(self, seq: int, draw: Callable[[], np.ndarray] | None, concealed: bool) -> list[Frame]:
        try:
            with one_blas_thread():
                image = None if draw is None else draw()
        except PacketError:  # a frame the network cannot draw: held, in its place
            image, concealed = None, True
        return self._emit(image, seq, concealed)

    def _next_pending(self) -> list[Frame]:
        return self._draw_one(*self._pending.popleft())

    def skip_to(self, seq: int) -> None:
        """A receiver that jumped ahead (after a stall) plays from ``seq`` on: frames before it
        that still wait are dropped, and concealment goes on from ``seq``."""
        self._ready = [f for f in self._ready if f.seq >= seq]
        self._pending = deque(p for p in self._pending if p[0] >= seq)
        self._floor = seq

    def decode(self, packet: Packet | None) -> list[Frame]:
        """Frames made ready by ``packet``. A packet of several frames gives its first frame; the
        others are drawn by the calls that follow: ``decode(None)`` (a transport playing frame by
        frame: each then reads the audio that has arrived by its time), the next frame packet
        (which first gives the earlier frames still waiting) or ``flush()``."""
        if packet is None:
            if self._ready or self._pending:
                return [self._ready.pop(0)] if self._ready else self._next_pending()
            return self._emit(None, max(self._last.seq + 1 if self._last else 0, self._floor), True)
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
        waiting, self._ready = self._ready, []
        while self._pending and self._pending[0][0] < packet.seq:  # frames due before this packet's
            waiting += self._next_pending()
        self._pending.clear()  # a packet that carries the frames still waiting supersedes them
        try:
            return waiting + self._decode_frames(packet)
        except PacketError:
            self._ready = waiting  # drawn already: flush() gives them
            raise

    def flush(self) -> list[Frame]:
        """The frames still waiting in a packet of several (end of stream, or a damaged packet)."""
        out, self._ready = self._ready, []
        while self._pending:
            out += self._next_pending()
        return out

    def _decode_frames(self, packet: Packet) -> list[Frame]:
        if packet.key:
            self._fps = packet.fps or self._fps
            self._ref = self._references.get(packet.ref_id)
            self._key_seq, self._key_symbols = packet.seq, None
            self._needs_reference = self._ref is None
            if self._ref is None:
                return self._conceal(packet)  # the reference was lost: the sender must resend it
            if not packet.payload or self._ref.stream is None:
                return self._conceal(packet, needs_key=False)  # no face: hold
            try:
                rows = self._ref.stream.decode_key(packet.payload, self._ref.base, packet.frames)
            except PacketError:
                self._needs_key = True  # a corrupt key: its deltas cannot decode either
                raise
            self._key_symbols, self._needs_key = rows[0], False
            return self._draw(self._ref, rows, packet.seq)
        if packet.key_seq != self._key_seq or self._ref is None:
            return self._conceal(packet)  # its key never arrived
        if not packet.payload or self._key_symbols is None or self._ref.stream is None:
            return self._conceal(packet, self._needs_key)  # a hold; concealment if the key was bad
        rows = self._ref.stream.decode_delta(packet.payload, self._key_symbols, packet.key_distance, packet.frames)
        return self._draw(self._ref, rows, packet.seq)
