"""The codecs under test, each turned into ``run(frames, fps, setting) -> Coded``.

Conventional codecs go through ``av.CodecContext`` in memory (no container, no temp file) at
real-time call settings: no B-frames, no look-ahead, one key frame every 10 seconds (a call
asks for more only on loss). Encoders are flushed and every packet's bytes are counted.
talkcodec codecs go through their own encoder/decoder, counting ``len(packet.to_bytes())``,
with the reference image's bytes kept apart. ``still`` is the yardstick below them all: the
reference image and nothing else.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

KEY_INTERVAL_S = 10


@dataclass
class Coded:
    decoded: np.ndarray  # (T, H, W, 3) uint8
    frame_bytes: int  # everything but the one-off reference
    reference_bytes: int = 0  # talkcodec only: the reference image(s)
    encode_s: float = 0.0
    decode_s: float = 0.0
    frames_per_packet: int = 1  # talkcodec: the most frames a packet carried
    extra: dict = field(default_factory=dict)


@contextmanager
def kept_scheduling() -> Iterator[None]:
    """Give the calling thread back its scheduling policy when the block ends.

    SVT-AV1 run as root switches the thread that opens it to SCHED_FIFO priority 99, and every
    thread started from it afterwards inherits that. On a 2-core machine the spin-waiting
    threads of the next cells (mediapipe, PyTorch) then starve each other: a bench slowed from
    seconds to minutes per cell after the AV1 cells until this was restored.
    """
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy or os.sched_getparam(0) != param:
            os.sched_setscheduler(0, policy, param)


@dataclass(frozen=True)
class Conventional:
    encoder: str
    decoder: str
    options: dict[str, str]
    label: str

    def run(self, frames: np.ndarray, fps: float, kbps: float) -> Coded:
        with kept_scheduling():
            return self._run(frames, fps, kbps)

    def _run(self, frames: np.ndarray, fps: float, kbps: float) -> Coded:
        rate = Fraction(fps).limit_denominator(1001)
        enc = av.CodecContext.create(self.encoder, "w")
        enc.width, enc.height = frames.shape[2], frames.shape[1]
        enc.pix_fmt = "yuv420p"
        enc.time_base = 1 / rate
        enc.framerate = rate
        enc.bit_rate = int(kbps * 1000)
        enc.gop_size = int(KEY_INTERVAL_S * fps)
        enc.max_b_frames = 0
        enc.thread_count = 1  # one stream, one thread: comparable speeds, and no libvpx spin-waits on busy cores
        enc.options = dict(self.options)
        dec = av.CodecContext.create(self.decoder, "r")
        packets: list[av.Packet] = []
        start = time.perf_counter()
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            packets += enc.encode(frame)
        packets += enc.encode(None)  # flush: encoders lag their input
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        decoded = []
        for packet in packets:
            decoded += [f.to_ndarray(format="rgb24") for f in dec.decode(packet)]
        decoded += [f.to_ndarray(format="rgb24") for f in dec.decode(None)]
        decode_s = time.perf_counter() - start
        if len(decoded) != len(frames):
            raise RuntimeError(f"{self.label}: {len(frames)} frames in, {len(decoded)} out")
        return Coded(np.stack(decoded), sum(p.size for p in packets), 0, encode_s, decode_s)


def run_still(frames: np.ndarray) -> Coded:
    """The floor every talkcodec codec must beat: the first frame sent once as a reference image
    (WebP at quality 90, as the learned codecs send theirs) and shown for the whole clip, 0 frame bits."""
    from ..packet import decode_image, encode_image

    start = time.perf_counter()
    reference = encode_image(frames[0])
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    shown = np.repeat(decode_image(reference)[None], len(frames), axis=0)
    return Coded(shown, 0, len(reference), encode_s, time.perf_counter() - start)


#: codecs that are not codecs but yardsticks: one cell each, no bitrate sweep
BASELINES = {"still": "a still frame: the reference image, shown for the whole clip (0 frame bits)"}

CONVENTIONAL: dict[str, Conventional] = {
    "x264": Conventional("libx264", "h264", {"preset": "veryfast", "tune": "zerolatency"}, "H.264 (x264)"),
    "x265": Conventional(
        "libx265", "hevc", {"preset": "veryfast", "tune": "zerolatency", "x265-params": "log-level=none"}, "H.265 (x265)"
    ),
    "vp8": Conventional("libvpx", "vp8", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}, "VP8"),
    "vp9": Conventional(
        "libvpx-vp9", "vp9", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "row-mt": "1"}, "VP9"
    ),
    "av1": Conventional("libsvtav1", "libdav1d", {"preset": "10", "svtav1-params": "pred-struct=1:rc=2:rtc=1"}, "AV1 (SVT-AV1)"),
}


def run_talkcodec(name: str, settings: dict, frames: np.ndarray, fps: float, audio: np.ndarray | None = None) -> Coded:
    """A talkcodec codec on pre-cropped square frames (``crop=False``: the bench's crop), drawn
    at their size; ``audio`` (16 kHz, as heard after Opus) goes to decoders that use it."""
    from ..packet import Packet, PacketKind
    from ..registry import get_codec

    codec = get_codec(name, **{"size": frames.shape[1], **settings}, crop=False)
    codec.load()  # networks are built before the clocks start, as a call does while it connects
    encoder, decoder = codec.encoder(fps=fps), codec.decoder()
    if decoder.uses_audio and audio is not None:
        decoder.push_audio(audio, 16000)
    wires: list[bytes] = []
    frame_bytes = reference_bytes = 0
    start = time.perf_counter()
    for packets in [*map(encoder.encode, frames), encoder.flush()]:
        for packet in packets:
            wire = packet.to_bytes()
            wires.append(wire)
            if packet.kind == PacketKind.REFERENCE:
                reference_bytes += len(wire)
            else:
                frame_bytes += len(wire)
    encode_s = time.perf_counter() - start
    encoder.close()
    decoded: list[np.ndarray] = []
    start = time.perf_counter()
    for frames_out in [*(decoder.decode(Packet.from_bytes(wire)) for wire in wires), decoder.flush()]:
        decoded += [f.image for f in frames_out]
    decode_s = time.perf_counter() - start
    if len(decoded) != len(frames):
        raise RuntimeError(f"{name}: {len(frames)} frames in, {len(decoded)} out")
    return Coded(np.stack(decoded), frame_bytes, reference_bytes, encode_s, decode_s, encoder.frames_per_packet)
