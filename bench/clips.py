"""Bench inputs: each video cropped ONCE to the face crop at 25 fps (the same crop for every
codec; 256x256, or ``size``: a clip whose face is smaller in the source is refused, never
upscaled), from a fixed box around the first frame's face, widened to head and shoulders.
A clip is its first ``seconds``, or with ``tail`` its last fraction (the part of a training
clip the trainer holds out, ``Split.tail``), at most ``seconds`` of it.

Crops are cached losslessly (``crops/NAME.mp4``, bit-exact RGB) with the original's landmarks
(``crops/NAME.npy``) so reruns and worker processes do not redo the face work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from ..audio import load_audio, opus_round_trip
from ..errors import InputError
from ..video import Mp4Writer, probe, read_frames

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
FIND_FACE_S = 2.0  # the face must show within the first 2 seconds
AUDIO_RATE = 16000


@dataclass
class Clip:
    name: str
    frames: np.ndarray  # (T, S, S, 3) uint8
    fps: float
    landmarks: np.ndarray  # (T, 478, 2) of the original crop (its pixels), NaN where no face
    audio: np.ndarray | None = None  # 16 kHz mono as a receiver hears it (after Opus), None if silent


def expand(paths: list[str | Path]) -> list[Path]:
    """Videos named directly, and those inside named folders (sorted)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        else:
            out.append(path)
    return out


def tail_start(path: Path, tail: float | None, fps: float = 25.0) -> int:
    """First frame of the last ``tail`` of a clip at ``fps`` (0 without a tail), split as the
    trainer splits its cache: frame round(T * (1 - tail)) of T."""
    if tail is None:
        return 0
    if not 0 < tail < 1:
        raise InputError(f"tail must be a fraction in (0, 1), got {tail:g}")
    return round(round(probe(path).duration * fps) * (1 - tail))


def crop_clip(path: Path, seconds: float, fps: float = 25.0, start: int = 0, size: int = 256) -> np.ndarray:
    """(T, size, size, 3) crops of ``seconds`` from frame ``start``; ``InputError`` when no face
    shows, or when its crop is smaller than ``size`` in the source."""
    from ..face import CROP_SIZE, CropSettings, FaceTracker, crop_square, square_box

    frames = list(islice(read_frames(path, fps=fps, max_seconds=start / fps + seconds), start, None))
    if not frames:
        raise InputError(f"{path.name}: no frames from {start / fps:.1f} s on")
    box = None
    with FaceTracker(segmentation=False, pose=False) as tracker:
        for frame in frames[: int(FIND_FACE_S * fps) + 1]:
            found = tracker.detect(frame)
            if found is not None:
                box = square_box(found[:, :2], CropSettings(), (frame.shape[1], frame.shape[0]))
                break
    if box is None:
        raise InputError(f"{path.name}: no face in the first {FIND_FACE_S:g} s")
    if size > CROP_SIZE and box[2] < size:
        raise InputError(f"{path.name}: the face crop is {box[2]:.0f} px in the source, smaller than {size} (not upscaled)")
    return np.stack([crop_square(f, box, size) for f in frames])


def load_clip(path: Path, cache: Path, seconds: float, fps: float = 25.0, tail: float | None = None,
              size: int = 256) -> Clip:  # fmt: skip
    """The clip's crops and landmarks, from the cache when they were made with the same settings."""
    from ..metrics import landmarks

    cache.mkdir(parents=True, exist_ok=True)
    start = tail_start(path, tail, fps)
    stem = (path.stem if tail is None else f"{path.stem}-tail{tail:g}") + ("" if size == 256 else f"-{size}px")
    video, marks, meta = cache / f"{stem}.mp4", cache / f"{stem}.npy", cache / f"{stem}.json"
    wanted = {"source": str(path.resolve()), "seconds": seconds, "fps": fps, "start": start, "size": size}
    if not (meta.exists() and json.loads(meta.read_text()) == wanted and video.exists() and marks.exists()):
        frames = crop_clip(path, seconds, fps, start, size)
        with Mp4Writer(video, fps, (frames.shape[2], frames.shape[1]), lossless=True) as writer:
            for frame in frames:
                writer.write(frame)
        np.save(marks, landmarks(frames))
        meta.write_text(json.dumps(wanted))
    frames = np.stack(list(read_frames(video)))
    samples = load_audio(path, AUDIO_RATE, start / fps + seconds) if probe(path).has_audio else None
    if samples is not None:
        samples = samples[round(start / fps * AUDIO_RATE) :]
    audio = opus_round_trip(samples, AUDIO_RATE) if samples is not None and samples.size else None
    return Clip(path.stem, frames, fps, np.load(marks), audio)
