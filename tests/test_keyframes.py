"""Detection on keyframes and optical flow between them: real MTCNN on real encoded clips made from the photos in
insightface's wheel (engine.run.demo), decoded back through engine.sources.opener, against per-frame detection."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from emoengine.engine.run.demo import group_in_view_frames, shipped_photo, single_face_frames, write_clip
from emoengine.engine.sources.opener import open_source
from emoengine.engine.tracking.detectors import DEFAULT_MIN_FACE, make_detector
from emoengine.engine.tracking.keyframes import KeyframeTracker
from emoengine.engine.tracking.tracker import IouTracker, iou_matrix

EVERY = 8


@pytest.fixture(scope="module")
def detector():
    det = make_detector("mtcnn", threads=1, min_face=DEFAULT_MIN_FACE)   # what run uses
    yield det
    det.close()


def decoded(path) -> list[np.ndarray]:
    with open_source(path) as source:
        return [f.rgb for f in source]


def background(size=(640, 360)) -> np.ndarray:
    w, h = size
    return np.clip(np.linspace(60, 170, w)[None, :, None] + np.linspace(0, 40, h)[:, None, None]
                   + np.array([10, 20, 30]), 0, 255).astype(np.uint8).repeat(h, 0)[:h]


def paste(frame: np.ndarray, face: np.ndarray, x: int, y: int, side: int) -> np.ndarray:
    out = frame.copy()
    out[y:y + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    return out


def per_frame(detector, frames) -> list:
    return [detector.detect([f])[0] for f in frames]


def test_a_moving_face_is_carried_between_keyframes_close_to_per_frame_boxes(detector, tmp_path):
    frames = decoded(write_clip(tmp_path / "moving.mp4", single_face_frames(40), fps=24))
    reference = per_frame(detector, frames)
    tracker = KeyframeTracker(detector, every=EVERY)
    tracked = tracker.track(frames)
    assert all(len(r) == 1 for r in reference), "the reference finds the face in every frame"
    assert [len(t.faces) for t in tracked] == [1] * len(frames), "and so does the tracker"
    ious = np.array([iou_matrix(r.boxes, t.faces.boxes)[0, 0] for r, t in zip(reference, tracked, strict=True)])
    assert np.median(ious) >= 0.9 and ious.min() >= 0.7, np.round(ious, 3)
    assert {int(t.ids[0]) for t in tracked} == {0}
    assert tracker.stats.detect_frames == 5 and tracker.stats.tracked_frames == 35   # frames 0, 8, 16, 24, 32
    keyframes = [t.keyframe for t in tracked]
    assert keyframes[0] and keyframes[8] and not any(keyframes[1:8])
    np.testing.assert_array_equal(tracked[8].faces.boxes, reference[8].boxes)   # a keyframe is the detector's


def test_a_hard_cut_to_another_face_is_detected_on_the_cut_frame(detector, tmp_path):
    """Tom Hanks for 12 frames, then a cut to a face of t1.jpg in the same place: the detector runs at once."""
    hanks = shipped_photo("Tom_Hanks_54745.png")
    group = shipped_photo("t1.jpg")
    other = group[260:420, 460:590]                           # the man in grey, with some margin
    bg = background()
    clip = [paste(bg, hanks, 200 + 2 * i, 90, 170) for i in range(12)]
    clip += [paste(np.full_like(bg, 200), other, 224 + 2 * i, 90, 170) for i in range(8)]
    frames = decoded(write_clip(tmp_path / "cut.mp4", clip, fps=24))
    tracked = KeyframeTracker(detector, every=100).track(frames)
    assert [t.keyframe for t in tracked].index(True, 1) == 12, "the first detection after frame 0 is the cut"
    reference = detector.detect([frames[12]])[0]
    assert len(reference) == 1
    np.testing.assert_array_equal(tracked[12].faces.boxes, reference.boxes)


def test_a_face_that_enters_mid_clip_is_found_at_most_n_frames_late(detector, tmp_path):
    hanks = shipped_photo("Tom_Hanks_54745.png")
    enters = 11                                               # not on the keyframe schedule (0, 8, 16, ...)
    bg = background()
    clip = [bg if i < enters else paste(bg, hanks, 150 + 3 * i, 80, 180) for i in range(28)]
    frames = decoded(write_clip(tmp_path / "enters.mp4", clip, fps=24))
    reference = per_frame(detector, frames)
    first_seen = next(i for i, r in enumerate(reference) if len(r))
    assert first_seen == enters
    tracked = KeyframeTracker(detector, every=EVERY).track(frames)
    found = next(i for i, t in enumerate(tracked) if len(t.faces))
    assert enters <= found <= enters + EVERY - 1, found
    assert all(len(t.faces) == 1 for t in tracked[found:])


def test_six_faces_panning_and_zooming_keep_six_ids(detector, tmp_path):
    frames = decoded(write_clip(tmp_path / "group.mp4", group_in_view_frames(32, (960, 540)), fps=24))
    tracked = KeyframeTracker(detector, every=EVERY).track(frames)
    seen = {int(i) for t in tracked for i in t.ids}
    assert seen == set(range(6)), seen
    for face_id in range(6):
        missing = [i for i, t in enumerate(tracked) if face_id not in t.ids.tolist()]
        longest = max((len(run) for run in np.split(missing, np.flatnonzero(np.diff(missing) > 1) + 1)), default=0)
        assert longest <= EVERY, (face_id, missing)


def test_detect_every_1_is_the_detector_on_every_frame_exactly(detector, tmp_path, cli):
    """`run --detect-every 1` writes the boxes of one detector call per frame (today's behaviour), to the digit."""
    clip = write_clip(tmp_path / "face.mp4", single_face_frames(10), fps=24)
    out = tmp_path / "out"
    r = cli("run", str(clip), "--weights", "random", "--backend", "torch", "--detect-every", "1", "--no-video",
            "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(out / "predictions.csv", newline="") as f:
        written = [[row[k] for k in ("frame", "x1", "y1", "x2", "y2", "det_score")] for row in csv.DictReader(f)]
    expected = []
    for i, frame in enumerate(decoded(clip)):
        for box, score in zip(detector.detect([frame])[0].boxes, detector.detect([frame])[0].scores, strict=True):
            expected.append([str(i), *(f"{v:.1f}" for v in box), f"{score:.4f}"])
    assert written == expected


def test_carry_moves_known_ids_and_ages_the_others():
    tracker = IouTracker(max_missed=2)
    tracker.update(np.array([[0, 0, 40, 40], [100, 0, 140, 40]], np.float32))
    for _ in range(2):
        assert tracker.carry(np.array([1]), np.array([[104, 2, 144, 42]])) == []
    assert tracker.carry(np.array([1]), np.array([[108, 4, 148, 44]])) == [0]   # id 0 missed a third frame
    assert tracker.active_ids == [1]
    assert tracker.update(np.array([[109, 4, 149, 44]], np.float32)).tolist() == [1]


BAD_OPTIONS = {
    "detect_every_0": (["--detect-every", "0"], "--detect-every"),
    "detect_every_negative": (["--detect-every", "-3"], "--detect-every"),
    "min_face_under_mtcnn_cell": (["--min-face", "11"], "below mtcnn's smallest face, 12 px"),
    "min_face_negative": (["--min-face", "-40"], "below mtcnn's smallest face"),
    "min_face_nan": (["--min-face", "nan"], "--min-face must be a number of pixels"),
    "min_face_inf": (["--min-face", "inf"], "--min-face must be a number of pixels"),
    "min_face_under_scrfd_anchor": (["--detector", "scrfd", "--min-face", "4"], "below scrfd's smallest face"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_detection_options_exit_2_with_one_line(case, tmp_path, capsys):
    """Refused before anything is opened or written: exit 2, one line on stderr, no traceback."""
    from emoengine.cli.main import main

    extra, expected = BAD_OPTIONS[case]
    image, out = tmp_path / "frame.png", tmp_path / "out"
    cv2.imwrite(str(image), background())
    with pytest.raises(SystemExit) as exc:
        main(["run", str(image), "--weights", "random", "--out", str(out), *extra])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exc.value.code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("emoengine: error: "), captured.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()
