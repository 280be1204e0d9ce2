"""The two halves of a talkcodec call over one RTCPeerConnection.

Channels (both directions share them): ``frames`` is unordered with no retransmission (a late
frame is a useless frame), ``control`` is reliable and ordered and carries reference images
(binary talkcodec packets) and control messages (``control.py``: typed, checked JSON text).
Audio is an ordinary Opus track. Everything from the other side is untrusted: malformed
messages and packets, and more than the receiver holds, are refused and counted.

Sender: capture + encode run in a worker thread paced on the frame clock, feeding a bounded
asyncio queue; the event loop sends, dropping frame packets while the channel's buffer is
full (congestion) instead of queueing without bound.
Receiver: jitter buffer keyed on seq, playout ``playout_delay`` after capture time, or longer
when a frame's data comes later (an audio-driven decoder's look-ahead, frames the sender holds
back for packets of several: the receiver waits for the longer of the two, and draws each
frame of such a packet at its own time), decoding on a worker thread, concealment for missing
packets, key requests when the decoder needs a key, output as a ``RegeneratedTrack`` and
optionally an mp4 recording with the audio.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from talkcodec.audio import CALL_AUDIO_KBPS, OPUS_RATE, log_mel
from talkcodec.errors import PacketError, TalkcodecError
from talkcodec.packet import Packet, PacketKind
from talkcodec.registry import codec_class, get_codec, import_codecs
from talkcodec.settings import receiver_settings
from talkcodec.video import Mp4Writer, read_frames

from . import control
from .control import Message
from .jitter import JitterBuffer
from .media import FileAudioTrack, MonoResampler, RegeneratedTrack
from .stats import CallStats

CHANNEL_BUFFER_LIMIT = 16 * 1024  # bytes waiting in the frames channel before packets are dropped
KEY_REQUEST_INTERVAL = 0.25  # seconds between two key requests
REFERENCE_REQUEST_INTERVAL = 1.0  # the sender honours at most one reference request a second
MAX_PENDING_REFERENCES = 2  # reference packets waiting to be decoded; more are refused (a flood)

log = logging.getLogger(__name__)
BYE_REASONS = {"hung_up": "the other side hung up", "input_ended": "the other side's input ended"}


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
                 audio_kbps: float = CALL_AUDIO_KBPS, audio_frame_ms: int = 20):  # fmt: skip
        self.source, self.fps, self.loop, self.seconds = source, fps, loop, seconds
        self.codec = get_codec(codec, **(settings or {}))
        self.stats = stats or CallStats()
        has_audio = not source.startswith("/dev/video")
        self.audio = FileAudioTrack(source, loop, audio_kbps, audio_frame_ms) if has_audio else None
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

        encoder = self._encoder
        assert encoder is not None
        try:
            if self._first_packets:  # frame 0, encoded ahead, leaves at its time on the clock
                time.sleep(max(0.0, start - time.time()))
                loop.call_soon_threadsafe(offer, self._first_packets)
            for index, frame in enumerate(frames, start=1):
                if self._stop.is_set():
                    break
                delay = start + index / self.fps - time.time()
                if delay > 0:
                    time.sleep(delay)
                elif -delay > 1 / self.fps:  # more than a frame behind: this frame's time has passed
                    loop.call_soon_threadsafe(offer, encoder.skip())
                    self._skipped(index)
                    continue
                loop.call_soon_threadsafe(offer, encoder.encode(frame))
            self.input_ended = not self._stop.is_set()
            loop.call_soon_threadsafe(offer, encoder.flush())  # frames held back for a packet of several
        finally:
            loop.call_soon_threadsafe(offer, None)  # the bye leaves now: closing mediapipe can take a while
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
        """Send until the input ends or ``stop()``; then a ``bye``."""
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


JITTER_MARGIN_S = 0.08  # playout margin over the longest wait for a frame's data


class FaceReceiver:
    def __init__(self, stats: CallStats | None = None, playout_delay: float = 0.12, vanish_after: float = 5.0,
                 record: str | Path | None = None, show: bool = False, virtual_camera: bool = False,
                 settings: dict | None = None):  # fmt: skip
        self.stats = stats or CallStats()
        self.playout_delay, self.vanish_after = playout_delay, vanish_after
        self.settings = dict(settings or {})  # the decoder gets those its codec marks as receiver settings
        import_codecs()  # a first import mid-call would stall the event loop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="talkcodec-decode")
        # The audio-driven decoders' mel features import librosa on first use (seconds on 2 cores):
        # done on the decode thread while the call connects, not when the first frame is due.
        self._pool.submit(log_mel, np.zeros(OPUS_RATE // 10, np.float32))
        self.jitter = JitterBuffer()
        self.track = RegeneratedTrack()
        self.record, self.show, self.virtual_camera = record, show, virtual_camera
        self._decoder: Any = None
        self._t0: float | None = None
        self._fps = 25.0
        self._bye = ""  # why the other side said bye, in words; "" until it does
        self._local_t0 = math.inf
        self._last_seq: int | None = None  # the sender's last frame, told with its bye
        self._last_arrival = time.time()
        self._first_arrival: tuple[int, float] | None = None  # (last seq, local time) of the first frame packet
        self._first_seq = 0  # the first frame packet's first seq: where playout starts
        self._references_pending = 0  # reference packets waiting for the decode thread
        self._catch_ups = 0  # times playout fell 2 s behind and skipped ahead
        self._wait_s = 0.0  # the longest a frame must wait for its data: audio look-ahead, held-back frames
        self._audio_chunks: list[tuple[float, np.ndarray]] = []  # (local arrival time, samples)
        self._audio_fed: int | None = None  # samples given to an audio-driven decoder
        self._record_start = 0  # seq of the first recorded frame
        self.shown: deque[tuple[int, bool]] = deque(maxlen=100_000)  # (seq, concealed) of recent frames
        self.reason = ""
        self.failure: str | None = None  # set by the call when its sending half fails

    def abort(self, why: str) -> None:
        self.failure = why

    # -- input from the channels -------------------------------------------------------------
    def on_message(self, data: bytes | str) -> Message | None:
        """Handle one message from either channel; returns a control message meant for the sender.
        Anything malformed is refused and counted (``control_refused``, ``packets_refused``)."""
        self._last_arrival = time.time()
        if isinstance(data, str):
            try:
                message = control.parse(data)
            except control.ControlError as exc:
                self.stats.total.control_refused += 1
                log.debug("refused a control message: %s", exc)
                return None
            if isinstance(message, control.Start) and self._t0 is None:
                self._t0, self._fps = message.t0, message.fps
                self.track.fps = self._fps
                # the sender holds n - 1 frames back for a packet of n
                self._wait_s = max(self._wait_s, (message.frames_per_packet - 1) / self._fps)
            elif isinstance(message, control.Bye):
                self._bye = BYE_REASONS[message.why]
                self._last_seq = message.last_seq
            elif isinstance(message, control.Alive):
                self.stats.audio_reported(message.audio_bytes)  # as sent by the other side
            return message
        try:
            packet = Packet.from_bytes(data)
        except PacketError:
            self.stats.total.packets_refused += 1
            return None  # a damaged packet is a lost packet
        if self._decoder is None:
            try:
                wanted = receiver_settings(codec_class(packet.codec).Settings, self.settings)
                self._decoder = get_codec(packet.codec, **wanted).decoder()
            except TalkcodecError as exc:  # e.g. no weights for the codec the other side speaks
                self.abort(f"cannot decode the other side's {packet.codec} stream: {exc}")
                return None
            # an audio-driven decoder draws a frame once lookahead_s of audio after it has arrived
            self._wait_s = max(self._wait_s, self._decoder.lookahead_s)
            self._pool.submit(self._decoder.codec.load)  # networks now, on the decode thread, not on frame 0
        if packet.kind == PacketKind.FRAME:
            self.stats.total.frame_packets_received += 1
            self.stats.total.frame_bytes_received += len(data)
            arrived = time.time()
            # A packet leaves right after its LAST frame is captured: times are taken from that frame,
            # and a packet of n frames makes every frame wait n - 1 frames more before it can play.
            if self._first_arrival is None:
                self._first_arrival, self._first_seq = (packet.last_seq, arrived), packet.seq
            # Playout runs on this machine's clock: the earliest (least delayed) arrival fixes
            # when frame 0 would have arrived; the sender's t0 is only used for latency figures.
            if self._t0 is not None:  # the frame rate is known
                self._local_t0 = min(self._local_t0, arrived - packet.last_seq / self._fps)
            refused = self.jitter.refused
            self.jitter.push(packet)  # a late or duplicate packet is dropped there, not refused
            self.stats.total.packets_refused += self.jitter.refused - refused
        elif self._references_pending >= MAX_PENDING_REFERENCES:  # a flood: the decoder cannot keep up
            self.stats.total.packets_refused += 1
        else:
            self._references_pending += 1
            self._pool.submit(self._decode_reference, packet)  # references in order, on the decode thread
        return None

    def _decode_reference(self, packet: Packet) -> None:
        try:
            self._decode(packet, conceal=False)
        finally:
            self._references_pending -= 1

    def _fell_behind(self, frames: int) -> None:
        """Count frames skipped to catch up with the clock; say once if it keeps happening."""
        self.stats.total.frames_skipped_at_receiver += frames
        self._catch_ups += 1
        if self._catch_ups == 2:  # one stall happens (a busy machine); twice, the decoder is too slow
            log.warning(
                "talkcodec: warning: this machine cannot draw the %s stream at %g fps: frames are skipped to "
                "keep up (a faster machine, or a cheaper codec on the other side, e.g. --codec mesh)",
                self._decoder.codec.name, self._fps,
            )  # fmt: skip

    def _decode(self, packet: Packet | None, conceal: bool = True) -> list:
        """Decode on the worker thread; a frame packet the decoder rejects counts as lost, a
        rejected reference is dropped (the decoder then asks for a key)."""
        try:
            return self._decoder.decode(packet)
        except PacketError:
            return self._decoder.decode(None) if conceal else []
        except TalkcodecError as exc:  # a stream this decoder can never draw (other weights)
            self.abort(str(exc))
            return []

    async def pull_audio(self, track: Any) -> None:
        """Keep the received audio (for the recording) until the track ends."""
        from aiortc.mediastreams import MediaStreamError

        mono = MonoResampler()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = mono(frame)
            if self.record:  # only a recording needs the samples kept
                self._audio_chunks.append((time.time(), samples))
            if self._decoder is not None and self._decoder.uses_audio and self._first_arrival is not None:
                try:
                    self._pool.submit(self._feed_audio, samples, time.time())  # on the decode thread, in order
                except RuntimeError:  # the call is over: the pool is shut down
                    return

    def _feed_audio(self, samples: np.ndarray, arrived: float) -> None:
        """Give an audio-driven decoder the call's audio on the frames' timeline: the first chunk
        is placed by its arrival relative to frame 0's (the sender paces both on one clock)."""
        if self._audio_fed is None:
            first_seq, first_time = self._first_arrival  # type: ignore[misc]
            frame0 = min(self._local_t0, first_time - first_seq / self._fps)  # the least delayed arrival
            start = arrived - len(samples) / OPUS_RATE - frame0  # stream time of this chunk
            lead = int(round(start * OPUS_RATE))
            samples = np.concatenate([np.zeros(max(lead, 0), np.float32), samples[max(-lead, 0) :]])
            self._audio_fed = 0
        self._decoder.push_audio(samples, OPUS_RATE)
        self._audio_fed += len(samples)

    # -- playout ---------------------------------------------------------------------------
    async def run(self, send_control: Callable[[str], None], connected: Callable[[], bool]) -> str:
        """Play out until the sender says bye, vanishes, or the connection fails; the reason."""
        loop = asyncio.get_running_loop()
        writer: Mp4Writer | None = None
        last_request = 0.0
        self._last_arrival = time.time()  # the call starts now (set-up time is not silence)
        try:
            while True:
                now = time.time()
                if self.failure:
                    self.reason = self.failure
                    break
                if not connected():
                    self.reason = "the connection closed"
                    break
                if now - self._last_arrival > self.vanish_after:
                    self.reason = f"the other side vanished (nothing for {self.vanish_after:g} s)"
                    break
                if self._t0 is None or self._first_arrival is None:
                    if self._bye:
                        self.reason = self._bye
                        break
                    await asyncio.sleep(0.01)
                    continue
                if self.jitter.next_seq is None:
                    self.jitter.start(self._first_seq)
                    first_seq, first_time = self._first_arrival
                    self._local_t0 = min(self._local_t0, first_time - first_seq / self._fps)
                delay = max(self.playout_delay, self._wait_s + JITTER_MARGIN_S)
                due = int((now - self._local_t0 - delay) * self._fps)  # last seq whose time has come
                if self._last_seq is not None:
                    due = min(due, self._last_seq)  # nothing comes after the last frame: no concealing past it
                if self._bye and not len(self.jitter) and (self._last_seq is None or self.jitter.next_seq > self._last_seq):
                    self.reason = self._bye  # everything sent has been played
                    break
                if due - self.jitter.next_seq > 2 * self._fps:  # far behind (a stall): skip ahead
                    self._fell_behind(due - self.jitter.next_seq)
                    self.jitter.start(due)
                    await loop.run_in_executor(self._pool, self._decoder.skip_to, due)
                while self.jitter.next_seq is not None and self.jitter.next_seq <= due:
                    seq, packet = self.jitter.pop()
                    # no packet: the decoder draws the frame if an earlier packet of several carried it
                    # (drawn now, with the audio that has arrived by its time), else conceals it
                    frames = await loop.run_in_executor(self._pool, self._decode, packet)
                    frames = [f for f in frames if f.seq >= seq]  # after a skip ahead: not what is past
                    if packet is None and frames and frames[0].concealed:
                        self.stats.total.frames_concealed += 1
                    if self._decoder.needs_key and now - last_request > KEY_REQUEST_INTERVAL:
                        request = control.ReferenceRequest() if self._decoder.needs_reference else control.KeyRequest()
                        send_control(control.encode(request))
                        self.stats.total.key_requests += 1
                        last_request = now
                    for frame in frames:
                        shown = time.time()
                        self.stats.total.frames_shown += 1
                        self.shown.append((frame.seq, frame.concealed))
                        self.stats.total.latencies_ms.append((shown - (self._t0 + frame.seq / self._fps)) * 1000)
                        self.track.put(frame)
                        if self.record and writer is None:
                            writer = Mp4Writer(self.record, self._fps, frame.image.shape[1::-1], sample_rate=OPUS_RATE)
                            self._record_start = frame.seq
                        if writer is not None:
                            for _ in range(frame.seq - self._record_start - writer.frames_written + 1):
                                writer.write(frame.image)  # holds for frames that never came
                        self._display(frame.image)
                next_due = self._local_t0 + delay + (self.jitter.next_seq or 0) / self._fps
                await asyncio.sleep(min(max(next_due - time.time(), 0.001), 0.1))
        finally:
            self.track.put(None)
            if writer is not None:
                self._write_audio(writer)
                writer.close()
            self._pool.shutdown(wait=False)
        return self.reason

    def _write_audio(self, writer: Mp4Writer) -> None:
        """Lay the received audio under the recorded frames, aligned by arrival time: the first
        audio chunk plays at (its arrival - the first frame packet's arrival) + that frame's time."""
        if not self._audio_chunks or self._first_arrival is None:
            return
        seq, arrived = self._first_arrival
        offset = (self._audio_chunks[0][0] - arrived) + (seq - self._record_start) / self._fps
        audio = np.concatenate([chunk for _, chunk in self._audio_chunks])
        lead = int(round(offset * OPUS_RATE))
        audio = np.concatenate([np.zeros(max(lead, 0), np.float32), audio[max(-lead, 0) :]])
        writer.write_audio(audio[: int(writer.frames_written / self._fps * OPUS_RATE)])

    def _display(self, image: np.ndarray) -> None:
        if self.show:
            import cv2

            cv2.imshow("talkcodec", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.waitKey(1)
        if self.virtual_camera:
            if not hasattr(self, "_camera"):
                import pyvirtualcam

                self._camera = pyvirtualcam.Camera(image.shape[1], image.shape[0], self._fps)
            self._camera.send(image)
