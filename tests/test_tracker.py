"""Face ids stay with a moving face; new faces get new ids; smoothing is the stated exponential mix."""

from __future__ import annotations

import numpy as np
import pytest

from emoengine.engine.tracking.tracker import IouTracker, TemporalSmoother, iou_matrix


def box(x: float, y: float, size: float = 40.0) -> list[float]:
    return [x, y, x + size, y + size]


def test_iou_matrix_values():
    a = np.array([box(0, 0, 10), [0, 0, 0, 0]], np.float32)
    b = np.array([box(0, 0, 10), box(5, 0, 10), box(100, 100, 10)])
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    assert iou[0] == pytest.approx([1.0, 50 / 150, 0.0])
    assert np.all(iou[1] == 0) and np.isfinite(iou).all()  # empty box: 0, never NaN
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_moving_face_keeps_its_id():
    tracker = IouTracker()
    ids = [tracker.update(np.array([box(10 + 4 * t, 20 + 2 * t)]))[0] for t in range(50)]
    assert ids == [0] * 50


def test_new_face_gets_new_id_and_order_does_not_matter():
    tracker = IouTracker()
    assert tracker.update(np.array([box(0, 0)])).tolist() == [0]
    assert tracker.update(np.array([box(200, 0), box(3, 1)])).tolist() == [1, 0]
    assert tracker.update(np.array([box(6, 2), box(203, 1)])).tolist() == [0, 1]
    assert tracker.update(np.zeros((0, 4))).tolist() == []
    assert tracker.active_ids == [0, 1]


def test_greedy_prefers_the_best_overlap():
    """Detection order must not matter: box(2,0) fits track 0 best (IoU .90), so box(18,0) takes track 1 (.29)
    although its own best would be track 0 (.38)."""
    tracker = IouTracker(iou_threshold=0.1)
    tracker.update(np.array([box(0, 0), box(40, 0)]))
    assert tracker.update(np.array([box(18, 0), box(2, 0)])).tolist() == [1, 0]


def test_missed_frames_then_drop():
    tracker = IouTracker(max_missed=3)
    tracker.update(np.array([box(0, 0)]))
    for _ in range(3):                                            # gone for max_missed frames: kept
        tracker.update(np.zeros((0, 4)))
        assert tracker.dropped == []
    assert tracker.update(np.array([box(2, 0)])).tolist() == [0]
    for _ in range(3):
        tracker.update(np.zeros((0, 4)))
    tracker.update(np.zeros((0, 4)))                              # the 4th miss drops it
    assert tracker.dropped == tracker.dropped_ids() == [0] and tracker.active_ids == []
    assert tracker.update(np.array([box(2, 0)])).tolist() == [1]  # ids are never reused


def test_far_jump_is_a_new_face():
    tracker = IouTracker(iou_threshold=0.3)
    tracker.update(np.array([box(0, 0)]))
    assert tracker.update(np.array([box(35, 0)])).tolist() == [1]  # IoU 5/75 < 0.3


def test_smoother_math_is_exact():
    sm = TemporalSmoother(alpha=0.75)
    p1, p2, p3 = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.8, 0.1]), np.array([0.2, 0.2, 0.6])
    out, v, a = sm.update(0, p1, 0.5, -0.5)
    assert np.array_equal(out, p1) and (v, a) == (0.5, -0.5)       # first sight passes through
    out, v, a = sm.update(0, p2, -0.3, 0.1)
    assert np.array_equal(out, 0.75 * p1 + 0.25 * p2)
    assert v == 0.75 * 0.5 + 0.25 * -0.3 and a == 0.75 * -0.5 + 0.25 * 0.1
    expected = 0.75 * (0.75 * p1 + 0.25 * p2) + 0.25 * p3
    out, _, _ = sm.update(0, p3, 0.0, 0.0)
    assert np.array_equal(out, expected) and out.sum() == pytest.approx(1.0)
    out, _, _ = sm.update(1, p3, 0.2, 0.2)                          # another id: its own history
    assert np.array_equal(out, p3)


def test_smoother_off_and_forget():
    off = TemporalSmoother(alpha=0.0)
    off.update(0, np.array([1.0, 0.0]), 1.0, 1.0)
    out, v, a = off.update(0, np.array([0.0, 1.0]), -1.0, 0.5)
    assert out.tolist() == [0.0, 1.0] and (v, a) == (-1.0, 0.5) and len(off) == 0

    sm = TemporalSmoother(alpha=0.5)
    sm.update(3, np.array([1.0, 0.0], np.float32), 1.0, 1.0)
    sm.forget([3, 99])
    out, v, a = sm.update(3, np.array([0.0, 1.0], np.float32), 0.0, 0.0)
    assert out.tolist() == [0.0, 1.0] and out.dtype == np.float32 and (v, a) == (0.0, 0.0)


def test_smoother_rejects_bad_alpha():
    for alpha in (-0.1, 1.0):
        with pytest.raises(ValueError):
            TemporalSmoother(alpha)


def test_tracker_and_smoother_together():
    tracker, sm = IouTracker(max_missed=0), TemporalSmoother(alpha=0.5)
    ids = tracker.update(np.array([box(0, 0)]))
    sm.update(int(ids[0]), np.array([1.0, 0.0]), 0.0, 0.0)
    tracker.update(np.zeros((0, 4)))
    sm.forget(tracker.dropped)
    assert len(sm) == 0


def test_fast_moving_face_under_the_iou_threshold_keeps_its_id_by_centre_distance():
    """demo.mp4 has a 34 px jump of a ~100 px face (IoU 0.29): same face, same id; a far face is new."""
    from emoengine.engine.tracking.tracker import IouTracker, iou_matrix

    t = IouTracker()
    a = np.array([[100, 100, 200, 200]], np.float32)
    b = a + np.array([40, 25, 40, 25], np.float32)
    assert iou_matrix(a, b)[0, 0] < 0.3
    assert t.update(a).tolist() == [0]
    assert t.update(b).tolist() == [0]
    far = b + np.array([300, 0, 300, 0], np.float32)
    assert t.update(far).tolist() == [1]
