"""Shared fixtures: everything the tests need is made here or ships with talkcodec (offline)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from talkcodec.sample import sample_path
from talkcodec.video import Mp4Writer

CLIPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clips"


@pytest.fixture(scope="session")
def sample_video() -> Path:
    """The talking astronaut that ships inside the package (6 s, 25 fps, with speech)."""
    return sample_path()


@pytest.fixture(scope="session")
def noface_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One second of smooth coloured noise: a valid video with no face in it."""
    path = tmp_path_factory.mktemp("videos") / "noface.mp4"
    rng = np.random.default_rng(0)
    with Mp4Writer(path, 25, (128, 128)) as writer:
        for _ in range(25):
            writer.write(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="session")
def astronaut_frame() -> np.ndarray:
    from skimage.data import astronaut

    return np.ascontiguousarray(astronaut()[0:320, 20:340])  # (320, 320, 3), face in the middle


@pytest.fixture(scope="session")
def real_clips() -> Path:
    if not CLIPS.is_dir():
        pytest.skip(f"real clips not found at {CLIPS} (only CI and developer machines have them)")
    return CLIPS


@pytest.fixture(scope="session")
def moving_face(astronaut_frame):
    """Two seconds of the astronaut sliding and zooming a little, 256x256 at 25 fps."""
    base = cv2.resize(astronaut_frame, (256, 256))
    frames = []
    for i in range(50):
        m = cv2.getRotationMatrix2D((128, 128), 2 * np.sin(i / 8), 1 + 0.02 * np.sin(i / 11))
        m[0, 2] += 4 * np.sin(i / 6)
        frames.append(cv2.warpAffine(base, m, (256, 256), borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)
