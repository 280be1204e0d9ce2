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
def large_video(tmp_path_factory: pytest.TempPathFactory, sample_video) -> Path:
    """The sample 3x larger (960x960, its 204 px face crop now 612 px): 3 s with its audio."""
    from talkcodec.audio import load_audio
    from talkcodec.video import read_frames

    path = tmp_path_factory.mktemp("videos") / "large.mp4"
    with Mp4Writer(path, 25, (960, 960), sample_rate=48000) as writer:
        for frame in read_frames(sample_video, fps=25, max_seconds=3.0):
            writer.write(cv2.resize(frame, (960, 960), interpolation=cv2.INTER_CUBIC))
        writer.write_audio(load_audio(sample_video, 48000, 3.0))
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
def training_cache(tmp_path_factory, sample_video):
    """(folder, summary): the first 2 s of the sample preprocessed into a training cache."""
    from talkcodec.training.cache import CacheSettings, build_cache

    folder = tmp_path_factory.mktemp("cache")
    return folder, build_cache([sample_video], folder, CacheSettings(max_seconds=2.0), progress=False)


@pytest.fixture(scope="session")
def cache_folder(training_cache):
    return training_cache[0]


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


@pytest.fixture(scope="session")
def tiny_weights():
    """``tiny_weights(codec, path, seed=0)``: a weights file of a tiny random `avfr` (mouth coder,
    over the shipped mouth model) or `apb` network with coding statistics fitted on random tracks
    (for plumbing, not pictures)."""
    import torch
    from talkcodec.models.apb import APBConfig, APBModel
    from talkcodec.models.mouth_coder import MouthCoder, MouthCoderConfig

    from talkcodec.audio import MelSettings
    from talkcodec.codecs.learned import shipped_weights
    from talkcodec.codecs.posed import CODING_STEP, LIP_POSITION_STEP_PX, load_mouth_model
    from talkcodec.quant import VectorCoding
    from talkcodec.training.trainer import export_weights

    def make(codec: str, path: Path, seed: int = 0) -> Path:
        torch.manual_seed(seed)
        info = {}
        if codec == "avfr":
            mouth = load_mouth_model(str(shipped_weights("apb_mouth")))
            model = MouthCoder(MouthCoderConfig(coefficients=mouth.basis.size, code=3, hidden=8))
            step = np.concatenate([CODING_STEP, [LIP_POSITION_STEP_PX] * 2, np.ones(model.config.code)])
            info = {"mouth_model": mouth.fingerprint}
        else:
            model = APBModel(APBConfig.tiny())
            step = CODING_STEP
        rng = np.random.default_rng(seed)
        tracks = [np.cumsum(rng.normal(0, 0.01, (50, len(step))), axis=0) * step / step.min()]
        return export_weights(path, codec, model, VectorCoding.fit(tracks, step), MelSettings(), info)

    return make
