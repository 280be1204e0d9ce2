"""aiortc media tracks: the sender's audio from a file, and the receiver's regenerated face."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack

from talkcodec.api import Frame
from talkcodec.audio import OPUS_RATE, load_audio

AUDIO_PTIME = 0.020  # 20 ms per audio frame, as WebRTC sends Opus
_AUDIO_SAMPLES = int(OPUS_RATE * AUDIO_PTIME)
VIDEO_CLOCK = 90000


class FileAudioTrack(MediaStreamTrack):
    """Mono 48 kHz audio of a file, paced in real time on the call's clock: sample n plays at
    ``start_time + n / 48000``, the same clock the face frames are captured on, so the two
    leave the sender in sync. Loops with the video when asked; silence after the end."""

    kind = "audio"

    def __init__(self, path: str, loop: bool = False):
        super().__init__()
        samples = load_audio(path, OPUS_RATE)
        self._pcm = (np.clip(samples if samples is not None else np.zeros(0), -1, 1) * 32767).astype(np.int16)
        self._loop = loop and self._pcm.size > 0
        self._sent = 0
        self.started = asyncio.Event()  # set, with start_time, when the call's clock starts
        self.start_time = 0.0

    def start(self, start_time: float) -> None:
        self.start_time = start_time
        self.started.set()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self.started.wait()
        wait = self.start_time + self._sent / OPUS_RATE - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        index = np.arange(self._sent, self._sent + _AUDIO_SAMPLES)
        if self._loop:
            chunk = self._pcm[index % self._pcm.size]
        else:
            chunk = np.zeros(_AUDIO_SAMPLES, np.int16)
            have = self._pcm[self._sent : self._sent + _AUDIO_SAMPLES]
            chunk[: have.size] = have
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")  # (1, n) packed mono
        frame.sample_rate = OPUS_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, OPUS_RATE)
        self._sent += _AUDIO_SAMPLES
        return frame


class RegeneratedTrack(VideoStreamTrack):
    """The receiver's output as an aiortc video track: frames leave at playout time, stamped
    on the sender's frame clock (pts = seq / fps), so a call app can forward or record it."""

    def __init__(self, fps: float = 25.0, queue_size: int = 50):
        super().__init__()
        self.fps = fps
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue(maxsize=queue_size)

    def put(self, frame: Frame | None) -> None:
        """Offer a frame (``None`` ends the track); the oldest is dropped if nobody reads."""
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(frame)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        out = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        out.pts = round(frame.seq * VIDEO_CLOCK / self.fps)
        out.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return out


class MonoResampler:
    """Received audio frames (any format, layout, rate) -> mono float32 samples at 48 kHz."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=OPUS_RATE)

    def __call__(self, frame: av.AudioFrame) -> np.ndarray:
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]  # (1, n) packed -> (n,)
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


_opus_bitrate = [24000]


def set_opus_bitrate(bitrate: int) -> None:
    """aiortc 1.16 hard-codes 96 kbps Opus, several times a talking-head stream's video bits;
    make its encoder use ``bitrate`` instead (24 kbps is transparent for speech)."""
    from aiortc.codecs import opus

    _opus_bitrate[0] = bitrate
    if getattr(opus.OpusEncoder.__init__, "_talkcodec", False):
        return
    original = opus.OpusEncoder.__init__

    def __init__(self: opus.OpusEncoder) -> None:
        original(self)
        self.codec.bit_rate = _opus_bitrate[0]

    __init__._talkcodec = True  # type: ignore[attr-defined]
    opus.OpusEncoder.__init__ = __init__  # type: ignore[method-assign]
