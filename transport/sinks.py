"""Where the receiver's frames go besides its ``RegeneratedTrack``: a recording, a window, a
virtual camera. Each takes frames as they are shown (``show``) and is closed once at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from talkcodec.api import Frame
from talkcodec.audio import OPUS_RATE
from talkcodec.video import Mp4Writer

from .playout import PlayoutClock


class Sink(Protocol):
    def show(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


class Recording:
    """An mp4 of what is shown, with the received audio under it. Frames that never came are
    held (a frame number skipped writes the last picture again); the audio comes placed on the
    stream's timeline (``playout.AudioPlacer``), the recording's time 0 being its first frame's."""

    def __init__(self, path: str | Path, clock: PlayoutClock):
        self.path, self.clock = path, clock
        self._writer: Mp4Writer | None = None
        self._first_seq = 0  # the first recorded frame (the recording's time 0)
        self._audio: list[np.ndarray] = []
        self._audio_start: int | None = None  # stream position (48 kHz samples) of the first kept sample

    def show(self, frame: Frame) -> None:
        if self._writer is None:
            self._writer = Mp4Writer(self.path, self.clock.fps, frame.image.shape[1::-1], sample_rate=OPUS_RATE)
            self._first_seq = frame.seq
        for _ in range(frame.seq - self._first_seq - self._writer.frames_written + 1):
            self._writer.write(frame.image)  # holds for frames that never came

    def audio(self, position: int, samples: np.ndarray) -> None:
        """Samples placed at ``position`` on the stream's timeline, each chunk after the last."""
        if self._audio_start is None:
            self._audio_start = position
        self._audio.append(samples)

    def close(self) -> None:
        if self._writer is None:
            return
        fps = self.clock.fps
        if self._audio and self._audio_start is not None:
            lead = self._audio_start - round(self._first_seq / fps * OPUS_RATE)
            audio = np.concatenate(self._audio)
            audio = np.concatenate([np.zeros(max(lead, 0), np.float32), audio[max(-lead, 0) :]])
            self._writer.write_audio(audio[: int(self._writer.frames_written / fps * OPUS_RATE)])
        self._writer.close()
        self._writer = None


class Window:
    """An OpenCV window (needs a display)."""

    def __init__(self) -> None:
        self._open = False

    def show(self, frame: Frame) -> None:
        import cv2

        cv2.imshow("talkcodec", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        cv2.waitKey(1)
        self._open = True

    def close(self) -> None:
        if self._open:
            import cv2

            cv2.destroyWindow("talkcodec")


class VirtualCamera:
    """pyvirtualcam (a v4l2loopback device), so other call apps can use the face."""

    def __init__(self, clock: PlayoutClock):
        self.clock = clock
        self._camera = None

    def show(self, frame: Frame) -> None:
        if self._camera is None:
            import pyvirtualcam

            self._camera = pyvirtualcam.Camera(frame.image.shape[1], frame.image.shape[0], self.clock.fps)
        self._camera.send(frame.image)

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
