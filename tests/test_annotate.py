"""Rendering: annotators never touch the caller's frame; feature-map frames; the timeline plot."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from emoengine.engine.outputs.annotate import (
    BoxAnnotator,
    CircumplexAnnotator,
    LabelAnnotator,
    LandmarkAnnotator,
    annotate_frame,
    face_color,
)
from emoengine.engine.outputs.featuremaps import MeanMapAccumulator, feature_map_frame, normalise
from emoengine.engine.outputs.timeline import plot_timeline
from emoengine.engine.run.records import FaceResult, FrameRecord

CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"]


def template68() -> np.ndarray:
    """A rough 68-point face in a unit box (jaw, brows, nose, eyes, lips): enough to draw and look at."""
    th = np.linspace(np.pi, 0, 17)
    jaw = np.c_[0.5 + 0.45 * np.cos(th), 0.35 + 0.6 * np.sin(th)]
    brow = np.c_[np.linspace(0.15, 0.42, 5), 0.28 - 0.04 * np.sin(np.linspace(0, np.pi, 5))]
    brow2 = np.c_[1 - brow[::-1, 0], brow[::-1, 1]]
    nose = np.c_[np.full(4, 0.5), np.linspace(0.35, 0.58, 4)]
    nostrils = np.c_[np.linspace(0.4, 0.6, 5), np.full(5, 0.63)]

    def ellipse(cx, cy, rx, ry, n):
        a = np.linspace(np.pi, -np.pi, n, endpoint=False)
        return np.c_[cx + rx * np.cos(a), cy - ry * np.sin(a)]

    return np.vstack([jaw, brow, brow2, nose, nostrils, ellipse(0.3, 0.38, 0.08, 0.03, 6),
                      ellipse(0.7, 0.38, 0.08, 0.03, 6), ellipse(0.5, 0.77, 0.16, 0.07, 12),
                      ellipse(0.5, 0.77, 0.1, 0.03, 8)])


def make_face(box, face_id=0, cls=1, valence=0.4, arousal=0.2) -> FaceResult:
    box = np.asarray(box, np.float32)
    probs = np.full(len(CLASSES), 0.02, np.float32)
    probs[cls] = 1 - probs.sum() + 0.02
    landmarks = box[:2] + template68() * (box[2:] - box[:2])
    return FaceResult(box=box, det_score=0.99, landmarks5=np.full((5, 2), np.nan, np.float32),
                      logits=np.log(probs), probs=probs, expression=CLASSES[cls], valence=valence,
                      arousal=arousal, landmarks68=landmarks.astype(np.float32), face_id=face_id)


def scene(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 80)], -1).astype(np.uint8)


@pytest.mark.parametrize("w, h", [(400, 250), (1280, 720), (64, 48)])
def test_annotate_frame_leaves_the_input_alone(w, h):
    rgb = scene(w, h)
    rgb.flags.writeable = False  # a decoder's buffer: any in-place drawing would raise
    faces = [make_face([w * 0.1, h * 0.2, w * 0.35, h * 0.7], 0),
             make_face([w * 0.5, h * 0.1, w * 0.7, h * 0.5], 1, cls=6, valence=-3.0, arousal=np.nan)]
    out = annotate_frame(FrameRecord(0, 0.0, rgb, faces), CLASSES)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and not np.shares_memory(out, rgb)
    assert np.array_equal(rgb, scene(w, h))
    assert (out != rgb).any(axis=2).mean() > 0.02


@pytest.mark.parametrize("annotator", [BoxAnnotator(), LabelAnnotator(CLASSES), LandmarkAnnotator(),
                                       CircumplexAnnotator()])
def test_each_annotator_returns_a_new_image(annotator):
    rgb = scene(400, 250)
    before = rgb.copy()
    out = annotator.annotate(rgb, [make_face([100, 50, 200, 180], 2)])
    assert out is not rgb and np.array_equal(rgb, before) and not np.array_equal(out, rgb)


def test_box_is_drawn_in_the_face_colour():
    rgb = np.zeros((250, 400, 3), np.uint8)
    out = BoxAnnotator().annotate(rgb, [make_face([100, 50, 200, 180], 3)])
    assert tuple(out[50, 150]) == face_color(3)  # middle of the top edge
    assert face_color(3) == face_color(3 + 10) and face_color(3) != face_color(4)
    assert face_color(-1) == (200, 200, 200)


def test_faces_without_landmarks_or_outside_the_frame():
    face = make_face([-50, -40, 120, 300], 0)
    face.landmarks68[:30] = np.nan
    out = annotate_frame(FrameRecord(0, 0.0, scene(400, 250), [face]), CLASSES)
    assert out.shape == (250, 400, 3)
    plain = annotate_frame(FrameRecord(0, 0.0, scene(400, 250), []), CLASSES)  # no faces: just the panel
    assert plain.shape == (250, 400, 3)


def colour_centroid(img: np.ndarray, color) -> np.ndarray:
    ys, xs = np.nonzero(np.all(img == np.array(color, np.uint8), axis=2))
    assert len(xs), "colour not drawn"
    return np.array([xs.mean(), ys.mean()])


def test_circumplex_places_and_clips_the_dot():
    rgb = np.zeros((720, 1280, 3), np.uint8)
    ann = CircumplexAnnotator()
    x0, y0, pw, ph = ann.panel_rect(1280, 720)
    color = face_color(0)

    def dot(v, a):
        return colour_centroid(ann.annotate(rgb, [make_face([10, 10, 90, 90], 0, valence=v, arousal=a)]), color)

    up_right, down_left, centre = dot(0.5, 0.5), dot(-0.5, -0.5), dot(0.0, 0.0)
    assert x0 <= centre[0] <= x0 + pw and y0 <= centre[1] <= y0 + ph
    assert up_right[0] > centre[0] > down_left[0] and up_right[1] < centre[1] < down_left[1]
    assert np.allclose(up_right - centre, centre - down_left, atol=1.0)
    far = dot(9.0, 0.0)  # clipped to the rim: as far right as valence 1
    assert far[0] == pytest.approx(dot(1.0, 0.0)[0], abs=1.0)


# --------------------------------------------------------------------------- feature maps


def test_feature_map_frame_scales_and_colours():
    fmap = np.linspace(-3, 5, 128 * 128, dtype=np.float32).reshape(128, 128)
    out = feature_map_frame(fmap, (256, 256))
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    lo = cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0, ::-1]
    hi = cv2.applyColorMap(np.full((1, 1), 255, np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0, ::-1]
    assert np.array_equal(out[0, 0], lo) and np.array_equal(out[-1, -1], hi)
    assert np.array_equal(out[0:2, 0:2], np.broadcast_to(out[0, 0], (2, 2, 3)))  # nearest: 2x2 blocks
    assert normalise(fmap).min() == 0 and normalise(fmap).max() == 255
    assert np.array_equal(normalise(fmap * 1000 + 7), normalise(fmap))  # per-frame min-max


def test_feature_map_constant_nan_and_missing():
    const = feature_map_frame(np.full((64, 64), 3.0, np.float32), (256, 256))
    assert const.shape == (256, 256, 3) and (const == const[0, 0]).all()
    nan = np.full((64, 64), np.nan, np.float32)
    assert feature_map_frame(nan, (32, 32)).shape == (32, 32, 3)
    black = feature_map_frame(None, (256, 128))
    assert black.shape == (128, 256, 3) and not black.any()


def test_mean_map_accumulator(tmp_path):
    acc = MeanMapAccumulator()
    assert acc.mean() is None
    a, b = np.full((4, 4), 1.0), np.arange(16, dtype=np.float32).reshape(4, 4)
    for m in (a, None, b):
        acc.add(m)
    assert acc.count == 2 and np.allclose(acc.mean(), (a + b) / 2)
    with pytest.raises(ValueError):
        acc.add(np.zeros((8, 8)))
    path = acc.save_png(tmp_path / "conv1_mean.png", (64, 64))
    img = cv2.imread(str(path))
    assert img.shape == (64, 64, 3) and sorted(p.name for p in tmp_path.iterdir()) == ["conv1_mean.png"]
    empty = cv2.imread(str(MeanMapAccumulator().save_png(tmp_path / "none.png", (16, 16))))
    assert empty.shape == (16, 16, 3) and not empty.any()


# --------------------------------------------------------------------------- timeline


def prediction_rows() -> list[dict]:
    rows = []
    for frame in range(60):
        for face_id in (0, 1):
            if face_id == 1 and 20 <= frame < 40:
                continue  # face 1 leaves for a while: a gap, not a line across it
            p = np.full(len(CLASSES), 0.05)
            p[(frame // 10 + face_id) % len(CLASSES)] = 0.65
            row = {"frame": frame, "time_s": f"{frame / 24:.6f}", "face_id": str(face_id),
                   "valence": np.sin(frame / 10), "arousal": -0.3}
            row.update({f"p_{c}": f"{v:.6f}" for c, v in zip(CLASSES, p, strict=True)})
            rows.append(row)
    return rows


def test_plot_timeline(tmp_path):
    path = plot_timeline(prediction_rows(), CLASSES, tmp_path / "timeline.png")
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 400 and img.shape[1] >= 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timeline.png"]


def test_plot_timeline_without_faces_and_single_frames(tmp_path):
    assert cv2.imread(str(plot_timeline([], CLASSES, tmp_path / "empty.png"))) is not None
    one = [r for r in prediction_rows() if r["frame"] == 0]
    assert cv2.imread(str(plot_timeline(one, CLASSES, tmp_path / "one.png"))) is not None


def test_plot_timeline_missing_columns(tmp_path):
    with pytest.raises(ValueError, match="p_happy"):
        plot_timeline([{"face_id": 0, "time_s": 0.0, "valence": 0, "arousal": 0, "p_neutral": 1}],
                      ["neutral", "happy"], tmp_path / "t.png")
    assert list(tmp_path.iterdir()) == []
