"""The sample video that ships inside talkcodec, so ``talkcodec demo`` runs with no input.

It is made, not filmed: scikit-image's public-domain ``astronaut()`` photo (NASA, Eileen
Collins) with smooth head motion and a jaw that opens with the loudness of a synthetic voice
(espeak-ng when installed, else a buzzing vowel-like tone). The background stays still, as
with a webcam on a desk. Regenerate with ``python -m talkcodec.sample``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from .audio import load_audio
from .face import INNER_LIPS, FaceTracker
from .video import Mp4Writer
from .warp import PiecewiseAffineWarp, fill_mouth, polygon_area

SAMPLE_PATH = resources.files("talkcodec") / "data" / "sample.mp4"
SPEECH = (
    "Hello! This is talk codec. Instead of pixels, it sends the motion of a face, "
    "a few bytes per frame, and the receiver redraws the face from one picture."
)


def sample_path() -> Path:
    return Path(str(SAMPLE_PATH))


def synthetic_speech(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """Speech from espeak-ng if it is installed, else syllable-like bursts of a 120 Hz buzz."""
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "speech.wav"
            subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), SPEECH], check=True, capture_output=True)
            samples = load_audio(wav, sample_rate)
        if samples is not None:
            out = np.zeros(int(seconds * sample_rate), np.float32)
            out[: min(len(out), len(samples))] = samples[: len(out)]
            return out
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    buzz = sum(np.sin(2 * np.pi * 120 * h * t) / h for h in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2 * (np.sin(2 * np.pi * 0.4 * t) > -0.3)
    return (0.3 * buzz * syllables / 3).astype(np.float32)


def loudness(samples: np.ndarray, sample_rate: int, fps: float, frames: int) -> np.ndarray:
    """Per-frame loudness in [0, 1] (RMS over each frame's span, smoothed, normalised)."""
    hop = sample_rate / fps
    rms = np.array([np.sqrt(np.mean(samples[int(i * hop) : int((i + 1) * hop)] ** 2) + 1e-12) for i in range(frames)])
    rms = np.convolve(rms, np.ones(3) / 3, mode="same")
    return np.clip(rms / (np.percentile(rms, 95) + 1e-9), 0, 1)


def make_sample(path: str | Path, seconds: float = 6.0, fps: float = 25.0) -> Path:
    from skimage.data import astronaut

    image = np.ascontiguousarray(astronaut()[0:320, 20:340])  # (320, 320, 3) RGB, head and shoulders
    side = image.shape[0]
    with FaceTracker(segmentation=False, pose=False) as tracker:
        landmarks = tracker.detect(image)
    if landmarks is None:
        raise RuntimeError("mediapipe found no face in astronaut()")
    points = landmarks[:, :2].astype(np.float64)  # (478, 2) source pixels
    lips = points[list(INNER_LIPS)]
    mouth_y = lips[:, 1].mean()
    cx = points[:, 0].mean()
    half_width = np.ptp(points[:, 0]) / 2
    lower = np.clip((points[:, 1] - mouth_y) / 4.0, 0, 1) * (1 - np.clip(np.abs(points[:, 0] - cx) / half_width, 0, 1) ** 2)
    lower[[i for i in INNER_LIPS if points[i, 1] >= mouth_y]] = 1.0  # the lower inner lip moves fully
    centre = points.mean(axis=0)

    frames = int(seconds * fps)
    rate = 16000
    speech = synthetic_speech(seconds, rate)
    opening = loudness(speech, rate, fps, frames) * 0.05 * np.ptp(points[:, 1])  # jaw drop in px
    warp = PiecewiseAffineWarp(side)
    reference_area = polygon_area(lips)
    path = Path(path)
    with Mp4Writer(path, fps, (side, side), sample_rate=rate, crf=20) as writer:
        for i in range(frames):
            t = i / fps
            angle = np.radians(4.0 * np.sin(2 * np.pi * t / 3.1))
            shift = np.array([7.0 * np.sin(2 * np.pi * t / 4.3), 4.0 * np.sin(2 * np.pi * t / 2.3)])
            scale = 1.0 + 0.03 * np.sin(2 * np.pi * t / 5.0)
            moved = points.copy()
            moved[:, 1] += opening[i] * lower
            rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            moved = (moved - centre) @ rotation.T * scale + centre + shift
            frame = warp(image, points, moved)
            fill_mouth(frame, moved[list(INNER_LIPS)], reference_area)
            writer.write(frame)
        writer.write_audio(speech)
    return path


if __name__ == "__main__":
    print(make_sample(sample_path()))
