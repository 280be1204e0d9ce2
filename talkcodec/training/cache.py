"""One-off preprocessing of talking-head clips into a compact training cache.

Per clip, one ``NAME.npz`` (no pickled objects) holding, at 25 fps:

- ``jpeg`` + ``offsets``: the 256x256 face crops, JPEG at high quality, concatenated
- ``landmarks`` (N, 478, 3) float16 crop pixels (x, y and mediapipe's relative depth z), ``face`` (N,)
  bool (False: no face found)
- ``pose`` (N, 3) yaw/pitch/roll degrees, ``blink`` (N, 2) eye aspect ratios (caches built before
  the current `avfr` also hold a ``mask`` of the person segmentation: nothing reads it now)
- ``mel`` (80, T) float16 log-mel (10 ms hop) of the audio *after an Opus round trip*, i.e. what
  a receiver actually hears; ``has_audio`` says whether the clip had any.

``cache.json`` records the settings; a clip already cached with the same settings is skipped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..audio import MelSettings, load_audio, log_mel, opus_round_trip
from ..errors import InputError
from ..face import CropSettings, FaceTracker
from ..video import probe, read_frames

CACHE_VERSION = 2  # 2: landmarks keep z (the mouth model's canonical frame needs it)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


@dataclass(frozen=True)
class CacheSettings:
    fps: float = 25.0
    jpeg_quality: int = 95
    max_seconds: float | None = None  # per clip; None = all of it
    opus_bitrate: int = 24000
    sample_rate: int = 16000  # mel settings are talkcodec.audio.MelSettings() at this rate


def find_clips(paths: list[str | Path]) -> list[Path]:
    """Video files named directly or found (not recursively) in the given folders, sorted by name."""
    clips: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            clips += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            clips.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    if not clips:
        raise InputError(f"no video clips in {', '.join(map(str, paths))}")
    names = [c.stem for c in clips]
    if len(set(names)) != len(names):
        raise InputError("two clips share a file name; the cache is keyed by name")
    return clips


def _cache_clip(clip: Path, settings: CacheSettings, out: Path, progress: bool) -> dict:
    info = probe(clip)
    jpegs, landmarks, face, poses, blinks = [], [], [], [], []
    total = round(min(info.duration, settings.max_seconds or info.duration) * settings.fps)
    with FaceTracker(CropSettings(), segmentation=False, pose=True) as tracker:
        frames = read_frames(clip, fps=settings.fps, max_seconds=settings.max_seconds)
        for frame in tqdm(frames, total=total, desc=clip.stem, unit="frame", disable=not progress, leave=False):
            seen = tracker.process(frame)
            ok, jpeg = cv2.imencode(".jpg", seen.crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])
            jpegs.append(jpeg.reshape(-1))
            face.append(seen.landmarks is not None)
            landmarks.append(seen.landmarks if seen.landmarks is not None else np.zeros((478, 3), np.float32))
            poses.append(seen.pose if seen.pose is not None else np.zeros(3, np.float32))
            blinks.append(seen.blink if seen.blink is not None else np.zeros(2, np.float32))
    if not jpegs:
        raise InputError(f"{clip}: no frames")
    samples = load_audio(clip, settings.sample_rate, settings.max_seconds) if info.has_audio else None
    has_audio = samples is not None and samples.size > 0
    if has_audio:
        mel = log_mel(opus_round_trip(samples, settings.sample_rate, settings.opus_bitrate), MelSettings())
    else:
        mel = np.full((MelSettings().n_mels, 1), np.log(1e-6), np.float32)
    offsets = np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64)
    np.savez(
        out, jpeg=np.concatenate(jpegs), offsets=offsets, landmarks=np.stack(landmarks).astype(np.float16),
        face=np.array(face), pose=np.stack(poses).astype(np.float32),
        blink=np.stack(blinks).astype(np.float32), mel=mel.astype(np.float16), has_audio=np.array(has_audio),
    )  # fmt: skip
    return {"frames": len(jpegs), "faces": int(np.sum(face)), "has_audio": bool(has_audio), "bytes": out.stat().st_size}


def build_cache(
    data: list[str | Path], cache_dir: str | Path, settings: CacheSettings = CacheSettings(), progress: bool = True
) -> dict[str, dict]:
    """Preprocess every clip once into ``cache_dir``; returns {clip name: summary}."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / "cache.json"
    wanted = {"version": CACHE_VERSION, "settings": asdict(settings), "mel": asdict(MelSettings())}
    manifest: dict = {**wanted, "clips": {}}
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if all(old.get(k) == v for k, v in wanted.items()):
            manifest["clips"] = old.get("clips", {})
    clips = find_clips(list(data))
    for clip in tqdm(clips, desc="cache", unit="clip", disable=not progress):
        out = cache_dir / f"{clip.stem}.npz"
        if clip.stem in manifest["clips"] and out.exists():
            continue
        try:
            manifest["clips"][clip.stem] = _cache_clip(clip, settings, out, progress)
        except InputError as exc:
            tqdm.write(f"skipped {clip}: {exc}")
            continue
        manifest_path.write_text(json.dumps(manifest, indent=1))  # after each clip: an interrupted run resumes
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return {name: manifest["clips"][name] for name in (c.stem for c in clips) if name in manifest["clips"]}
