import cv2
import numpy as np
import pytest

from talkcodec.face import CROP_SIZE, FaceTracker, canonical_face_model, crop_square, eye_aspect_ratio


def test_canonical_model_is_the_symmetric_mediapipe_face():
    model = canonical_face_model()
    assert model.shape == (468, 3)
    mirrored = model * np.array([-1, 1, 1])
    distance = np.linalg.norm(model[:, None] - mirrored[None], axis=2).min(axis=1)
    assert distance.max() < 1e-4


@pytest.fixture(scope="module")
def tracker():
    with FaceTracker() as t:
        yield t


def _rotate(image, degrees):
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)


def test_front_end_on_a_face(astronaut_frame):
    with FaceTracker() as tracker:
        obs = tracker.process(astronaut_frame)
    assert obs.crop.shape == (CROP_SIZE, CROP_SIZE, 3) and not obs.face_lost and obs.crop_changed
    assert obs.landmarks.shape == (478, 3)
    assert (obs.landmarks[:, :2] > 0).all() and (obs.landmarks[:, :2] < CROP_SIZE).all()
    assert obs.mask.shape == (CROP_SIZE, CROP_SIZE) and 0.2 < obs.mask.mean() < 0.9
    assert np.all(np.abs(obs.pose) < 25)  # a near-frontal portrait
    assert np.all((obs.blink > 0.15) & (obs.blink < 0.5))  # eyes open


@pytest.mark.parametrize("degrees", [-12, 12])
def test_roll_follows_an_in_plane_rotation(astronaut_frame, degrees):
    rolls = []
    for image in (astronaut_frame, _rotate(astronaut_frame, degrees)):
        with FaceTracker(segmentation=False) as tracker:
            rolls.append(tracker.process(image).pose[2])
    assert abs(abs(rolls[1] - rolls[0]) - abs(degrees)) < 4
    assert np.sign(rolls[1] - rolls[0]) == -np.sign(degrees)  # image y points down


def test_closed_eyes_lower_the_eye_aspect_ratio():
    points = np.zeros((478, 3))
    for eye, x0 in (((33, 160, 158, 133, 153, 144), 0), ((362, 385, 387, 263, 373, 380), 50)):
        corner, top1, top2, corner2, bottom2, bottom1 = eye
        points[[corner, corner2], 0] = [x0, x0 + 30]
        for top, bottom, x in ((top1, bottom1, x0 + 10), (top2, bottom2, x0 + 20)):
            points[[top, bottom], 0] = x
            points[top, 1], points[bottom, 1] = -5, 5
    open_ear = eye_aspect_ratio(points)
    points[:, 1] *= 0.2
    assert np.allclose(open_ear, 1 / 3) and np.all(eye_aspect_ratio(points) < 0.1)


def test_face_that_leaves_and_returns(astronaut_frame):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, astronaut_frame.shape, dtype=np.uint8)
    moved = np.roll(astronaut_frame, 60, axis=1)
    with FaceTracker(segmentation=False) as tracker:
        seen = [tracker.process(f) for f in [astronaut_frame] * 3 + [noise] * 3 + [moved] * 2]
    assert [o.face_lost for o in seen] == [False] * 3 + [True] * 3 + [False] * 2
    assert seen[0].crop_changed and not seen[1].crop_changed and seen[6].crop_changed
    assert all(o.crop.shape == (CROP_SIZE, CROP_SIZE, 3) for o in seen)


def test_no_face_at_all_gives_a_centred_crop():
    with FaceTracker(segmentation=False) as tracker:
        obs = tracker.process(np.full((200, 300, 3), 127, np.uint8))
    assert obs.face_lost and obs.crop.shape == (CROP_SIZE, CROP_SIZE, 3) and obs.pose is None


def test_small_face_in_a_wide_frame(astronaut_frame):
    wide = np.full((720, 1280, 3), 90, np.uint8)
    wide[300:620, 800:1120] = astronaut_frame
    with FaceTracker(segmentation=False) as tracker:
        obs = tracker.process(wide)
    cx, cy, side = obs.crop_box
    assert not obs.face_lost and 800 < cx < 1120 and 250 < cy < 620 and 150 < side < 400


@pytest.mark.parametrize(
    ("lo", "hi", "frame"),
    [((100, 60), (420, 470), (512, 512)),  # a laptop-webcam close-up: the face fills the picture
     ((0, 0), (300, 300), (320, 240)),  # a face larger than a landscape frame's height
     ((560, 20), (630, 110), (640, 480)),  # a small face at the corner
     ((200, 150), (300, 260), (640, 480))],  # an ordinary framing: the crop is 1.9 faces wide
)  # fmt: skip
def test_the_crop_always_lies_inside_the_picture(lo, hi, frame):
    from talkcodec.face import CropSettings, square_box

    cx, cy, side = square_box(np.array([lo, hi], np.float64), CropSettings(), frame)
    w, h = frame
    assert 0 <= cx - side / 2 and cx + side / 2 <= w and 0 <= cy - side / 2 and cy + side / 2 <= h
    assert side == min(1.9 * max(hi[0] - lo[0], hi[1] - lo[1]), w, h)


def test_a_close_up_is_cropped_inside_the_frame_and_tracked(astronaut_frame):
    close_up = cv2.resize(astronaut_frame[40:240, 60:260], (512, 512), interpolation=cv2.INTER_CUBIC)
    with FaceTracker(segmentation=False) as tracker:
        seen = [tracker.process(close_up) for _ in range(3)]
    for obs in seen:
        cx, cy, side = obs.crop_box
        assert not obs.face_lost and side <= 512
        assert 0 <= cx - side / 2 and cx + side / 2 <= 512 and 0 <= cy - side / 2 and cy + side / 2 <= 512
    assert not any(o.crop_changed for o in seen[1:])  # a capped crop is not mistaken for a drift


def test_bad_frames_are_refused(tracker):
    with pytest.raises(ValueError, match="uint8 RGB"):
        tracker.process(np.zeros((10, 10), np.uint8))


def test_crop_square_replicates_past_the_edges():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :50] = 255
    crop = crop_square(image, (0.0, 50.0, 100.0), 64)
    assert crop[:, :16].min() == 255  # left half of the crop lies outside: replicated white
