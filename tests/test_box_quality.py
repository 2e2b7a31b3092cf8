"""Nothing lost: the default run's boxes against the detector on every frame (benchmarks/box_quality.py)."""

from __future__ import annotations

import numpy as np
import pytest

from emoengine.benchmarks.box_quality import DEMO, THRESHOLDS, box_quality, clip_quality
from emoengine.benchmarks.pipeline_capacity import child_env
from emoengine.benchmarks.standin_model import write_standin


def faces(*boxes):
    return np.array(boxes, np.float64), list(range(len(boxes)))


def test_box_quality_counts_misses_and_leaves_one_frame_flickers_out_of_the_verdict():
    face = [100, 100, 200, 200]
    reference = {f: faces(face) for f in range(10)}
    reference[4] = faces(face, [400, 400, 450, 450])          # a one-frame flicker of the per-frame detector
    test = {f: faces([102, 100, 202, 200]) for f in range(10)}
    q = box_quality(test, reference)
    assert (q["reference_faces"], q["reference_one_frame_faces"], q["iou_min"]) == (11, 1, 0.0)
    assert q["iou_min_persistent"] == pytest.approx(98 / 102, abs=1e-4) and q["passes"]
    del test[3]                                               # a frame where the default run lost the face
    q = box_quality(test, reference)
    assert (q["frames_without_face"], q["frames_without_face_list"], q["iou_min_persistent"]) == (1, [3], 0.0)
    assert not q["passes"]


@pytest.mark.slow
def test_demo_mp4_default_boxes_keep_up_with_per_frame_detection(tmp_path):
    if not DEMO.is_file():
        pytest.skip(f"no demo clip at {DEMO}")
    q = clip_quality(DEMO, write_standin(tmp_path / "standin.onnx"), child_env(tmp_path), tmp_path)
    assert q["reference_frames_with_face"] >= 390            # the face is in (nearly) every one of its 399 frames
    assert q["iou_median_persistent"] >= THRESHOLDS["iou_median"], q
    assert q["iou_min_persistent"] >= THRESHOLDS["iou_min"], q
    assert q["frames_without_face_fraction"] <= THRESHOLDS["frames_without_face_fraction"], q
    assert q["runs"]["default"]["detect_frames"] < q["runs"]["detect_every_1"]["detect_frames"] / 4
