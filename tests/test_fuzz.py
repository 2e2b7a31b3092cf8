"""Property tests (hypothesis) over what the engine feeds its pure functions: frames of any shape and dtype,
boxes anywhere (inverted, empty, huge, off-frame, NaN), feature maps with any values, heatmaps, box tracks.

Never an exception on input the pipeline can produce; always crops of the right shape and dtype, regions
that map back, ids that stay unique. Example counts are kept small so the module runs in seconds.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from emoengine.engine.model.crops import CROP_SIZE, crop_faces, regions_to_frame
from emoengine.engine.model.emonet_model import heatmap_landmarks, softmax
from emoengine.engine.outputs.featuremaps import feature_map_frame, normalise
from emoengine.engine.outputs.writers import fit_frame
from emoengine.engine.tracking.detectors.nms import ensure_rgb
from emoengine.engine.tracking.tracker import IouTracker, TemporalSmoother, iou_matrix

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sides = st.integers(1, 48)
coord = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
any_coord = st.one_of(coord, st.just(float("nan")), st.just(float("inf")), st.just(float("-inf")))


def frames(dtype=np.uint8, channels=(3,)):
    return st.tuples(sides, sides, st.sampled_from(channels)).flatmap(
        lambda s: hnp.arrays(dtype, (s[0], s[1], s[2]) if s[2] else (s[0], s[1]),
                             elements=hnp.from_dtype(np.dtype(dtype)) if dtype != np.float32 else
                             st.floats(-1e4, 1e4, width=32)))


def boxes(max_boxes: int = 4, element=coord):
    return hnp.arrays(np.float32, st.tuples(st.integers(0, max_boxes), st.just(4)), elements=element)


@FAST
@given(frame=frames(), bxs=boxes(element=any_coord), mode=st.sampled_from(["square", "upstream"]),
       margin=st.floats(0, 1))
def test_crop_faces_always_gives_uint8_crops_of_the_right_shape(frame, bxs, mode, margin):
    crops, regions = crop_faces(frame, bxs, margin=margin, mode=mode)
    assert crops.shape == (len(bxs), CROP_SIZE, CROP_SIZE, 3) and crops.dtype == np.uint8
    assert regions.shape == (len(bxs), 4) and np.isfinite(regions).all()
    assert (regions[:, 2:] > regions[:, :2]).all()           # at least a pixel each way
    back = regions_to_frame(np.zeros((len(bxs), 1, 2), np.float32), regions)
    np.testing.assert_array_equal(back[:, 0], regions[:, :2])
    if mode == "upstream":                                   # upstream never leaves the frame
        h, w = frame.shape[:2]
        assert (regions[:, :2] >= 0).all() and (regions[:, 2] <= max(w, 1)).all() and (regions[:, 3] <= h).all()


@FAST
@given(frame=frames(), x=st.integers(-40, 80), y=st.integers(-40, 80), side=st.integers(1, 60))
def test_square_crop_of_a_box_inside_or_outside_keeps_the_frame_pixels_it_covers(frame, x, y, side):
    """A uniform frame: wherever the region overlaps the frame the crop shows that colour, elsewhere black."""
    flat = np.empty_like(frame)
    flat[:] = (200, 100, 50)
    crops, regions = crop_faces(flat, np.array([[x, y, x + side, y + side]], np.float32), margin=0.0)
    x1, y1, x2, y2 = regions[0]
    h, w = flat.shape[:2]
    overlap = max(0, min(x2, w) - max(x1, 0)) * max(0, min(y2, h) - max(y1, 0))
    if overlap == 0:
        assert not crops.any()
    elif overlap == (x2 - x1) * (y2 - y1):
        assert (crops[0] == (200, 100, 50)).all()


@settings(max_examples=5, deadline=None)
@given(scale=st.floats(50, 1e4))
def test_enormous_regions_do_not_allocate_their_padded_patch(scale):
    frame = np.full((40, 60, 3), 255, np.uint8)
    side = 60 * scale
    crops, regions = crop_faces(frame, np.array([[30 - side / 2, 20 - side / 2, 30 + side / 2, 20 + side / 2]]))
    assert crops.shape == (1, CROP_SIZE, CROP_SIZE, 3)
    assert crops[0, 0, 0].max() == 0 and crops[0, 128, 128].max() <= 255  # the frame, tiny, in a black field


def test_warped_crop_matches_the_padded_resize():
    """The path for enormous regions samples like the ordinary one (compared on a region 2x the frame)."""
    from emoengine.engine.model.crops import _warped_crop

    frame = np.random.default_rng(3).integers(0, 256, (90, 120, 3), np.uint8)
    padded, regions = crop_faces(frame, np.array([[-60, -50, 150, 130]], np.float32))
    warped = _warped_crop(frame, regions[0], CROP_SIZE)
    assert np.abs(padded[0].astype(int) - warped.astype(int)).max() <= 2


@FAST
@given(data=st.data(), dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
       channels=st.sampled_from([0, 1, 3, 4]))
def test_ensure_rgb_gives_contiguous_uint8_rgb_for_every_dtype_and_layout(data, dtype, channels):
    h, w = data.draw(sides), data.draw(sides)
    shape = (h, w) if channels == 0 else (h, w, channels)
    elements = (st.floats(-1e4, 1e4, allow_nan=False, width=32 if dtype == np.float32 else 64)
                if np.issubdtype(dtype, np.floating) else None)
    img = data.draw(hnp.arrays(dtype, shape, elements=elements))
    rgb = ensure_rgb(img)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous


@FAST
@given(fmap=hnp.arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(1, 20)),
                       elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       size=st.tuples(st.integers(1, 64), st.integers(1, 64)))
def test_feature_map_frames_are_valid_for_any_map_values(fmap, size):
    gray = normalise(fmap)
    assert gray.shape == fmap.shape and gray.dtype == np.uint8
    finite = np.isfinite(fmap)
    if finite.all() and np.ptp(fmap.astype(np.float64)) > 0:
        assert gray.min() == 0 and gray.max() == 255
    frame = feature_map_frame(fmap, size)
    assert frame.shape == (size[1], size[0], 3) and frame.dtype == np.uint8
    assert not feature_map_frame(None, size).any()


@FAST
@given(img=frames(), size=st.tuples(st.integers(1, 64), st.integers(1, 64)))
def test_fit_frame_letterboxes_any_frame_into_any_size(img, size):
    out = fit_frame(img, size)
    assert out.shape == (size[1], size[0], 3) and out.dtype == np.uint8


@FAST
@given(hm=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 16)).flatmap(
    lambda s: hnp.arrays(np.float32, (s[0], s[1], s[2], s[2]), elements=st.floats(-1e3, 1e3, width=32))))
def test_heatmap_landmarks_always_land_inside_the_crop(hm):
    """Square heatmaps of any size (EmoNet's are 64 x 64) and any values, ties and flat maps included."""
    pts = heatmap_landmarks(hm)
    assert pts.shape == (hm.shape[0], hm.shape[1], 2) and np.isfinite(pts).all()
    assert (pts >= 0).all() and (pts <= CROP_SIZE).all()


@FAST
@given(logits=hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 8)),
                         elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_softmax_is_a_distribution_for_any_finite_logits(logits):
    p = softmax(logits)
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


track_frames = st.lists(boxes(max_boxes=6, element=st.floats(-100, 400, width=32)), min_size=1, max_size=25)


@FAST
@given(sequence=track_frames, iou=st.floats(0.05, 0.95), missed=st.integers(0, 5))
def test_tracker_ids_are_unique_per_frame_and_never_reused_after_a_drop(sequence, iou, missed):
    tracker = IouTracker(iou_threshold=iou, max_missed=missed)
    dropped: set[int] = set()
    for bxs in sequence:
        ids = tracker.update(bxs)
        assert ids.shape == (len(bxs),) and ids.dtype == np.int64 and (ids >= 0).all()
        assert len(set(ids.tolist())) == len(ids)
        assert not (set(ids.tolist()) & dropped)
        dropped |= set(tracker.dropped_ids())
        assert set(tracker.active_ids).isdisjoint(dropped)


@FAST
@given(sequence=st.lists(boxes(max_boxes=4, element=any_coord), min_size=1, max_size=10))
def test_tracker_survives_nan_and_infinite_boxes(sequence):
    tracker = IouTracker()
    for bxs in sequence:
        ids = tracker.update(bxs)
        assert len(set(ids.tolist())) == len(ids) == len(bxs)
    m = iou_matrix(sequence[0], sequence[-1])
    assert m.shape == (len(sequence[0]), len(sequence[-1]))


@FAST
@given(alpha=st.floats(0, 0.99), steps=st.lists(
    st.tuples(st.integers(0, 3), hnp.arrays(np.float64, 8, elements=st.floats(0, 1)).filter(lambda a: a.sum() > 0)),
    min_size=1, max_size=20))
def test_smoother_keeps_probabilities_a_distribution(alpha, steps):
    smoother = TemporalSmoother(alpha)
    for face_id, raw in steps:
        probs, v, a = smoother.update(face_id, raw / raw.sum(), 0.5, -0.5)
        np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-9)
        assert (v, a) == (0.5, -0.5) or abs(v - 0.5) < 1e-9
