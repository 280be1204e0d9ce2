"""Offline jobs on files: encode a video to .tkc, decode a .tkc to mp4, describe a .tkc.

Bitrates are counted from the bytes actually written (``len(packet.to_bytes())``), split into
the one-off reference image(s), the frame packets, and the Opus audio.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import __version__
from .audio import OPUS_RATE, OpusDecoder, OpusEncoder, load_audio
from .container import AudioChunk, TkcHeader, TkcReader, TkcWriter
from .errors import InputError, PacketError
from .packet import Packet, PacketKind
from .registry import get_codec
from .video import Mp4Writer, probe, read_frames

NO_FACE_GIVE_UP_S = 10.0  # an input with no face in its first 10 seconds is refused
MAX_GAP_S = 10.0  # a jump in frame numbers or audio time longer than this is damage, not a pause


@dataclass
class StreamStats:
    """Byte counts of a stream; kbps are over its duration (frames / fps)."""

    codec: str
    fps: float
    frames: int = 0
    frame_packets: int = 0  # fewer than frames when packets carry several
    frame_bytes: int = 0
    reference_bytes: int = 0
    references: int = 0
    audio_bytes: int = 0
    faceless_frames: int = 0
    concealed_frames: int = 0
    damaged_records: int = 0  # damaged stretches of a file skipped (reading resumed after each)
    wall_seconds: float = 0.0  # the whole job, file I/O included
    codec_seconds: float = 0.0  # inside Encoder.encode / Decoder.decode only
    damage: str | None = None  # the first damage met, if any
    stopped: str | None = None  # why decoding stopped before the end of the file, if it did
    size: int | None = None  # the side of the drawn picture
    capped_from: int | None = None  # the size asked, when the face in the input was smaller

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps else 0.0

    def kbps(self, nbytes: int) -> float:
        return nbytes * 8 / 1000 / self.duration if self.duration else 0.0

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            duration_s=round(self.duration, 3),
            frame_kbps=round(self.kbps(self.frame_bytes), 3),
            reference_kbps=round(self.kbps(self.reference_bytes), 3),
            audio_kbps=round(self.kbps(self.audio_bytes), 3),
            processing_fps=round(self.frames / self.wall_seconds, 1) if self.wall_seconds else None,
            codec_fps=round(self.frames / self.codec_seconds, 1) if self.codec_seconds else None,
        )
        return d

    def count(self, packet: Packet) -> None:
        size = len(packet.to_bytes())
        if packet.kind == PacketKind.FRAME:
            self.frames += packet.frames
            self.frame_packets += 1
            self.frame_bytes += size
            self.faceless_frames += 0 if packet.payload else packet.frames
        elif packet.kind == PacketKind.REFERENCE:
            self.references += 1
            self.reference_bytes += size


def encode_file(
    source: str | Path,
    output: str | Path,
    codec: str = "mesh",
    settings: dict[str, Any] | None = None,
    fps: float = 25.0,
    max_seconds: float | None = None,
    audio: bool = True,
    progress: bool = True,
    crops_to: str | Path | None = None,
) -> StreamStats:
    """Encode a video file into a .tkc file. ``crops_to`` also saves the face crops the codec
    saw, losslessly (for measuring quality against them)."""
    model = get_codec(codec, **(settings or {}))  # a wrong setting is told before the input is read
    info = probe(source)
    rate = Fraction(fps).limit_denominator(1001)
    samples = load_audio(source, OPUS_RATE, max_seconds) if audio and info.has_audio else None
    stats = StreamStats(codec, float(rate))
    opus = OpusEncoder(sample_rate=OPUS_RATE) if samples is not None else None
    total = round(min(info.duration, max_seconds or info.duration) * fps) or None
    start = time.perf_counter()
    encoder = model.encoder(fps=fps)
    settings_used = {**asdict(model.settings), "frames_per_packet": encoder.frames_per_packet}  # None resolved
    header = TkcHeader(
        codec, rate, audio_rate=OPUS_RATE if samples is not None else None,
        width=model.settings.size, height=model.settings.size,  # at most: a smaller face is drawn smaller
        settings=settings_used, extra={"source": Path(source).name, "talkcodec": __version__},
    )  # fmt: skip
    crops: Mp4Writer | None = None
    audio_sent = 0  # samples given to the Opus encoder
    try:
        with TkcWriter(output, header) as writer:

            def send_audio(final: bool = False) -> None:
                """Interleave the audio up to the frames sent (a packet of several holds some back)."""
                nonlocal audio_sent
                if opus is None or samples is None:
                    return
                end = round(stats.frames / fps * OPUS_RATE)
                chunks = opus.encode(samples[audio_sent:end]) + (opus.encode(None) if final else [])
                audio_sent = end
                for pts, data in chunks:
                    writer.write_audio(pts, data)
                    stats.audio_bytes += len(data)

            frames = read_frames(source, fps=fps, max_seconds=max_seconds)
            for index, frame in enumerate(tqdm(frames, total=total, unit="frame", desc="encode", disable=not progress)):
                tick = time.perf_counter()
                packets = encoder.encode(frame)
                stats.codec_seconds += time.perf_counter() - tick
                for packet in packets:
                    writer.write_packet(packet)
                    stats.count(packet)
                if crops_to and (crop := encoder.last_crop) is not None:
                    crops = crops or Mp4Writer(crops_to, rate, crop.shape[1::-1], lossless=True)
                    crops.write(crop)
                send_audio()
                if stats.faceless_frames == stats.frames and stats.frames >= NO_FACE_GIVE_UP_S * fps:
                    break
                if index % 25 == 0:
                    writer.flush()
            for packet in encoder.flush():  # frames held back for a packet of several
                writer.write_packet(packet)
                stats.count(packet)
            send_audio(final=True)
    finally:
        encoder.close()
        if crops is not None:
            crops.close()
    stats.wall_seconds = time.perf_counter() - start
    stats.size, stats.capped_from = encoder.size, encoder.capped_from
    if stats.frames and stats.faceless_frames == stats.frames:
        Path(output).unlink(missing_ok=True)
        raise InputError(f"{source}: no face found in the first {stats.duration:.0f} s of video")
    return stats


def decode_file(
    source: str | Path,
    output: str | Path,
    progress: bool = True,
    compose: Callable[[int, np.ndarray], np.ndarray] | None = None,
    settings: dict[str, Any] | None = None,
) -> StreamStats:
    """Decode a .tkc file to an mp4 (H.264 + AAC). Past damage, decoding resumes at the next
    intact record (the frames in between are held, and so is every frame until the next key);
    ``stats.damage`` says where the first damage was and ``stats.damaged_records`` how many
    stretches were skipped. A file cut short decodes up to its last whole record. Frames the
    file does not carry (gaps in the frame numbers) are held, at most ``MAX_GAP_S`` in one gap
    and, in all, ``MAX_GAP_S`` more than the frames it carries: a small file cannot make a long
    video (``stats.stopped`` then says why it stopped). ``compose(frame_index,
    image)`` may replace each output image (the demo puts the original beside the decoded face).
    ``settings`` go to the codec (e.g. ``weights`` for the learned codecs)."""
    start = time.perf_counter()
    with TkcReader(source) as reader:
        header = reader.header
        decoder = get_codec(header.codec, **(settings or {})).decoder()
        if decoder.uses_audio and header.audio_rate:
            decoder.push_audio(_stream_audio(source), OPUS_RATE)  # a file has all of it: no look-ahead wait
        stats = StreamStats(header.codec, float(header.fps))
        opus = OpusDecoder() if header.audio_rate else None
        max_gap = int(MAX_GAP_S * float(header.fps))
        writer: Mp4Writer | None = None
        audio_written = 0
        damage: str | None = None  # the first packet the decoder refused
        held = 0  # frames written for which the file carries nothing (bounded: a file cannot amplify itself)
        last: np.ndarray | None = None

        def written() -> int:
            return writer.frames_written if writer is not None else 0

        def write(image: np.ndarray) -> None:
            nonlocal writer
            if compose is not None:
                image = compose(written(), image)
            if writer is None:
                size = (image.shape[1], image.shape[0])
                writer = Mp4Writer(output, header.fps, size, sample_rate=OPUS_RATE if opus else None)
            writer.write(image)

        bar = tqdm(unit="frame", desc="decode", disable=not progress)
        try:
            for item in chain(reader, [None]):  # None: the end, where frames still waiting come out
                if isinstance(item, AudioChunk):
                    if opus is None or writer is None or item.pts < audio_written:
                        continue
                    if item.pts - audio_written > MAX_GAP_S * OPUS_RATE:
                        stats.stopped = f"audio jumps {item.pts - audio_written} samples ahead"
                        break
                    pcm = opus.decode(item.data)
                    if item.pts > audio_written:  # a gap: silence keeps the rest in sync
                        writer.write_audio(np.zeros(item.pts - audio_written, np.float32))
                    writer.write_audio(pcm)
                    audio_written = item.pts + len(pcm)
                    stats.audio_bytes += len(item.data)
                    continue
                tick = time.perf_counter()
                if item is None:
                    frames = decoder.flush()
                else:
                    stats.count(item)
                    try:
                        frames = decoder.decode(item)
                    except PacketError as exc:  # a lost packet: its frames are held, the stream goes on
                        damage = damage or f"undecodable packet (seq {item.seq}): {exc}"
                        stats.damaged_records += 1
                        frames = []
                stats.codec_seconds += time.perf_counter() - tick
                for frame in frames:
                    if frame.seq - written() > max_gap:
                        stats.stopped = f"frame numbers jump from {written()} to {frame.seq}"
                        break
                    if (skipped := held + frame.seq - written()) > max_gap + stats.frames:
                        stats.stopped = (f"the file skips {skipped} frame numbers, more than the {stats.frames} frames "
                                        f"it carries + {MAX_GAP_S:g} s: stopped at frame {written()}")  # fmt: skip
                        break
                    while written() < frame.seq:
                        write(last if last is not None else frame.image)  # frames that never came: hold
                        stats.concealed_frames += 1
                        held += 1
                    write(frame.image)
                    last = frame.image
                    stats.concealed_frames += frame.concealed
                    bar.update(1)
                if stats.stopped:
                    break
            stats.damage = reader.damage or damage or stats.stopped
            stats.damaged_records += reader.damaged_records
            stats.frames = written()  # what the output holds (the packets may carry fewer)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
    if writer is None:
        raise InputError(f"{source}: no decodable frame")
    stats.wall_seconds = time.perf_counter() - start
    return stats


def _stream_audio(source: str | Path) -> np.ndarray:
    """All of a .tkc file's audio as one 48 kHz track from time 0 (gaps filled with silence)."""
    opus = OpusDecoder()
    pieces: list[np.ndarray] = []
    end = 0
    with TkcReader(source) as reader:
        for item in reader:
            if not isinstance(item, AudioChunk) or item.pts < end:
                continue
            if item.pts - end > MAX_GAP_S * OPUS_RATE:
                break
            pcm = opus.decode(item.data)
            pieces += [np.zeros(item.pts - end, np.float32), pcm]
            end = item.pts + len(pcm)
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def file_info(source: str | Path) -> dict[str, Any]:
    """What ``talkcodec info`` prints: codec, settings, duration, and the kbps split."""
    with TkcReader(source) as reader:
        header = reader.header
        stats = StreamStats(header.codec, float(header.fps))
        for item in reader:
            if isinstance(item, AudioChunk):
                stats.audio_bytes += len(item.data)
            else:
                stats.count(item)
        stats.damage, stats.damaged_records = reader.damage, reader.damaged_records
    summary = stats.summary()
    for key in ("concealed_frames", "stopped", "wall_seconds", "codec_seconds", "processing_fps", "codec_fps"):
        summary.pop(key)
    summary.update(
        file=str(source), file_bytes=Path(source).stat().st_size, size=[header.width, header.height],
        audio_rate=header.audio_rate, settings=header.settings, source=header.extra.get("source"),
    )  # fmt: skip
    return summary
