"""MTCNN's nets in PyTorch (the torch backends' detector) give ONNX Runtime's faces; keyframes that wait are
detected in one call; the run picks the torch detector for torch backends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from emoengine.engine.run.demo import shipped_photo as load_rgb
from emoengine.engine.tracking.detectors.base import Faces
from emoengine.engine.tracking.detectors.batching import BatchedDetector
from emoengine.engine.tracking.detectors.mtcnn import MTCNNDetector
from emoengine.engine.tracking.tracker import iou_matrix

pytest.importorskip("torch")

DEMO = Path(__file__).resolve().parents[1] / ".." / "shared" / "media" / "demo.mp4"
# the two nets compute the same float32 ops in another order: agreement far inside what changes a face
MIN_IOU, MAX_LANDMARK_PX, MAX_SCORE_DIFF = 0.99, 1.0, 1e-4


@pytest.fixture(scope="module")
def pair():
    ort, torch = MTCNNDetector(threads=1, min_face_size=40), MTCNNDetector(device="cpu", min_face_size=40)
    yield ort, torch
    ort.close()
    torch.close()


def demo_frames(every: int = 40) -> list[np.ndarray]:
    import av

    with av.open(str(DEMO)) as c:
        return [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i % every == 0]


def assert_same_faces(a: Faces, b: Faces) -> None:
    assert len(a) == len(b)
    if not len(a):
        return
    iou = iou_matrix(a.boxes, b.boxes)
    match = iou.argmax(axis=1)
    assert sorted(match.tolist()) == list(range(len(a)))
    assert iou[np.arange(len(a)), match].min() >= MIN_IOU
    assert np.abs(a.landmarks - b.landmarks[match]).max() <= MAX_LANDMARK_PX
    assert np.abs(a.scores - b.scores[match]).max() <= MAX_SCORE_DIFF


def test_torch_nets_give_ort_faces_on_t1_six_faces(pair):
    ort, torch = pair
    (a,), (b,) = ort.detect([load_rgb("t1.jpg")]), torch.detect([load_rgb("t1.jpg")])
    assert len(a) == 6
    assert_same_faces(a, b)


def test_torch_nets_give_ort_faces_on_demo_frames(pair):
    if not DEMO.is_file():
        pytest.skip(f"no demo clip at {DEMO}")
    frames = demo_frames()
    ort, torch = pair
    found_a, found_b = ort.detect(frames), torch.detect(frames)
    assert sum(len(f) for f in found_a) >= len(frames) // 2   # the clip's face is found on most of them
    for a, b in zip(found_a, found_b, strict=True):
        assert_same_faces(a, b)


def test_torch_nets_get_uint8_on_their_device(monkeypatch):
    from emoengine.engine.tracking.detectors import mtcnn_torch

    seen = []
    forward = dict(mtcnn_torch._FORWARD)
    for name, fn in forward.items():
        monkeypatch.setitem(mtcnn_torch._FORWARD, name,
                            lambda L, w, x, fn=fn: seen.append((x.dtype, x.device.type)) or fn(L, w, x))
    det = MTCNNDetector(device="cpu", min_face_size=40)
    assert len(det.detect([load_rgb("Tom_Hanks_54745.png")])[0]) == 1
    import torch

    assert seen and set(seen) == {(torch.uint8, "cpu")}


class SlowDetector:
    """Records each call's frame count; the first call blocks until released, so others pile up."""

    name, min_face = "slow", 40.0

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()
        self.fail_on = fail_on

    def detect(self, frames):
        self.calls.append(len(frames))
        if len(self.calls) == 1:
            self.release.wait(5)
        if self.fail_on is not None and any(int(f[0, 0, 0]) == self.fail_on for f in frames):
            raise RuntimeError("detector broke")
        return [Faces(np.array([[f[0, 0, 0], 0, 10, 10]], np.float32), np.ones(1, np.float32),
                      np.zeros((1, 5, 2), np.float32)) for f in frames]

    def close(self) -> None:
        pass


def frame(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, np.uint8)


def run_callers(batched: BatchedDetector, values: list[int]) -> dict:
    out: dict = {}

    def call(v):
        try:
            out[v] = batched.detect([frame(v)])
        except RuntimeError as e:
            out[v] = e

    threads = [threading.Thread(target=call, args=(v,)) for v in values]
    threads[0].start()
    time.sleep(0.2)                       # the first call is running (blocked): the rest wait behind it
    for t in threads[1:]:
        t.start()
    time.sleep(0.2)
    batched.detector.release.set()
    for t in threads:
        t.join(5)
    return out


def test_waiting_keyframes_go_to_the_detector_in_one_call_each_gets_its_own():
    inner = SlowDetector()
    batched = BatchedDetector(inner, max_frames=32)
    out = run_callers(batched, [1, 2, 3, 4])
    assert inner.calls == [1, 3]          # the three that waited went together
    assert {v: float(f[0].boxes[0, 0]) for v, f in out.items()} == {1: 1, 2: 2, 3: 3, 4: 4}
    assert (batched.calls, batched.frames, batched.name, batched.min_face) == (2, 4, "slow", 40.0)


def test_batches_respect_max_frames():
    inner = SlowDetector()
    run_callers(BatchedDetector(inner, max_frames=2), [1, 2, 3, 4, 5])
    assert inner.calls == [1, 2, 2]


def test_an_error_reaches_every_caller_of_its_batch_only():
    inner = SlowDetector(fail_on=3)
    out = run_callers(BatchedDetector(inner), [1, 2, 3])
    assert isinstance(out[2], RuntimeError) and isinstance(out[3], RuntimeError)
    assert float(out[1][0].boxes[0, 0]) == 1


@pytest.mark.parametrize(("backend", "torch_device"), [("torch", "cpu"), ("ort", None)])
def test_run_detector_follows_the_backend(backend, torch_device, tmp_path):
    from emoengine.engine.run.driver import open_run_detector, torch_detector_device
    from emoengine.settings import RunSettings

    assert torch_detector_device(backend) == torch_device
    assert torch_detector_device("torch-cuda:fp16") == "cuda"
    cfg = RunSettings(backend=backend, weights="random").resolve("x.mp4", tmp_path)
    det = open_run_detector(cfg)
    try:
        assert isinstance(det, BatchedDetector) == (torch_device is not None)
        assert getattr(det, "device", None) == torch_device
    finally:
        det.close()
