"""The mouth painter: its crop geometry, its weights, the receivers using it and its training."""

import shutil

import cv2

import numpy as np
import pytest
import torch

import talkcodec
from talkcodec.codecs.mesh_model import ShapeModel
from talkcodec.errors import WeightsError
from talkcodec.models.mouth_painter import MouthPainter, MouthPainterConfig
from talkcodec.packet import Packet
from talkcodec.painter import EYE_CORNERS, OUTER_LIPS, WEIGHTS_CODEC, crop_affine, cut, load_painter, paste
from talkcodec.video import read_frames
from talkcodec.weights import module_tensors, save_weights

TINY = MouthPainterConfig(size=32, block_expansion=4, num_blocks=2, max_features=8)


def face_points(roll_degrees: float) -> np.ndarray:
    """(478, 3) the canonical face seen in a 256 crop, turned by ``roll_degrees`` in the picture."""
    a = np.radians(roll_degrees)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return 70 * ShapeModel.load().mean @ rotation.T + np.array([128, 120, 0])


@pytest.mark.parametrize("roll", [-25.0, 0.0, 10.0])
def test_the_crop_is_upright_and_centred_on_the_lips(roll):
    points = face_points(roll)
    affine = crop_affine(points, 96)
    moved = points[:, :2] @ affine[:, :2].T + affine[:, 2]
    eyes = moved[list(EYE_CORNERS)]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6 and np.allclose(np.linalg.norm(eyes[1] - eyes[0]), 96)
    assert np.allclose(moved[list(OUTER_LIPS)].mean(axis=0), 48)


@pytest.mark.parametrize("spoil", [lambda p: p * np.nan, lambda p: p * 0, lambda p: p * 1e6, lambda p: p + np.inf])
def test_landmarks_that_make_no_face_are_not_painted(spoil):
    assert crop_affine(spoil(face_points(0.0)), 96) is None


def test_pasting_the_cut_puts_the_same_pixels_back_and_leaves_the_rest():
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (256, 256, 3)), (0, 0), 4)  # smooth: resampling twice keeps it
    image = np.clip(128 + 60 * noise / noise.std(), 0, 255).astype(np.uint8)
    affine = crop_affine(face_points(15.0), 64)
    crop, mask = cut(image, affine, 64), np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1.0
    pasted = image.copy()
    paste(pasted, 255 - crop.astype(np.float32), mask, affine)  # the negative: every pasted pixel changes
    inverse_centre = np.rint(np.linalg.solve(affine[:, :2], np.array([32.0, 32.0]) - affine[:, 2])).astype(int)
    x, y = inverse_centre
    assert np.abs(pasted[y, x].astype(int) - (255 - image[y, x].astype(int))).max() <= 3
    changed = np.abs(pasted.astype(int) - image.astype(int)).max(axis=2) > 0
    assert changed.sum() < 0.1 * changed.size and not changed[:100].any()  # the eyes and above are untouched
    repasted = image.copy()
    paste(repasted, crop.astype(np.float32), np.ones((64, 64), np.float32), affine)  # its own pixels: nearly nothing moves
    assert np.abs(repasted.astype(int) - image.astype(int)).mean() < 1.0


def write_painter(path, config=TINY, codec=WEIGHTS_CODEC, config_dict=None):
    torch.manual_seed(0)
    save_weights(path, codec, config_dict or config.to_dict(), module_tensors(MouthPainter(config), "model."))
    load_painter.cache_clear()
    return str(path)


@pytest.mark.parametrize(
    "codec, config",
    [("apb-mouth", TINY.to_dict()), (WEIGHTS_CODEC, {**TINY.to_dict(), "size": 33}),
     (WEIGHTS_CODEC, {**TINY.to_dict(), "block_expansion": "wide"}), (WEIGHTS_CODEC, {**TINY.to_dict(), "max_features": 16})],
)  # fmt: skip
def test_unusable_painter_weights_are_a_weights_error(tmp_path, codec, config):
    path = write_painter(tmp_path / "p.safetensors", codec=codec, config_dict=config)
    with pytest.raises(WeightsError):
        load_painter(path)


@pytest.fixture(scope="module")
def mesh_packets(sample_video):
    encoder = talkcodec.get_codec("mesh").encoder(fps=25)
    packets = [p for f in read_frames(sample_video, fps=25, max_seconds=0.6) for p in encoder.encode(f)] + encoder.flush()
    return packets, encoder.last_observation.landmarks


def decode(packets, **settings):
    decoder = talkcodec.get_codec("mesh", **settings).decoder()
    frames = [f.image.astype(int) for p in packets for f in decoder.decode(Packet.from_bytes(p.to_bytes()))]
    return frames + [f.image.astype(int) for f in decoder.flush()]


def test_mesh_paints_the_mouth_and_nothing_else(tmp_path, mesh_packets):
    packets, landmarks = mesh_packets
    plain = decode(packets, mouth_fill="off")
    painted = decode(packets, painter=write_painter(tmp_path / "p.safetensors"))
    lips = landmarks[list(OUTER_LIPS), :2]
    top = int(lips[:, 1].min()) - 35  # above the paste mask's reach
    for a, b in zip(plain, painted):
        assert np.array_equal(a[:top], b[:top])
    assert np.mean([np.abs(a - b).mean() for a, b in zip(plain, painted)]) > 0.1


def test_painter_trains_validates_on_other_people_and_loads(tmp_path, cache_folder):
    from talkcodec.training.painter import train_painter

    held_out = tmp_path / "cache"
    shutil.copytree(cache_folder, held_out)
    shutil.copy(held_out / "sample.npz", held_out / "someone_else.npz")
    settings = {"steps": 3, "batch_size": 4, "pairs": 12, "validation_pairs": 8}
    info = train_painter(tmp_path / "run", settings, held_out, progress=False, model_config=TINY, held_out=("someone_else",))
    unseen = info["validation"]["unseen"]
    assert info["step"] == 3 and info["trained_on"] == ["sample"]
    assert all(0 <= unseen[k] < 1 for k in ("painter_lpips", "dark_lpips", "warp_lpips"))
    assert unseen["painter_l1"] != unseen["warp_l1"]  # the (random) painter drew something
    painter = load_painter(str(tmp_path / "run" / "weights.safetensors"))
    assert painter.size == TINY.size
