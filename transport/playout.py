"""The receiver's one playout clock: when each frame of the other side's stream plays, on this
machine's clock.

The sender captures frame ``seq`` at ``t0 + seq / fps`` on ITS clock (the ``start`` message); the
two clocks are not synchronised, so playout runs on local time: the least delayed arrival seen
so far fixes when frame 0 "arrived" (``frame0``; a packet leaves right after its LAST frame is
captured, so a packet of frames ``seq .. last`` says frame 0 arrived by ``arrival - last / fps``),
and frame ``seq`` plays ``delay`` after ``frame0 + seq / fps``. ``delay`` is the playout delay, or
longer when a frame's data comes later (frames a sender holds back for a packet of several): the
longest such wait plus a jitter margin. An audio-driven decoder draws frame ``seq`` from the
voice up to ``lookahead_s`` after it, so its frames also wait for that voice: by how late a voice
packet's first sample arrives on this timeline (it waits for the whole packet), the 95th
percentile over the last 100 packets (so the delay follows the network both ways), plus a small
margin. Audio is placed on the same timeline (``stream_time``). Latency figures use the
sender's ``t0`` (exact only where both share a clock: loopback).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

JITTER_MARGIN_S = 0.08  # playout margin over the longest wait for a frame's data
VOICE_MARGIN_S = 0.03  # an audio-driven frame's margin over how late its voice arrives
VOICE_LATENESS_PACKETS = 100  # how late the voice arrives: over this many recent packets (6 s at 60 ms)
VOICE_LATENESS_PERCENTILE = 95


class PlayoutClock:
    def __init__(self, playout_delay: float = 0.12):
        self.playout_delay = playout_delay
        self.fps = 25.0
        self.t0: float | None = None  # the sender's frame clock origin (its own time), from ``start``
        self.frame0 = math.inf  # local time frame 0 arrived by (least delayed estimate so far)
        self.wait_s = 0.0  # the longest a frame must wait for its data
        self.lookahead_s: float | None = None  # an audio-driven decoder's look-ahead (None: not one)
        self._voice: deque[float] = deque(maxlen=VOICE_LATENESS_PACKETS)  # arrival - stream time of a packet's start
        self._voice_late = -math.inf  # their percentile (minus frame0: how late the voice is on this timeline)
        self._early: list[tuple[int, float]] = []  # (last seq, arrival) of packets before ``start``

    @property
    def started(self) -> bool:
        """The frame rate is known and a frame packet has arrived: frames can be scheduled."""
        return self.t0 is not None and math.isfinite(self.frame0)

    def start(self, t0: float, fps: float, frames_per_packet: int = 1) -> None:
        """The sender's ``start``: its clock, its rate, and n - 1 frames held back for packets of n."""
        self.t0, self.fps = t0, fps
        self.wait(max(frames_per_packet - 1, 0) / fps)
        for last_seq, arrival in self._early:  # packets that came before it, now that the rate is known
            self.arrived(last_seq, arrival)
        self._early.clear()

    def wait(self, seconds: float) -> None:
        """Frames must wait ``seconds`` more for their data (kept: the longest wins)."""
        self.wait_s = max(self.wait_s, seconds)

    def needs_audio(self, lookahead_s: float) -> None:
        """Frames are drawn from the voice up to ``lookahead_s`` after their time."""
        self.lookahead_s = lookahead_s

    def voice_arrived(self, start_s: float, at: float) -> None:
        """A voice packet from ``start_s`` on the stream's timeline arrived at local time ``at``
        (its first sample waited longest: a frame may need the voice from there on)."""
        self._voice.append(at - start_s)
        if len(self._voice) >= 5:
            self._voice_late = float(np.percentile(self._voice, VOICE_LATENESS_PERCENTILE))

    def arrived(self, last_seq: int, at: float) -> None:
        """A frame packet whose last frame is ``last_seq`` arrived at local time ``at``."""
        if self.t0 is None:
            if len(self._early) < 64:
                self._early.append((last_seq, at))
            return
        self.frame0 = min(self.frame0, at - last_seq / self.fps)

    @property
    def delay(self) -> float:
        delay = max(self.playout_delay, self.wait_s + JITTER_MARGIN_S)
        if self.lookahead_s is not None:
            if math.isfinite(self._voice_late) and math.isfinite(self.frame0):
                late = self._voice_late - self.frame0 + VOICE_MARGIN_S
            else:
                late = JITTER_MARGIN_S  # no voice yet: the margin frames' data has
            delay = max(delay, self.lookahead_s + late)
        return delay

    def due(self, now: float) -> int:
        """The last seq whose playout time has come (negative before frame 0's)."""
        return math.floor((now - self.frame0 - self.delay) * self.fps)

    def play_time(self, seq: int) -> float:
        """Local time frame ``seq`` plays."""
        return self.frame0 + self.delay + seq / self.fps

    def stream_time(self, at: float) -> float:
        """Seconds on the stream's timeline (frame ``seq`` at ``seq / fps``) of local time ``at``."""
        return at - self.frame0

    def latency_ms(self, seq: int, shown: float) -> float:
        """Capture (on the sender's clock) to display (on this one) of frame ``seq``."""
        assert self.t0 is not None
        return (shown - (self.t0 + seq / self.fps)) * 1000


MAX_AUDIO_GAP_S = 2.0  # a jump in the audio's timestamps longer than this is a discontinuity, not a gap


class AudioPlacer:
    """Where the received voice goes on the stream's timeline (48 kHz samples from frame 0's
    time). The sender's first audio packet holds what was captured from its frame clock's t0 on,
    so a chunk's RTP time (``rtp``, 48 kHz, from the other side: untrusted) minus the first
    chunk's is its place: network and jitter-buffer delays do not shift it (placing by arrival
    put the voice 80-240 ms late, the receiver's jitter buffer holding 4 packets). Lost packets
    leave silence in their place. Without RTP times the first chunk is placed by its arrival on
    the playout clock and the rest follow it."""

    def __init__(self, clock: PlayoutClock, rate: int = 48000):
        self.clock, self.rate = clock, rate
        self._origin: int | None = None  # RTP time of the first chunk
        self._end: int | None = None  # stream position after the last placed chunk

    def place(self, samples: np.ndarray, arrived: float, rtp: int | None = None) -> tuple[int, np.ndarray] | None:
        """(stream position of the first sample returned, samples) continuing the chunks placed
        before (silence where packets were lost, cut where they overlap); None when the chunk
        cannot be placed yet (no RTP time and frame 0's time unknown) or lies before frame 0."""
        given = len(samples)
        if rtp is not None:
            self._origin = rtp if self._origin is None else self._origin
            position = (rtp - self._origin) % 2**32  # RTP time wraps at 32 bits
        elif self._end is not None:
            position = self._end
        elif math.isfinite(self.clock.frame0):
            position = round(self.clock.stream_time(arrived - len(samples) / self.rate) * self.rate)
        else:
            return None
        if self._end is not None:
            if abs(position - self._end) > MAX_AUDIO_GAP_S * self.rate:
                position = self._end  # a jump: carry on where the audio was (a hostile or reset clock)
            if position > self._end:  # packets lost in between: silence in their place
                samples = np.concatenate([np.zeros(position - self._end, np.float32), samples])
            else:  # overlapping what was placed: the new part only
                samples = samples[self._end - position :]
            position = self._end
        elif position < 0:  # before frame 0's time
            samples, position = samples[-position:], 0
        if not len(samples):
            return None
        self._end = position + len(samples)
        self.clock.voice_arrived(max(self._end - given, 0) / self.rate, arrived)
        return position, samples

    @property
    def end_s(self) -> float:
        """Stream time the voice placed so far reaches (0 before any)."""
        return (self._end or 0) / self.rate
