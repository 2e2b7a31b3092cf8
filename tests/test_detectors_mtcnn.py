"""MTCNN on real photos (the ones insightface's wheel ships) with real ONNX Runtime; plus the detector factory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from emoengine.engine.tracking.detectors import DETECTOR_NAMES, make_detector
from emoengine.engine.tracking.detectors.mtcnn import MTCNNDetector
from emoengine.engine.tracking.detectors.mtcnn_graphs import mtcnn_models
from emoengine.errors import UserInputError

IMAGES = Path(importlib.util.find_spec("insightface").submodule_search_locations[0]) / "data" / "images"

# Centres of the six faces in t1.jpg (1280 x 886), read off the photo with a pixel grid drawn on it
# (left to right: the woman with cards, the woman behind, the man in grey, the man in red, the standing man,
# the blonde woman).
T1_FACE_CENTRES = np.array([[112, 331], [322, 208], [520, 337], [790, 407], [961, 131], [1180, 335]], np.float32)


def load_rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(IMAGES / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def detector():
    det = MTCNNDetector(threads=2)
    yield det
    det.close()


@pytest.fixture(scope="module")
def t1():
    return load_rgb("t1.jpg")


def assert_one_box_per_centre(faces, centres):
    """Each box holds exactly one known face centre and each centre lies in exactly one box."""
    b = faces.boxes
    inside = ((centres[None, :, 0] >= b[:, None, 0]) & (centres[None, :, 0] <= b[:, None, 2])
              & (centres[None, :, 1] >= b[:, None, 1]) & (centres[None, :, 1] <= b[:, None, 3]))
    assert inside.sum(axis=1).tolist() == [1] * len(b), inside
    assert inside.sum(axis=0).tolist() == [1] * len(centres), inside


def test_t1_has_six_faces_each_box_on_a_face(detector, t1):
    (faces,) = detector.detect([t1])
    assert len(faces) == 6
    assert_one_box_per_centre(faces, T1_FACE_CENTRES)
    assert faces.boxes.dtype == np.float32 and faces.landmarks.shape == (6, 5, 2)
    assert (faces.scores > 0.9).all() and (np.diff(faces.scores) <= 0).all()
    sides = faces.boxes[:, 2:] - faces.boxes[:, :2]
    assert ((sides > 80) & (sides < 160)).all()


def test_t1_landmarks_sit_on_the_faces(detector, t1):
    (faces,) = detector.detect([t1])
    lm, b = faces.landmarks, faces.boxes
    assert ((lm >= b[:, None, :2]) & (lm <= b[:, None, 2:])).all()
    left_eye, right_eye, nose, mouth_left, mouth_right = (lm[:, i] for i in range(5))
    assert (left_eye[:, 0] < right_eye[:, 0]).all() and (mouth_left[:, 0] < mouth_right[:, 0]).all()
    eyes_y = (left_eye[:, 1] + right_eye[:, 1]) / 2
    mouth_y = (mouth_left[:, 1] + mouth_right[:, 1]) / 2
    assert (eyes_y < nose[:, 1]).all() and (nose[:, 1] < mouth_y).all()


# What the mtcnn wheel itself (its TensorFlow code, default settings) returns for t1.jpg, recorded once on a
# machine with tensorflow: six faces and, at 0.82, a knuckle - which our O-Net threshold of 0.9 leaves out.
WHEEL_T1_BOXES = np.array([
    [911.0, 62.3, 1012.3, 198.7], [742.5, 342.6, 841.2, 474.7], [54.2, 265.6, 164.0, 394.6],
    [1134.0, 272.4, 1227.3, 397.2], [269.3, 151.5, 365.3, 268.6], [465.9, 264.9, 568.8, 405.3],
    [1199.0, 534.6, 1212.7, 551.4],
], np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return w * h / (area(a)[:, None] + area(b)[None, :] - w * h)


def test_t1_agrees_with_the_wheels_own_output(t1):
    det = MTCNNDetector(thresholds=(0.6, 0.7, 0.8), threads=2)  # the wheel's thresholds
    (faces,) = det.detect([t1])
    det.close()
    assert len(faces) == 7
    overlap = iou(faces.boxes, WHEEL_T1_BOXES)
    assert sorted(overlap.argmax(axis=1).tolist()) == list(range(7))
    assert (overlap.max(axis=1) > 0.8).all(), overlap.max(axis=1)


def test_tom_hanks_one_face(detector):
    (faces,) = detector.detect([load_rgb("Tom_Hanks_54745.png")])
    assert len(faces) == 1
    cx, cy = (faces.boxes[0, :2] + faces.boxes[0, 2:]) / 2
    assert 40 < cx < 72 and 40 < cy < 72


def test_blank_frame_has_no_faces(detector):
    (faces,) = detector.detect([np.full((480, 640, 3), 127, np.uint8)])
    assert len(faces) == 0
    assert faces.boxes.shape == (0, 4) and faces.scores.shape == (0,) and faces.landmarks.shape == (0, 5, 2)


def test_frames_too_small_for_the_pyramid(detector):
    frames = [np.zeros((1, 1, 3), np.uint8), np.zeros((8, 30), np.uint8), np.zeros((2000, 11, 3), np.uint8)]
    assert [len(f) for f in detector.detect(frames)] == [0, 0, 0]


@pytest.mark.parametrize("kind", ["gray2d", "gray1", "rgba"])
def test_gray_and_rgba_frames(detector, t1, kind):
    gray = cv2.cvtColor(t1, cv2.COLOR_RGB2GRAY)
    frame = {"gray2d": gray, "gray1": gray[:, :, None],
             "rgba": np.dstack([t1, np.full(t1.shape[:2], 255, np.uint8)])}[kind]
    (faces,) = detector.detect([frame])
    assert len(faces) == 6
    assert_one_box_per_centre(faces, T1_FACE_CENTRES)


def test_very_large_frame_gives_boxes_in_its_own_pixels(detector, t1):
    big = cv2.resize(t1, (4000, round(886 * 4000 / 1280)), interpolation=cv2.INTER_LINEAR)
    (faces,) = detector.detect([big])
    assert len(faces) == 6
    assert_one_box_per_centre(faces, T1_FACE_CENTRES * 4000 / 1280)
    assert faces.boxes[:, 2].max() > 3000  # not left in the downscaled working image's pixels


def test_small_faces_in_a_small_frame(detector, t1):
    small = cv2.resize(t1, (256, 177), interpolation=cv2.INTER_AREA)  # faces of about 25 px
    (faces,) = detector.detect([small])
    assert len(faces) == 6
    assert_one_box_per_centre(faces, T1_FACE_CENTRES / 5)


def test_batch_of_frames_of_mixed_sizes(detector, t1):
    tom = load_rgb("Tom_Hanks_54745.png")
    blank = np.zeros_like(t1)
    results = detector.detect([t1, tom, blank, t1])
    assert [len(f) for f in results] == [6, 1, 0, 6]
    np.testing.assert_allclose(results[0].boxes, results[3].boxes, atol=1e-3)
    assert detector.detect([]) == []


def test_onnx_graphs_match_keras_semantics():
    """Our P/R/O-Net graphs against a torch re-statement of the wheel's Keras layers (NHWC, TF 'same' pooling,
    Permute((2,1,3)) before Flatten): proves the HWIO kernels, PReLU alphas and dense flatten order are read right."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort
    import torch.nn.functional as F

    from emoengine.engine.tracking.detectors.mtcnn_graphs import load_weights

    weights, models = load_weights(), mtcnn_models()

    def conv(x, k, b):
        return F.conv2d(x.permute(0, 3, 1, 2), torch.tensor(k).permute(3, 2, 0, 1), torch.tensor(b)).permute(0, 2, 3, 1)

    def prelu(x, a):
        return torch.where(x > 0, x, x * torch.tensor(a).reshape(-1))

    def pool(x, k, s, same):
        t = x.permute(0, 3, 1, 2)
        if same:
            pad = [max((-(-n // s) - 1) * s + k - n, 0) for n in t.shape[2:]]
            t = F.pad(t, (pad[1] // 2, pad[1] - pad[1] // 2, pad[0] // 2, pad[0] - pad[0] // 2), value=-np.inf)
        return F.max_pool2d(t, k, s).permute(0, 2, 3, 1)

    def dense(x, k, b):
        return x @ torch.tensor(k) + torch.tensor(b)

    def flat(x):
        return x.permute(0, 2, 1, 3).reshape(len(x), -1)

    def keras(name, img):
        w = weights[name]
        x = (torch.tensor(img, dtype=torch.float32) - 127.5) / 128
        x = pool(prelu(conv(x, w[0], w[1]), w[2]), *((2, 2, True) if name == "pnet" else (3, 2, True)))
        if name == "pnet":
            x = prelu(conv(prelu(conv(x, w[3], w[4]), w[5]), w[6], w[7]), w[8])
            return {"prob": torch.softmax(conv(x, w[11], w[12]), -1)[..., 1], "reg": conv(x, w[9], w[10])}
        x = pool(prelu(conv(x, w[3], w[4]), w[5]), 3, 2, False)
        if name == "rnet":
            x = prelu(dense(flat(prelu(conv(x, w[6], w[7]), w[8])), w[9], w[10]), w[11])
            return {"prob": torch.softmax(dense(x, w[14], w[15]), -1)[:, 1], "reg": dense(x, w[12], w[13])}
        x = pool(prelu(conv(x, w[6], w[7]), w[8]), 2, 2, True)
        x = prelu(dense(flat(prelu(conv(x, w[9], w[10]), w[11])), w[12], w[13]), w[14])
        return {"prob": torch.softmax(dense(x, w[19], w[20]), -1)[:, 1], "reg": dense(x, w[15], w[16]),
                "landmarks": dense(x, w[17], w[18])}

    rng = np.random.default_rng(0)
    for name, shape in [("pnet", (2, 37, 51, 3)), ("rnet", (5, 24, 24, 3)), ("onet", (5, 48, 48, 3))]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        session = ort.InferenceSession(models[name], providers=["CPUExecutionProvider"])
        ours = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": img}), strict=True))
        for key, ref in keras(name, img).items():
            np.testing.assert_allclose(ours[key], ref.numpy(), atol=2e-5, err_msg=f"{name}.{key}")


def test_factory_names_and_unknown_name():
    assert DETECTOR_NAMES == ("mtcnn", "scrfd", "none")
    with pytest.raises(UserInputError, match="mtcnn, scrfd, none"):
        make_detector("yolo")
    det = make_detector("mtcnn", min_face_size=40)
    assert det.name == "mtcnn" and det.min_face_size == 40
    det.close()


def test_none_detector_is_the_whole_frame():
    det = make_detector("none")
    (faces,) = det.detect([np.zeros((48, 64, 3), np.uint8)])
    assert det.name == "none"
    np.testing.assert_array_equal(faces.boxes, [[0, 0, 64, 48]])
    assert faces.scores.tolist() == [1.0] and np.isnan(faces.landmarks).all()
