"""The receiving half of a talkcodec call: the other side's control messages (``control.py``)
and packets in, a jitter buffer keyed on seq, playout on one clock (``playout.py``:
``playout_delay`` after capture, or longer when a frame's data comes later, an audio-driven
decoder's look-ahead or frames held back for a packet of several; each frame of such a packet
is drawn at its own time), decoding on a worker thread, concealment for missing packets, key
and reference requests, output as a ``RegeneratedTrack`` and to the sinks (``sinks.py``: a
recording with the audio, a window, a virtual camera). Everything from the other side is
untrusted: malformed messages and packets, and more than the receiver holds, are refused and
counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from talkcodec.audio import OPUS_RATE, log_mel
from talkcodec.errors import PacketError, TalkcodecError
from talkcodec.packet import Packet, PacketKind
from talkcodec.registry import codec_class, get_codec, import_codecs
from talkcodec.settings import receiver_settings

from . import control
from .control import Message
from .jitter import JitterBuffer
from .media import RegeneratedTrack
from .playout import AudioPlacer, PlayoutClock
from .sinks import Recording, Sink, VirtualCamera, Window
from .stats import CallStats

KEY_REQUEST_INTERVAL = 0.25  # seconds between two key requests
MAX_PENDING_REFERENCES = 2  # reference packets waiting to be decoded; more are refused (a flood)
BYE_REASONS = {"hung_up": "the other side hung up", "input_ended": "the other side's input ended"}

log = logging.getLogger(__name__)


class FaceReceiver:
    """The receiving half of a call: the other side's control messages and packets in
    (``on_message``, ``on_audio``), frames out on the playout clock (``playout.py``) to the
    ``track`` and the sinks (``sinks.py``). ``clock``: local time in seconds (a fake one in tests).
    ``run`` plays out in real time, decoding on a worker thread; ``step(now)`` does one round of
    the same work synchronously (tests drive it without real time)."""

    def __init__(self, stats: CallStats | None = None, playout_delay: float = 0.12, vanish_after: float = 5.0,
                 record: str | Path | None = None, show: bool = False, virtual_camera: bool = False,
                 settings: dict | None = None, clock: Callable[[], float] = time.time):  # fmt: skip
        self.stats = stats or CallStats()
        self.vanish_after = vanish_after
        self.settings = dict(settings or {})  # the decoder gets those its codec marks as receiver settings
        self.clock = clock
        self.playout = PlayoutClock(playout_delay)
        self.audio = AudioPlacer(self.playout, OPUS_RATE)
        import_codecs()  # a first import mid-call would stall the event loop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="talkcodec-decode")
        # The audio-driven decoders' mel features import librosa on first use (seconds on 2 cores):
        # done on the decode thread while the call connects, not when the first frame is due.
        self._pool.submit(log_mel, np.zeros(OPUS_RATE // 10, np.float32))
        self.jitter = JitterBuffer()
        self.track = RegeneratedTrack()
        self.recording = Recording(record, self.playout) if record else None
        self.sinks: list[Sink] = [s for s in (self.recording, Window() if show else None,
                                              VirtualCamera(self.playout) if virtual_camera else None) if s]  # fmt: skip
        self._decoder: Any = None
        self._bye = ""  # why the other side said bye, in words; "" until it does
        self._last_seq: int | None = None  # the sender's last frame, told with its bye
        self._last_arrival = clock()
        self._playing = False  # playout has begun (at the first frame packet's first seq)
        self._first_seq: int | None = None  # the first frame packet's first seq: where playout starts
        self._references_pending = 0  # reference packets waiting for the decode thread
        self._catch_ups = 0  # times playout fell 2 s behind and skipped ahead
        self._last_request = -math.inf  # when a key or reference was last asked for
        self._audio_fed = False  # an audio-driven decoder has had its first chunk
        self.shown: deque[tuple[int, bool]] = deque(maxlen=100_000)  # (seq, concealed) of recent frames
        self.reason = ""
        self.failure: str | None = None  # set by the call when its sending half fails

    def abort(self, why: str) -> None:
        self.failure = why

    # -- input from the channels -------------------------------------------------------------
    def on_message(self, data: bytes | str, frames_only: bool = False) -> Message | None:
        """Handle one message from either channel, or (``frames_only``) a packet the voice carried;
        returns a control message meant for the sender. Anything malformed is refused and counted
        (``control_refused``, ``packets_refused``), and so is a reference that came with the voice
        (references take the reliable channel)."""
        self._last_arrival = now = self.clock()
        if isinstance(data, str):
            return self._on_control(data)
        try:
            packet = Packet.from_bytes(data)
        except PacketError:
            self.stats.total.packets_refused += 1
            return None  # a damaged packet is a lost packet
        if frames_only and packet.kind != PacketKind.FRAME:
            self.stats.total.packets_refused += 1
            return None
        if self._decoder is None and not self._open_decoder(packet):
            return None
        if packet.kind == PacketKind.FRAME:
            self.stats.total.frame_packets_received += 1
            self.stats.total.frame_bytes_received += len(data)
            if self._first_seq is None:
                self._first_seq = packet.seq
            self.playout.arrived(packet.last_seq, now)
            refused = self.jitter.refused
            self.jitter.push(packet)  # a late or duplicate packet is dropped there, not refused
            self.stats.total.packets_refused += self.jitter.refused - refused
        elif self._references_pending >= MAX_PENDING_REFERENCES:  # a flood: the decoder cannot keep up
            self.stats.total.packets_refused += 1
        else:
            self._references_pending += 1
            self._pool.submit(self._decode_reference, packet)  # references in order, on the decode thread
        return None

    def _on_control(self, text: str) -> Message | None:
        try:
            message = control.parse(text)
        except control.ControlError as exc:
            self.stats.total.control_refused += 1
            log.debug("refused a control message: %s", exc)
            return None
        if isinstance(message, control.Start) and self.playout.t0 is None:
            self.playout.start(message.t0, message.fps, message.frames_per_packet)
            self.track.fps = message.fps
        elif isinstance(message, control.Bye):
            self._bye = BYE_REASONS[message.why]
            self._last_seq = message.last_seq
        return message

    def _open_decoder(self, packet: Packet) -> bool:
        """The decoder of the codec the other side speaks, with this side's receiver settings."""
        try:
            wanted = receiver_settings(codec_class(packet.codec).Settings, self.settings)
            self._decoder = get_codec(packet.codec, **wanted).decoder()
        except TalkcodecError as exc:  # e.g. no weights for the codec the other side speaks
            self.abort(f"cannot decode the other side's {packet.codec} stream: {exc}")
            return False
        if self._decoder.uses_audio:  # it draws a frame once lookahead_s of voice after it has arrived
            self.playout.needs_audio(self._decoder.lookahead_s)
        self._pool.submit(self._decoder.codec.load)  # networks now, on the decode thread, not on frame 0
        return True

    def on_audio(self, samples: np.ndarray, arrived: float, rtp: int | None = None) -> None:
        """Received audio (mono, 48 kHz) whose last sample arrived at local time ``arrived``;
        ``rtp``: its RTP time (48 kHz), which places it on the stream's timeline (``AudioPlacer``).
        The voice is a sign of life: the other side has not vanished."""
        self._last_arrival = arrived
        placed = self.audio.place(samples, arrived, rtp)
        if placed is None:
            return
        if self.recording is not None:
            self.recording.audio(*placed)
        if self._decoder is not None and self._decoder.uses_audio:
            try:
                self._pool.submit(self._feed_audio, *placed)  # on the decode thread, in order
            except RuntimeError:  # the call is over: the pool is shut down
                pass

    def _feed_audio(self, position: int, samples: np.ndarray) -> None:
        """Give an audio-driven decoder the call's audio on the frames' timeline (its time 0 is
        frame 0's): silence for what was placed before it existed, then every chunk in order."""
        if not self._audio_fed:
            samples = np.concatenate([np.zeros(position, np.float32), samples])
            self._audio_fed = True
        self._decoder.push_audio(samples, OPUS_RATE)

    # -- decoding (on the worker thread in a call) -------------------------------------------
    def _decode_reference(self, packet: Packet) -> None:
        try:
            self._decode(packet, conceal=False)
        finally:
            self._references_pending -= 1

    def _decode(self, packet: Packet | None, conceal: bool = True) -> list:
        """A frame packet the decoder rejects counts as lost, a rejected reference is dropped
        (the decoder then asks for a key)."""
        try:
            return self._decoder.decode(packet)
        except PacketError:
            return self._decoder.decode(None) if conceal else []
        except TalkcodecError as exc:  # a stream this decoder can never draw (other weights)
            self.abort(str(exc))
            return []

    def _fell_behind(self, frames: int) -> None:
        """Count frames skipped to catch up with the clock; say once if it keeps happening."""
        self.stats.total.frames_skipped_at_receiver += frames
        self._catch_ups += 1
        if self._catch_ups == 2:  # one stall happens (a busy machine); twice, the decoder is too slow
            log.warning(
                "talkcodec: warning: this machine cannot draw the %s stream at %g fps: frames are skipped to "
                "keep up (a faster machine, or a cheaper codec on the other side, e.g. --codec mesh)",
                self._decoder.codec.name, self.playout.fps,
            )  # fmt: skip

    # -- playout ---------------------------------------------------------------------------
    def _ended(self, now: float, connected: bool) -> str:
        """Why the call is over at ``now`` ("" while it goes on)."""
        if self.failure:
            return self.failure
        if not connected:
            return "the connection closed"
        if now - self._last_arrival > self.vanish_after:
            return f"the other side vanished (nothing for {self.vanish_after:g} s)"
        if not self._playing:
            return self._bye
        next_seq = self.jitter.next_seq
        if self._bye and not len(self.jitter) and (self._last_seq is None or next_seq > self._last_seq):
            return self._bye  # everything sent has been played
        return ""

    def _due(self, now: float) -> tuple[int, int | None]:
        """(seq to skip to, or None; the last seq due at ``now``); starts playout when it can."""
        if not self._playing:
            if not self.playout.started or self._first_seq is None:
                return -1, None
            self.jitter.start(self._first_seq)
            self._playing = True
        due = self.playout.due(now)
        if self._last_seq is not None:
            due = min(due, self._last_seq)  # nothing comes after the last frame: no concealing past it
        if due - self.jitter.next_seq > 2 * self.playout.fps:  # far behind (a stall): skip ahead
            self._fell_behind(due - self.jitter.next_seq)
            self.jitter.start(due)
            return due, due
        return -1, due

    def _present(self, seq: int, packet: Packet | None, frames: list, now: float,
                 send_control: Callable[[str], None]) -> None:  # fmt: skip
        """Show the frames decoded for ``seq`` and ask for a key or reference if the decoder needs one."""
        frames = [f for f in frames if f.seq >= seq]  # after a skip ahead: not what is past
        if packet is None and frames and frames[0].concealed:
            self.stats.total.frames_concealed += 1
        if self._decoder.needs_key and now - self._last_request > KEY_REQUEST_INTERVAL:
            request = control.ReferenceRequest() if self._decoder.needs_reference else control.KeyRequest()
            send_control(control.encode(request))
            self.stats.total.key_requests += 1
            self._last_request = now
        for frame in frames:
            self.stats.total.frames_shown += 1
            self.shown.append((frame.seq, frame.concealed))
            self.stats.total.latencies_ms.append(self.playout.latency_ms(frame.seq, self.clock()))
            if self.playout.lookahead_s is not None:  # how much voice past its look-ahead it was drawn with
                lead = self.audio.end_s - frame.seq / self.playout.fps - self.playout.lookahead_s
                self.stats.total.voice_lead_ms.append(1000 * lead)
            self.track.put(frame)
            for sink in self.sinks:
                sink.show(frame)

    def _next_wake(self, now: float) -> float:
        """Seconds to sleep until the next frame is due (at most 0.1 s, so vanishing is noticed)."""
        if not self._playing:
            return 0.01
        return min(max(self.playout.play_time(self.jitter.next_seq or 0) - now, 0.001), 0.1)

    def step(self, now: float, send_control: Callable[[str], None], connected: bool = True) -> str:
        """One round of playout at ``now``, decoding here (tests, with a fake clock): the reason
        the call ended, or "". References already handed to the decode thread are waited for."""
        self._pool.submit(lambda: None).result()  # the references (and audio) queued before now
        if reason := self._ended(now, connected):
            self.reason = reason
            return reason
        skip_to, due = self._due(now)
        if skip_to >= 0:
            self._decoder.skip_to(skip_to)
        while due is not None and self.jitter.next_seq <= due:
            seq, packet = self.jitter.pop()
            self._present(seq, packet, self._decode(packet), now, send_control)
        return ""

    async def run(self, send_control: Callable[[str], None], connected: Callable[[], bool]) -> str:
        """Play out in real time until the sender says bye, vanishes, or the connection fails; the reason."""
        loop = asyncio.get_running_loop()
        self._last_arrival = self.clock()  # the call starts now (set-up time is not silence)
        try:
            while not (reason := self._ended(now := self.clock(), connected())):
                skip_to, due = self._due(now)
                if skip_to >= 0:
                    await loop.run_in_executor(self._pool, self._decoder.skip_to, skip_to)
                while due is not None and self.jitter.next_seq <= due:
                    # no packet: the decoder draws the frame if an earlier packet of several carried it
                    # (drawn now, with the audio that has arrived by its time), else conceals it
                    seq, packet = self.jitter.pop()
                    frames = await loop.run_in_executor(self._pool, self._decode, packet)
                    self._present(seq, packet, frames, now, send_control)
                await asyncio.sleep(self._next_wake(self.clock()))
            self.reason = reason
        finally:
            self.close()
        return self.reason

    def close(self) -> None:
        """End the track and the sinks (the recording gets its audio now); stop the decode thread."""
        self.track.put(None)
        for sink in self.sinks:
            sink.close()
        self.sinks = []
        self._pool.shutdown(wait=False)
