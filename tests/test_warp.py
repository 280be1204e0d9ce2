import cv2
import numpy as np
import pytest

from talkcodec.warp import PiecewiseAffineWarp, border_points, fill_mouth, polygon_area


@pytest.fixture(scope="module")
def warp():
    return PiecewiseAffineWarp(64, subsample=1)


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(0)
    return rng.uniform(16, 48, (40, 2))


def test_identity_warp_changes_nothing(warp, points):
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(warp(image, points, points), image)


def test_subsampled_maps_match_full_resolution(warp, points):
    image = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 2)
    dst = points + np.random.default_rng(3).normal(0, 2, points.shape)
    exact, fast = warp(image, points, dst), PiecewiseAffineWarp(64, subsample=2)(image, points, dst)
    assert np.abs(exact.astype(int) - fast)[2:-2, 2:-2].mean() < 1.0


def test_moving_the_points_moves_the_content(warp, points):
    image = np.zeros((64, 64, 3), np.uint8)
    image[30:34, 30:34] = 255
    out = warp(image, points, points + np.array([5.0, 0.0]))
    ys, xs = np.nonzero(out[..., 0] > 128)
    assert abs(xs.mean() - 36.5) < 1.0 and abs(ys.mean() - 31.5) < 1.0
    assert out[0, 0, 0] == 0 and np.array_equal(out[:, 0], image[:, 0])  # the border stays put


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1e12])
def test_broken_points_do_not_crash(warp, points, bad):
    dst = points.copy()
    dst[3] = bad
    assert warp(np.zeros((64, 64, 3), np.uint8), points, dst).shape == (64, 64, 3)


def test_border_points_cover_the_corners():
    pts = border_points(64, 4)
    assert len(pts) == 16 and {(0.0, 0.0), (63.0, 0.0), (63.0, 63.0), (0.0, 63.0)} <= set(map(tuple, pts))


def test_mouth_fill_only_where_wider_than_the_reference():
    square = np.array([[20, 20], [40, 20], [40, 40], [20, 40]], dtype=float)
    assert polygon_area(square) == 400
    image = np.full((64, 64, 3), 200, np.uint8)
    fill_mouth(image, square, reference_area=400)
    assert image.min() == 200  # not wider: untouched
    fill_mouth(image, square, reference_area=20)
    assert image[30, 30, 0] < 120 and image[5, 5, 0] == 200
