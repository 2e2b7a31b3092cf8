"""SCRFD decoding against a synthetic ONNX model (real onnx, real ONNX Runtime) whose outputs we design.

No real SCRFD weights here (they live in insightface's model packs, downloaded at run time), so the model is a
graph that takes `input.1` like det_10g.onnx and emits nine constant tensors laid out as SCRFD's are.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from emoengine.engine.tracking.detectors import make_detector
from emoengine.engine.tracking.detectors.scrfd import SCRFDDetector, anchor_centres, find_scrfd_model, letterbox
from emoengine.errors import UserInputError

SIZE = 640
STRIDES = (8, 16, 32)


def anchor_index(stride: int, gx: int, gy: int, anchor: int) -> int:
    """Row of the (gx, gy) grid cell's anchor in a stride's outputs (row-major cells, 2 anchors each)."""
    return (gy * (SIZE // stride) + gx) * 2 + anchor


def designed_outputs() -> dict[str, np.ndarray]:
    """Outputs for a 640x640 input: a face at input (144,56)-(192,120) scored 0.9 at stride 8, a near duplicate
    of it at stride 16 (0.7), a second face at stride 32 (0.6) and a candidate below threshold (0.49)."""
    out = {}
    for s in STRIDES:
        n = (SIZE // s) ** 2 * 2
        out[f"score_{s}"] = np.zeros((n, 1), np.float32)
        out[f"bbox_{s}"] = np.zeros((n, 4), np.float32)
        out[f"kps_{s}"] = np.zeros((n, 10), np.float32)
    i = anchor_index(8, 20, 10, 1)  # centre (160, 80)
    out["score_8"][i] = 0.9
    out["bbox_8"][i] = [2, 3, 4, 5]  # distances in strides: left, top, right, bottom
    out["kps_8"][i] = [-1, -1, 1, -1, 0, 0, -1, 1, 1, 1]
    j = anchor_index(16, 10, 5, 0)  # same centre
    out["score_16"][j] = 0.7
    out["bbox_16"][j] = [1, 1.5, 2.1, 2.5]
    k = anchor_index(32, 15, 5, 1)  # centre (480, 160)
    out["score_32"][k] = 0.6
    out["bbox_32"][k] = [1, 1, 1, 1]
    out["kps_32"][k] = [0.5] * 10
    out["score_16"][anchor_index(16, 30, 15, 0)] = 0.49
    out["bbox_16"][anchor_index(16, 30, 15, 0)] = [1, 1, 1, 1]
    return out


def synthetic_scrfd_model(path, batched: bool = False) -> str:
    """A graph shaped like det_10g.onnx: input.1 -> 3 scores, 3 boxes, 3 keypoints (insightface's order)."""
    outs = designed_outputs()
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    nodes, outputs = [], []
    for name in names:
        value = outs[name][None] if batched else outs[name]
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_v")))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    batch = "N" if batched else 1
    graph = helper.make_graph(
        nodes, "synthetic_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched_outputs", "batched_outputs"])
def test_scrfd_decoding_on_synthetic_graph_undoes_letterbox(tmp_path, batched):
    det = SCRFDDetector(synthetic_scrfd_model(tmp_path / "det.onnx", batched), threads=1)
    frame = np.full((160, 320, 3), 40, np.uint8)  # 2:1 -> letterboxed to 640x320, scale 2, padded at the bottom
    (faces,) = det.detect([frame])
    assert len(faces) == 2  # the duplicate is merged by NMS, the 0.49 candidate dropped
    np.testing.assert_allclose(faces.scores, [0.9, 0.6], rtol=1e-6)
    # input (144, 56, 192, 120) and (448, 128, 512, 192), halved
    np.testing.assert_allclose(faces.boxes, [[72, 28, 96, 60], [224, 64, 256, 96]], atol=1e-4)
    kps_input = np.array([160, 80]) + np.array([[-1, -1], [1, -1], [0, 0], [-1, 1], [1, 1]]) * 8
    np.testing.assert_allclose(faces.landmarks[0], kps_input / 2, atol=1e-4)
    np.testing.assert_allclose(faces.landmarks[1], np.full((5, 2), [480 + 16, 160 + 16]) / 2, atol=1e-4)
    det.close()


def test_scrfd_decoding_on_synthetic_graph_over_a_batch_of_frames(tmp_path):
    det = SCRFDDetector(synthetic_scrfd_model(tmp_path / "det.onnx"), score_threshold=0.65)
    tall = np.zeros((640, 320, 3), np.uint8)  # 1:2 -> 320x640 canvas, scale 1, padded on the right
    results = det.detect([np.zeros((160, 320, 3), np.uint8), tall])
    assert [len(f) for f in results] == [1, 1]  # the 0.6 face is under this threshold
    np.testing.assert_allclose(results[0].boxes, [[72, 28, 96, 60]], atol=1e-4)
    np.testing.assert_allclose(results[1].boxes, [[144, 56, 192, 120]], atol=1e-4)


def test_letterbox_and_anchor_grid():
    canvas, factor = letterbox(np.full((100, 400, 3), 200, np.uint8), (640, 640))
    assert canvas.shape == (640, 640, 3)
    np.testing.assert_allclose(factor, [1.6, 1.6])
    assert (canvas[:160] == 200).all() and (canvas[160:] == 0).all()
    centres = anchor_centres(2, 3, 16, 2)
    np.testing.assert_array_equal(centres[:4], [[0, 0], [0, 0], [16, 0], [16, 0]])
    np.testing.assert_array_equal(centres[6:8], [[0, 16], [0, 16]])


def test_missing_scrfd_model_gives_one_line_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    with pytest.raises(UserInputError) as err:
        make_detector("scrfd")
    message = str(err.value)
    assert "\n" not in message
    assert "buffalo_l/det_10g.onnx" in message and "FaceAnalysis()" in message and "detector_model" in message
    assert err.value.options == ("detector_model",)   # the CLI shows it as --detector-model
    with pytest.raises(UserInputError, match="no such detector model"):
        make_detector("scrfd", model_path=str(tmp_path / "nope.onnx"))


def test_scrfd_model_found_in_insightface_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    (tmp_path / "models" / "buffalo_sc").mkdir(parents=True)
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    synthetic_scrfd_model(tmp_path / "models" / "buffalo_sc" / "det_500m.onnx")
    assert find_scrfd_model().name == "det_500m.onnx"
    best = synthetic_scrfd_model(tmp_path / "models" / "buffalo_l" / "det_10g.onnx")
    assert str(find_scrfd_model()) == best
    det = make_detector("scrfd", providers=["CPUExecutionProvider"])
    assert det.name == "scrfd" and len(det.detect([np.zeros((320, 640, 3), np.uint8)])[0]) == 2
