"""aiortc media tracks: the sender's audio from a file, and the receiver's regenerated face."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack

from talkcodec.api import Frame
from talkcodec.audio import CALL_AUDIO_FRAME_MS, CALL_AUDIO_KBPS, OPUS_RATE, OpusEncoder, load_audio

from .voice import FaceOverVoice, opus_with_padding

VIDEO_CLOCK = 90000


class FileAudioTrack(MediaStreamTrack):
    """Mono audio of a file as Opus packets, paced in real time on the call's clock: the packet
    of samples [n, n + F) leaves when its last sample "is captured", at ``start_time + (n + F) /
    48000``, the clock the face frames are captured on. It encodes its own Opus (``kbps``,
    ``frame_ms`` 20/40/60: longer packets pay fewer RTP/SRTP/UDP headers, and arrive later) and
    aiortc sends the packets as they are, so every call has its own audio settings. Loops with
    the video when asked; silence after the end. ``face``: face packets waiting to ride the voice
    packets in their padding (``voice.py``)."""

    kind = "audio"

    def __init__(self, path: str, loop: bool = False, kbps: float = CALL_AUDIO_KBPS,
                 frame_ms: int = CALL_AUDIO_FRAME_MS, face: FaceOverVoice | None = None):  # fmt: skip
        super().__init__()
        samples = load_audio(path, OPUS_RATE)
        self._pcm = np.clip(samples if samples is not None else np.zeros(0, np.float32), -1, 1).astype(np.float32)
        self._loop = loop and self._pcm.size > 0
        self._opus = OpusEncoder(int(kbps * 1000), OPUS_RATE, frame_ms)
        self._sent = 0  # samples encoded so far
        self._ready: list[tuple[int, bytes]] = []  # (pts, bytes) encoded, not yet sent
        self.face = face
        self.opus_bytes = 0  # Opus bytes handed to aiortc so far (without the face they carry)
        self.started = asyncio.Event()  # set, with start_time, when the call's clock starts
        self.start_time = 0.0

    def start(self, start_time: float) -> None:
        self.start_time = start_time
        self.started.set()

    def _next_chunk(self) -> np.ndarray:
        """The next packet's worth of samples (looped, or silence past the end)."""
        size = self._opus.frame
        if self._loop:
            chunk = self._pcm[np.arange(self._sent, self._sent + size) % self._pcm.size]
        else:
            chunk = np.zeros(size, np.float32)
            have = self._pcm[self._sent : self._sent + size]
            chunk[: have.size] = have
        self._sent += size
        return chunk

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        await self.started.wait()
        while not self._ready:  # libopus may hold the first chunk back (its look-ahead)
            wait = self.start_time + (self._sent + self._opus.frame) / OPUS_RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._ready += self._opus.encode(self._next_chunk())
        pts, data = self._ready.pop(0)
        self.opus_bytes += len(data)
        if self.face is not None and (padding := self.face.take()):
            data = opus_with_padding(data, padding)
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, OPUS_RATE)
        return packet


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
