"""The sending half of a talkcodec call over one RTCPeerConnection (the receiving half:
``receiver.py``).

Channels (both directions share them): ``frames`` is unordered with no retransmission (a late
frame is a useless frame), ``control`` is reliable and ordered and carries reference images
(binary talkcodec packets) and control messages (``control.py``: typed, checked JSON text).
Audio is an ordinary Opus track; when the call has one, the frame packets ride in its Opus
packets' padding instead of the ``frames`` channel (``voice.py``: no headers of their own, no
SCTP acknowledgements back), and ``frames`` only takes what is too large for that. Everything
from the other side is untrusted: malformed messages and packets, and more than the receiver
holds, are refused and counted.

Sender: capture + encode run in a worker thread paced on the frame clock, feeding a bounded
asyncio queue; the event loop sends, dropping frame packets while the channel's buffer is
full (congestion) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from talkcodec.audio import CALL_AUDIO_FRAME_MS, CALL_AUDIO_KBPS
from talkcodec.packet import Packet, PacketKind
from talkcodec.registry import get_codec
from talkcodec.video import read_frames

from . import control
from .media import FileAudioTrack
from .stats import CallStats
from .voice import FaceOverVoice

CHANNEL_BUFFER_LIMIT = 16 * 1024  # bytes waiting in the frames channel before packets are dropped
REFERENCE_REQUEST_INTERVAL = 1.0  # the sender honours at most one reference request a second

log = logging.getLogger(__name__)


def frames_channel_options() -> dict[str, Any]:
    return {"ordered": False, "maxRetransmits": 0}


class LossyChannel:
    """Drops a deterministic share of sent messages (tests and benchmarks of packet loss)."""

    def __init__(self, channel: Any, loss: float):
        self.channel, self.loss, self._count = channel, loss, 0

    @property
    def bufferedAmount(self) -> int:
        return self.channel.bufferedAmount

    def send(self, data: bytes | str) -> None:
        self._count += 1
        if int(self._count * self.loss) != int((self._count - 1) * self.loss):
            return  # lost on the way
        self.channel.send(data)


def source_frames(source: str, fps: float, loop: bool, seconds: float | None) -> Iterator[np.ndarray]:
    """Frames of a file (looped if asked) or a camera (``/dev/video*``) on the frame clock."""
    produced = 0
    while True:
        for frame in read_frames(source, fps=fps):
            yield frame
            produced += 1
            if seconds is not None and produced >= seconds * fps:
                return
        if not loop or source.startswith("/dev/video"):
            return


class FaceSender:
    def __init__(self, source: str, codec: str = "mesh", settings: dict | None = None, fps: float = 25.0,
                 loop: bool = False, seconds: float | None = None, stats: CallStats | None = None,
                 audio_kbps: float = CALL_AUDIO_KBPS, audio_frame_ms: int = CALL_AUDIO_FRAME_MS,
                 face_over_voice: bool = True):  # fmt: skip
        self.source, self.fps, self.loop, self.seconds = source, fps, loop, seconds
        self.codec = get_codec(codec, **(settings or {}))
        self.stats = stats or CallStats()
        has_audio = not source.startswith("/dev/video")
        # the frame packets' route when the call has a voice (else the frames channel)
        self.face_over_voice = FaceOverVoice() if has_audio and face_over_voice else None
        self.audio = FileAudioTrack(source, loop, audio_kbps, audio_frame_ms, self.face_over_voice) if has_audio else None
        self._stop = threading.Event()
        # The slow start-up (mediapipe graphs, opening the input) happens here, before the call
        # connects, so it neither delays the first frames nor stalls the call's event loop.
        # The first frame is encoded here too: mediapipe's first real inference (and the reference
        # image) take up to a second, which on the frame clock would make every frame late.
        self._encoder = self.codec.encoder(fps=fps)
        self.frames_per_packet = self._encoder.frames_per_packet  # the most frames one packet carries
        try:
            self._source = source_frames(source, fps, loop, seconds)
            first = next(self._source, None)
            self._first_packets = [] if first is None else self._encoder.encode(first)
        except BaseException:
            self._encoder.close()
            raise
        self._started = False
        self._last_reference_request = -math.inf
        self._warned_slow = False
        self.input_ended = False  # the capture stopped because the input ended (not stop())
        self.last_seq = -1  # seq of the last frame packet made (sent or dropped)

    def on_control(self, message: control.Message) -> None:
        """A request from the receiver (already parsed and checked by ``control.parse``). Reference
        requests are honoured at most once per ``REFERENCE_REQUEST_INTERVAL``: a reference costs
        kilobytes, and the other side must not be able to make this side send them without end."""
        if isinstance(message, control.KeyRequest):
            self._encoder.request_key()
        elif isinstance(message, control.ReferenceRequest):
            now = time.monotonic()
            if now - self._last_reference_request >= REFERENCE_REQUEST_INTERVAL:
                self._last_reference_request = now
                self._encoder.request_reference()
            else:
                self.stats.total.control_refused += 1

    def _capture(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, start: float, frames: Iterator) -> None:
        """Worker thread: read, pace, encode; hands packets to the event loop."""

        def offer(item: list[Packet] | None) -> None:
            if queue.full():  # the loop is behind: drop the oldest frame's packets, never a reference
                kept = [p for p in queue.get_nowait() or [] if p.kind != PacketKind.FRAME]
                self.stats.total.frame_packets_dropped += 1
                item = kept + (item or []) if item is not None or kept else None
            queue.put_nowait(item)

        def hand(item: list[Packet] | None) -> None:
            try:
                loop.call_soon_threadsafe(offer, item)
            except RuntimeError:  # the call's event loop has closed: nobody to hand packets to
                self._stop.set()

        encoder = self._encoder
        assert encoder is not None
        try:
            if self._first_packets:  # frame 0, encoded ahead, leaves at its time on the clock
                time.sleep(max(0.0, start - time.time()))
                hand(self._first_packets)
            for index, frame in enumerate(frames, start=1):
                if self._stop.is_set():
                    break
                delay = start + index / self.fps - time.time()
                if delay > 0:
                    time.sleep(delay)
                elif -delay > 1 / self.fps:  # more than a frame behind: this frame's time has passed
                    hand(encoder.skip())
                    self._skipped(index)
                    continue
                hand(encoder.encode(frame))
            self.input_ended = not self._stop.is_set()
            hand(encoder.flush())  # frames held back for a packet of several
        finally:
            hand(None)  # the bye leaves now: closing mediapipe can take a while
            encoder.close()

    def _skipped(self, index: int) -> None:
        """Count a frame dropped to stay in real time; say once that this machine is too slow."""
        self.stats.total.frames_skipped_at_sender += 1
        if not self._warned_slow and index >= 2 * self.fps:  # judged after 2 s (start-up is slower)
            self._warned_slow = True
            share = self.stats.total.frames_skipped_at_sender / index
            log.warning(
                "talkcodec: warning: this machine cannot encode %s at %g fps (%.0f %% of frames dropped so far): "
                "the other side sees those frames held; a faster machine, a lower --fps or --codec mesh would help",
                self.codec.name, self.fps, 100 * share,
            )  # fmt: skip

    async def run(self, frames: Any, channel: Any) -> None:
        """Send until the input ends or ``stop()``; then a ``bye``. ``frames``: where frame packets
        go (the frames channel or ``face_over_voice``), ``channel``: the control channel."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=int(2 * self.fps))

        start = time.time() + 0.05
        self._started = True
        channel.send(control.encode(control.Start(start, self.fps, self.frames_per_packet)))
        if self.audio is not None:
            self.audio.start(start)
        worker = threading.Thread(
            target=self._capture, args=(loop, queue, start, self._source), name="talkcodec-capture", daemon=True
        )
        worker.start()
        try:
            while (packets := await queue.get()) is not None:
                for packet in packets:
                    wire = packet.to_bytes()
                    if packet.kind == PacketKind.FRAME:
                        self.last_seq = packet.last_seq
                    if packet.kind != PacketKind.FRAME:
                        channel.send(wire)
                        self.stats.total.reference_bytes += len(wire)
                    elif frames.bufferedAmount > CHANNEL_BUFFER_LIMIT:
                        self.stats.total.frame_packets_dropped += 1
                    else:
                        frames.send(wire)
                        self.stats.total.frame_packets_sent += 1
                        self.stats.total.frame_bytes_sent += len(wire)
            channel.send(control.encode(control.Bye(self.last_seq, "input_ended" if self.input_ended else "hung_up")))
        finally:
            self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if not self._started:  # never ran: the capture thread will not close the encoder
            self._started = True
            self._encoder.close()
