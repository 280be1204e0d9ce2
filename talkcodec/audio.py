"""Audio front end: decode + resample with PyAV, log-mel windows aligned to frame times, Opus.

The call's audio travels as an ordinary Opus stream (in the .tkc file, or as a WebRTC audio
track); the learned codecs read log-mel windows of it, centred on each frame's time with a
configurable look-ahead (the look-ahead is latency the receiver must wait for).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from .errors import InputError
from .video import ffmpeg_reason

if TYPE_CHECKING:
    import torch

OPUS_RATE = 48000  # libopus runs at 48 kHz
OPUS_FRAME = 960  # 20 ms packets (files; a call may send 40 or 60 ms)
OPUS_FRAME_MS = (20, 40, 60)  # packet durations a call may use: longer packets pay fewer headers
CALL_AUDIO_KBPS = 24  # a call's default voice bitrate: transparent for speech (12 is still clear)
CALL_AUDIO_FRAME_MS = 20  # a call's default Opus packet duration (WebRTC's usual)


def load_audio(path: str | Path, sample_rate: int = 16000, max_seconds: float | None = None) -> np.ndarray | None:
    """Mono float32 samples of the first audio stream, resampled; ``None`` if there is none.

    Decoding stops quietly at a damaged tail (what decoded is kept).
    """
    try:
        container = av.open(str(path), "r")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable media file ({ffmpeg_reason(exc)})") from None
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        limit = None if max_seconds is None else int(max_seconds * sample_rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))  # (1, n) packed mono -> (n,)
                if limit is not None and sum(map(len, chunks)) >= limit:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError:
            pass
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return samples[:limit] if limit is not None else samples


@dataclass(frozen=True)
class MelSettings:
    sample_rate: int = 16000
    n_mels: int = 80
    hop_s: float = 0.010  # one mel step per 10 ms
    win_s: float = 0.025  # STFT window
    window_s: float = 0.2  # window per video frame (AVFR-GAN: 200 ms = 5 frames at 25 fps)
    lookahead_s: float = 0.1  # audio after the frame's time; window_s / 2 = centred

    def __post_init__(self) -> None:
        ok = (
            8000 <= self.sample_rate <= 48000 and 8 <= self.n_mels <= 256 and 0.001 <= self.hop_s <= 0.1
            and 0.005 <= self.win_s <= 0.2 and self.hop_s <= self.window_s <= 2.0 and 0 <= self.lookahead_s <= self.window_s
        )  # fmt: skip
        if not ok:
            raise ValueError(f"mel settings out of range: {self}")

    @property
    def steps(self) -> int:
        return round(self.window_s / self.hop_s)


@functools.lru_cache(maxsize=4)
def _mel_filters(settings: MelSettings) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) Slaney mel filterbank, built once per settings."""
    import librosa  # deferred: heavy imports, only the audio-driven codecs need them
    import torch

    n_fft = 1 << int(np.ceil(np.log2(settings.win_s * settings.sample_rate)))
    return torch.from_numpy(librosa.filters.mel(sr=settings.sample_rate, n_fft=n_fft, n_mels=settings.n_mels))


def log_mel(samples: np.ndarray, settings: MelSettings = MelSettings()) -> np.ndarray:
    """(n_mels, T) natural-log mel spectrogram, one column per ``hop_s``; column t covers time t*hop.

    Equal to ``librosa.feature.melspectrogram`` (power 2, centred, Hann), but the filterbank is
    built once and applied by PyTorch: a NumPy (OpenBLAS) product per decoded frame left
    OpenBLAS threads spinning against PyTorch's, and decoding ran 3x slower on 2 cores.
    """
    import librosa
    import torch

    filters = _mel_filters(settings)
    hop = round(settings.hop_s * settings.sample_rate)
    n_fft = (filters.shape[1] - 1) * 2
    spectrum = librosa.stft(
        samples.astype(np.float32), n_fft=n_fft, hop_length=hop, win_length=round(settings.win_s * settings.sample_rate),
        center=True, pad_mode="constant",
    )  # fmt: skip
    power = torch.from_numpy(np.abs(spectrum) ** 2)  # (n_fft // 2 + 1, T)
    return torch.log(filters @ power + 1e-6).numpy()


def mel_windows(samples: np.ndarray, frame_times: np.ndarray, settings: MelSettings = MelSettings()) -> np.ndarray:
    """(N, n_mels, steps) log-mel windows, window i ending ``lookahead_s`` after ``frame_times[i]``.

    Windows that reach past either end of the audio are padded with silence.
    """
    return slice_windows(log_mel(samples, settings), frame_times, settings)


def slice_windows(mel: np.ndarray, frame_times: np.ndarray, settings: MelSettings = MelSettings()) -> np.ndarray:
    """``mel_windows`` from an already computed (n_mels, T) spectrogram of audio starting at time 0."""
    silence = np.log(1e-6)
    steps = settings.steps
    starts = np.rint((np.asarray(frame_times) + settings.lookahead_s - settings.window_s) / settings.hop_s).astype(int)
    pad = steps + max(0, -int(starts.min(initial=0)))
    padded = np.pad(mel, ((0, 0), (pad, pad + max(0, int(starts.max(initial=0))))), constant_values=silence)
    index = starts[:, None] + pad + np.arange(steps)[None, :]  # (N, steps)
    return np.ascontiguousarray(padded[:, index].transpose(1, 0, 2))  # (n_mels, N, steps) -> (N, n_mels, steps)


def opus_round_trip(samples: np.ndarray, sample_rate: int, bitrate: int = 24000) -> np.ndarray:
    """The samples as a receiver hears them after Opus at ``bitrate`` (same rate and length)."""
    encoder, decoder = OpusEncoder(bitrate, sample_rate), OpusDecoder()
    packets = encoder.encode(samples) + encoder.encode(None)
    decoded = np.concatenate([decoder.decode(data) for _, data in packets]) if packets else np.zeros(0, np.float32)
    out = resample(decoded, OPUS_RATE, sample_rate)[: len(samples)]
    return np.pad(out, (0, len(samples) - len(out)))


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Mono float32 resampling with FFmpeg's resampler."""
    if rate_in == rate_out or samples.size == 0:
        return samples.astype(np.float32)
    frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="flt", layout="mono")
    frame.sample_rate = rate_in
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate_out)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


class OpusEncoder:
    """Mono Opus at 48 kHz in ``frame_ms`` packets (20, 40 or 60): push float32 samples, get
    (pts, bytes) packets."""

    def __init__(self, bitrate: int = 24000, sample_rate: int = OPUS_RATE, frame_ms: int = 20):
        if frame_ms not in OPUS_FRAME_MS:
            raise ValueError(f"Opus packets of {frame_ms} ms: talkcodec sends {', '.join(map(str, OPUS_FRAME_MS))}")
        self._ctx = av.CodecContext.create("libopus", "w")
        self._ctx.sample_rate = OPUS_RATE
        self._ctx.layout = "mono"
        self._ctx.format = "s16"
        self._ctx.bit_rate = bitrate
        self._ctx.options = {"application": "voip", "frame_duration": str(frame_ms)}
        self.frame = OPUS_RATE * frame_ms // 1000  # samples a packet carries
        self._input_rate = sample_rate
        self._buffer = np.zeros(0, dtype=np.float32)
        self._pts = 0
        self._priming: int | None = None  # libopus stamps its first packet -312 (encoder delay)

    def _packets(self, frame: av.AudioFrame | None) -> list[tuple[int, bytes]]:
        """(pts, bytes) with pts counted from 0: the priming samples stay in the decoded audio
        (6.5 ms at 48 kHz), far under what the eye notices as lip-sync error."""
        out = []
        for packet in self._ctx.encode(frame):
            if self._priming is None:
                self._priming = -min(int(packet.pts), 0)
            out.append((int(packet.pts) + self._priming, bytes(packet)))
        return out

    def encode(self, samples: np.ndarray | None) -> list[tuple[int, bytes]]:
        """Samples at the constructor's rate; ``None`` flushes (pads the last packet)."""
        if samples is not None:
            samples = resample(samples, self._input_rate, OPUS_RATE)
            self._buffer = np.concatenate([self._buffer, samples])
        elif self._buffer.size % self.frame:
            self._buffer = np.pad(self._buffer, (0, self.frame - self._buffer.size % self.frame))
        out: list[tuple[int, bytes]] = []
        while self._buffer.size >= self.frame:
            block, self._buffer = self._buffer[:self.frame], self._buffer[self.frame:]
            pcm = (np.clip(block, -1, 1) * 32767).astype(np.int16)[None, :]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = OPUS_RATE
            frame.pts = self._pts
            self._pts += self.frame
            out += self._packets(frame)
        if samples is None:
            out += self._packets(None)
        return out


class OpusDecoder:
    """Decodes Opus packets (bytes) into mono float32 samples at 48 kHz, with libopus (the
    reference decoder: FFmpeg's own decodes a 40 or 60 ms SILK frame in a code 3 packet, such as
    a call's voice carrying face packets, differently from the same frame in a code 0 one)."""

    def __init__(self) -> None:
        self._ctx = av.CodecContext.create("libopus", "r")
        self._ctx.sample_rate = OPUS_RATE
        self._ctx.layout = "mono"

    def decode(self, data: bytes) -> np.ndarray:
        try:
            frames = self._ctx.decode(av.Packet(data))
        except av.error.FFmpegError:
            return np.zeros(OPUS_FRAME, dtype=np.float32)  # a damaged packet: 20 ms of silence
        out = [self._float(f) for f in frames]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    @staticmethod
    def _float(frame: av.AudioFrame) -> np.ndarray:
        samples = frame.to_ndarray().reshape(-1)  # mono: (1, n) -> (n,)
        if samples.dtype == np.int16:
            return samples.astype(np.float32) / 32768
        return samples.astype(np.float32)


class AudioTimeline:
    """The audio a receiver has heard so far, and the log-mel window of any frame time.

    Time 0 is the stream's first frame. Audio not (yet) received reads as silence, exactly like
    the silence padding of the training windows (``slice_windows``), so a window computed here
    equals the one training saw for the same audio (but in the first and last 20 ms of a
    stream). Samples older than ``keep_s`` before the last window asked for are dropped; at
    most ``max_s`` seconds are held.
    """

    MARGIN = 4  # mel columns of context on each side (covers the STFT half-window)

    def __init__(self, settings: MelSettings = MelSettings(), keep_s: float = 2.0, max_s: float = 600.0):
        self.settings = settings
        self._hop = round(settings.hop_s * settings.sample_rate)
        self._chunks: list[np.ndarray] = []
        self._samples = np.zeros(0, np.float32)
        self._start = 0  # stream sample index of self._samples[0]
        self._keep, self._max = int(keep_s * settings.sample_rate), int(max_s * settings.sample_rate)
        self._resampler: av.AudioResampler | None = None
        self._rate_in = settings.sample_rate

    def push(self, samples: np.ndarray, sample_rate: int) -> None:
        """Append mono float32 samples that follow the previous ones (one stateful resampler,
        so chunk edges add nothing)."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        if sample_rate != self.settings.sample_rate and samples.size:
            if self._resampler is None or sample_rate != self._rate_in:
                self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.settings.sample_rate)
                self._rate_in = sample_rate
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
            frame.sample_rate = sample_rate
            resampled = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
            samples = np.concatenate(resampled) if resampled else np.zeros(0, np.float32)
        self._chunks.append(samples)

    def _gather(self) -> None:
        if self._chunks:
            self._samples = np.concatenate([self._samples, *self._chunks])
            self._chunks = []
        if len(self._samples) > self._max:
            drop = len(self._samples) - self._max
            self._samples, self._start = self._samples[drop:], self._start + drop

    def window(self, time_s: float) -> np.ndarray:
        """(n_mels, steps) window of the frame at ``time_s`` (ends ``lookahead_s`` after it)."""
        s = self.settings
        self._gather()
        first = int(round((time_s + s.lookahead_s - s.window_s) / s.hop_s))  # first mel column
        lo = (first - self.MARGIN) * self._hop - self._start
        chunk = np.zeros((s.steps + 2 * self.MARGIN) * self._hop, np.float32)
        a, b = max(lo, 0), min(lo + len(chunk), len(self._samples))
        if b > a:
            chunk[a - lo : b - lo] = self._samples[a:b]
        if lo > self._keep:  # frames come in order: what lies far behind this window is done with
            drop = lo - self._keep
            self._samples, self._start = self._samples[drop:], self._start + drop
        mel = log_mel(chunk, s)  # (n_mels, columns): column j is at chunk time j * hop
        return mel[:, self.MARGIN : self.MARGIN + s.steps]
