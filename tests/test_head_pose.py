"""The 6-DoF head pose (solvePnP on the canonical face) and how `apb`'s receiver moves its reference with it."""

from __future__ import annotations

import numpy as np
import pytest

from talkcodec.codecs.posed import landmark_vector, pose_blink_vector, posed_landmarks
from talkcodec.eyes import EYE_CORNERS, IRISES
from talkcodec.face import CROP_SIZE, NUM_LANDMARKS, HeadPoseEstimator, eye_aspect_ratio


def face_at(angles, position) -> np.ndarray:
    """(478, 2) landmarks of the canonical face seen at a pose (irises at the eye centres)."""
    points = HeadPoseEstimator().project(angles, position)  # (468, 2)
    irises = [np.repeat(points[list(corners)].mean(axis=0)[None], 5, axis=0) for corners in EYE_CORNERS]
    return np.concatenate([points, *irises])


@pytest.mark.parametrize("angles, position", [
    ((0.0, 0.0, 0.0), (0.0, 0.0, 40.0)),
    ((20.0, -10.0, 5.0), (2.0, -1.0, 35.0)),
    ((-30.0, 15.0, -10.0), (-3.0, 2.5, 60.0)),
])  # fmt: skip
def test_solve_recovers_the_pose_that_project_drew(angles, position):
    landmarks = face_at(angles, position)
    found_angles, found_position = HeadPoseEstimator().solve(landmarks)
    assert np.allclose(found_angles, angles, atol=0.05) and np.allclose(found_position, position, atol=0.01)


def test_the_same_pose_moves_nothing_and_a_shift_moves_every_point_alike():
    landmarks = face_at((10.0, 5.0, 0.0), (0.0, 0.0, 40.0))
    reference = pose_blink_vector((10.0, 5.0, 0.0), eye_aspect_ratio(landmarks), (0.0, 0.0, 40.0))
    head = HeadPoseEstimator()
    assert np.allclose(posed_landmarks(landmarks, head, reference, reference), landmarks, atol=1e-6)
    shifted = reference.copy()
    shifted[5] += 1.0  # 1 cm to the right at ~40 cm, 256 px focal length: f / z ~ 6.4 px, more for the nearer nose
    moved = posed_landmarks(landmarks, head, reference, shifted)
    dx = moved[:, 0] - landmarks[:, 0]
    assert (dx > 0.85 * CROP_SIZE / 40.0).all() and (dx < 1.3 * CROP_SIZE / 40.0).all()
    assert np.abs(moved[:, 1] - landmarks[:, 1]).max() < 0.5


@pytest.mark.parametrize("angles, position", [((25.0, 0.0, 0.0), (0.0, 0.0, 40.0)), ((0.0, -15.0, 10.0), (1.5, 1.0, 32.0))])
def test_a_reference_moved_to_a_frames_pose_lands_on_that_frames_landmarks(angles, position):
    head = HeadPoseEstimator()
    reference, frame = face_at((0.0, 0.0, 0.0), (0.0, 0.0, 40.0)), face_at(angles, position)
    moved = posed_landmarks(reference, head, landmark_vector(reference, head), landmark_vector(frame, HeadPoseEstimator()))
    assert np.abs(moved[:468] - frame[:468]).max() < 0.5  # pixels


@pytest.mark.parametrize("ratio", [0.2, 0.5, 1.0, 1.2])
def test_eyelids_close_by_the_ratio_of_eye_aspect_ratios(sample_video, ratio):
    from talkcodec.face import FaceTracker
    from talkcodec.video import read_frames

    with FaceTracker() as tracker:
        seen = tracker.process(next(iter(read_frames(sample_video, fps=25, max_seconds=0.1))))
    assert seen.landmarks is not None and seen.landmarks.shape == (NUM_LANDMARKS, 3)
    reference = pose_blink_vector(seen.pose, seen.blink, seen.position)
    frame = reference.copy()
    frame[3:5] *= ratio
    moved = posed_landmarks(seen.landmarks, HeadPoseEstimator(), reference, frame)
    openings, wanted = eye_aspect_ratio(moved), ratio * eye_aspect_ratio(seen.landmarks)
    if ratio >= 0.5:
        assert np.allclose(openings, wanted, rtol=0.03)
    else:  # squeezed towards the corner line, the lid points keep their sideways offsets: shut as far as that goes
        assert (openings < 0.35 * eye_aspect_ratio(seen.landmarks)).all()
    for iris in IRISES:  # the irises stay inside their eyes
        assert np.allclose(moved[list(iris)].mean(axis=0), seen.landmarks[list(iris), :2].mean(axis=0), atol=3.0)
