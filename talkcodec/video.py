"""Video files in and out with PyAV: probe, read frames on a fixed frame clock, write mp4."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    duration: float  # seconds
    has_audio: bool

    @property
    def frames_estimate(self) -> int:
        return max(1, round(self.duration * self.fps))


def ffmpeg_reason(exc: Exception) -> str:
    """What went wrong, in FFmpeg's words, without its errno or the path it was given."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return reason[0].lower() + reason[1:] if reason else type(exc).__name__


def _open(path: str | Path) -> av.container.InputContainer:
    camera = str(path).startswith("/dev/video")  # a V4L2 camera, read through FFmpeg
    if not (Path(path).is_file() or (camera and Path(path).exists())):
        raise InputError(f"{path}: no such file")
    try:
        container = av.open(str(path), "r", format="v4l2" if camera else None)
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable video ({ffmpeg_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video stream")
    return container


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, duration and audio presence of a video file; ``InputError`` if unreadable."""
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = (stream.frames or 0) / fps
        ctx = stream.codec_context
        return VideoInfo(ctx.width, ctx.height, fps, duration, bool(container.streams.audio))


def read_frames(path: str | Path, fps: float | None = None, max_seconds: float | None = None) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 RGB frames; with ``fps``, resampled to that clock (nearest frame).

    A file that breaks part-way ends the iteration at the damage instead of raising, so what
    was decoded before it is kept; a file with no decodable frame at all raises ``InputError``.
    """
    produced = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        source_fps = float(stream.average_rate or stream.guessed_rate or 25)
        step = 1.0 / fps if fps else None
        start: float | None = None
        previous: tuple[float, np.ndarray] | None = None
        next_time = 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else index / source_fps
                start = t if start is None else start
                t -= start
                if max_seconds is not None and t >= max_seconds:
                    break
                image = frame.to_ndarray(format="rgb24")
                if step is None:
                    produced += 1
                    yield image
                    continue
                if previous is not None:  # emit the previous frame for every clock tick nearer to it
                    while next_time < (previous[0] + t) / 2:
                        produced += 1
                        yield previous[1]
                        next_time += step
                previous = (t, image)
        except av.error.FFmpegError:
            pass  # damaged tail: keep what decoded
        if step is not None and previous is not None:
            end = previous[0] + 1.0 / source_fps
            if max_seconds is not None:
                end = min(end, max_seconds)
            while next_time < end - 1e-9:
                produced += 1
                yield previous[1]
                next_time += step
    if produced == 0:
        raise InputError(f"{path}: no decodable video frame")


class Mp4Writer:
    """Writes RGB frames as H.264 (yuv420p) and, optionally, mono audio as AAC into an mp4.

    ``lossless=True`` writes bit-exact RGB instead (libx264rgb, crf 0), for reference copies.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | Fraction,
        size: tuple[int, int],
        sample_rate: int | None = None,
        crf: int = 18,
        lossless: bool = False,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        rate = Fraction(fps).limit_denominator(1001)
        self._video = self._container.add_stream("libx264rgb" if lossless else "libx264", rate=rate)
        self._video.width, self._video.height = size
        self._video.pix_fmt = "rgb24" if lossless else "yuv420p"
        self._video.options = {"crf": "0", "preset": "ultrafast"} if lossless else {"crf": str(crf), "preset": "veryfast"}
        self._audio = self._container.add_stream("aac", rate=sample_rate, layout="mono") if sample_rate else None
        self._frames = 0
        self._samples = 0

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, rgb: np.ndarray) -> None:
        """One (H, W, 3) uint8 RGB frame; one of another size than the file's is resized to it
        (a stream whose first pictures came before its face was found)."""
        size = (self._video.width, self._video.height)
        if rgb.shape[1::-1] != size:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self._frames
        self._frames += 1
        self._container.mux(self._video.encode(frame))

    def write_audio(self, samples: np.ndarray) -> None:
        """Mono float32 samples in [-1, 1], continuing from the last call (t=0 is the first frame)."""
        if self._audio is None:
            raise ValueError("this Mp4Writer was opened without a sample_rate")
        block = np.ascontiguousarray(samples, dtype=np.float32)[None, :]  # (1, n) planar mono
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
        frame.sample_rate = self._audio.rate
        frame.pts = self._samples
        self._samples += block.shape[1]
        self._container.mux(self._audio.encode(frame))

    def close(self) -> None:
        self._container.mux(self._video.encode(None))
        if self._audio is not None:
            self._container.mux(self._audio.encode(None))
        self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
