"""Face crops: exact pixels on a synthetic frame, black padding at the border, upstream's plain crop, mapping back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from emoengine.engine.model.crops import DEFAULT_MARGIN, crop_faces, regions_to_frame


@pytest.fixture(scope="module")
def frame():
    return np.random.default_rng(7).integers(0, 256, (600, 800, 3), dtype=np.uint8)


def test_square_region_of_exactly_256_px_is_a_plain_copy(frame):
    side = 256 / (1 + DEFAULT_MARGIN)  # a box whose margin-grown square is exactly 256 px: no resampling
    box = np.array([[300, 200, 300 + side, 200 + side * 0.8]])  # not square: the long side decides
    crops, regions = crop_faces(frame, box)
    cx, cy = 300 + side / 2, 200 + side * 0.4
    x1, y1 = round(cx - 128), round(cy - 128)
    np.testing.assert_array_equal(regions, [[x1, y1, x1 + 256, y1 + 256]])
    np.testing.assert_array_equal(crops[0], frame[y1:y1 + 256, x1:x1 + 256])


def test_square_crop_is_cv2_resize_of_the_region(frame):
    crops, regions = crop_faces(frame, np.array([[100.4, 150.2, 180.9, 260.0], [500, 100, 700, 300]]))
    assert crops.shape == (2, 256, 256, 3) and crops.dtype == np.uint8
    for crop, (x1, y1, x2, y2) in zip(crops, regions.astype(int), strict=True):
        assert x2 - x1 == y2 - y1
        expected = cv2.resize(frame[y1:y2, x1:x2], (256, 256), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(crop, expected)
    assert regions[1].tolist() == [480, 80, 720, 320]  # 200 px box, 240 px square around (600, 200)


def test_square_crop_pads_black_outside_the_frame(frame):
    crops, regions = crop_faces(frame, np.array([[-40, -40, 60, 60]]), margin=0.0)
    np.testing.assert_array_equal(regions, [[-40, -40, 60, 60]])
    padded = np.zeros((100, 100, 3), np.uint8)
    padded[40:, 40:] = frame[:60, :60]
    np.testing.assert_array_equal(crops[0], cv2.resize(padded, (256, 256), interpolation=cv2.INTER_LINEAR))
    assert (crops[0, :100, :] == 0).all() and (crops[0, :, :100] == 0).all()  # 40 of 100 px -> 102 of 256
    assert crops[0, 110:, 110:].any()


def test_box_entirely_outside_gives_a_black_crop(frame):
    crops, _ = crop_faces(frame, np.array([[900, 700, 950, 750]]))
    assert crops.shape == (1, 256, 256, 3) and not crops.any()


def test_upstream_mode_is_slice_and_stretch(frame):
    boxes = np.array([[10.7, 20.2, 300.9, 250.5], [-30.0, 500.0, 90.0, 640.0]])
    crops, regions = crop_faces(frame, boxes, mode="upstream")
    np.testing.assert_array_equal(regions, [[10, 20, 300, 250], [0, 500, 90, 600]])  # clipped to the frame
    np.testing.assert_array_equal(crops[0], cv2.resize(frame[20:250, 10:300], (256, 256)))
    np.testing.assert_array_equal(crops[1], cv2.resize(frame[500:600, 0:90], (256, 256)))


def test_regions_to_frame_both_modes(frame):
    boxes = np.array([[100, 100, 300, 200]], np.float32)
    corners = np.array([[[0, 0], [256, 256], [128, 128]]], np.float32)
    _, square = crop_faces(frame, boxes)
    np.testing.assert_allclose(regions_to_frame(corners, square)[0], [[80, 30], [320, 270], [200, 150]])
    _, plain = crop_faces(frame, boxes, mode="upstream")
    np.testing.assert_allclose(regions_to_frame(corners, plain)[0], [[100, 100], [300, 200], [200, 150]])


def test_a_bright_dot_maps_back_to_where_it_is(frame):
    """End to end: find a marked pixel in the crop, map it back, land on the mark."""
    img = np.zeros((400, 400, 3), np.uint8)
    img[150:154, 230:234] = 255  # a 4x4 mark whose centre is (232, 152)
    crops, regions = crop_faces(img, np.array([[180, 100, 280, 200]]))
    ys, xs = np.nonzero(crops[0, :, :, 0] > 200)
    centre_in_crop = np.array([[[xs.mean() + 0.5, ys.mean() + 0.5]]])  # pixel centres
    np.testing.assert_allclose(regions_to_frame(centre_in_crop, regions)[0, 0], [232, 152], atol=0.5)


def test_no_boxes_and_bad_mode(frame):
    crops, regions = crop_faces(frame, np.zeros((0, 4)))
    assert crops.shape == (0, 256, 256, 3) and regions.shape == (0, 4)
    with pytest.raises(ValueError):
        crop_faces(frame, np.zeros((0, 4)), mode="tight")
