"""Pipeline control: batching deadlines, live-input Ctrl-C, bad artifacts and output folders.

The fakes here (a counting model, generated frames) stand in only where the property under test is the
pipeline's own scheduling; the CLI checks use real files and the real entry point."""

from __future__ import annotations

import _thread
import json
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from emoengine.engine.model.emonet_model import EmoNetBatch
from emoengine.engine.run.demo import shipped_photo
from emoengine.engine.run.pipeline import Pipeline, PipelineOptions
from emoengine.engine.sources.opener import Frame
from emoengine.engine.tracking.detectors.base import Faces


class OneFaceEveryNDetectorFake:
    name = "fake"

    def __init__(self, every: int) -> None:
        self.every, self.calls = every, 0

    def detect(self, frames):
        out = []
        for _ in frames:
            face = self.calls % self.every == 0
            self.calls += 1
            out.append(Faces(np.array([[0, 0, 32, 32]], np.float32), np.ones(1, np.float32),
                             np.zeros((1, 5, 2), np.float32)) if face else Faces.empty())
        return out

    def close(self):
        pass


class CountingModelFake:
    """Records every batch; returns zeros shaped like EmoNet's outputs."""

    class_names = tuple("abcdefgh")
    backend = "fake"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s

    def predict(self, crops):
        self.batches.append(len(crops))
        time.sleep(self.delay_s)
        n = len(crops)
        z = np.zeros((n, 8), np.float32)
        return EmoNetBatch(z, z + 1 / 8, np.zeros(n, np.float32), np.zeros(n, np.float32),
                           np.zeros((n, 68, 2), np.float32))


def frames(n: int | None, size=(48, 48), delay_s: float = 0.0):
    i = 0
    while n is None or i < n:
        if delay_s:
            time.sleep(delay_s)
        yield Frame(i, i / 25, np.full((*size, 3), 100, np.uint8))
        i += 1


def test_batcher_never_holds_more_than_queue_size_frames_and_keeps_order():
    """One face then thousands of empty frames arriving fast: pending frames stay bounded, order kept."""
    seen: list[int] = []
    model = CountingModelFake()
    pending_peak = []
    opts = PipelineOptions(max_batch=32, max_wait_ms=1000.0, queue_size=8)
    pipe = Pipeline(frames(3000), OneFaceEveryNDetectorFake(every=1000), model,
                    lambda record: seen.append(record.index), opts)
    original_flush = pipe._flush
    pipe._flush = lambda pending, clock: (pending_peak.append(len(pending)), original_flush(pending, clock))[1]
    stats = pipe.run()
    assert stats.frames == 3000 and seen == list(range(3000))
    assert max(pending_peak) <= 8
    assert sum(model.batches) == 3


def test_batcher_flushes_on_max_wait_even_while_frames_keep_arriving():
    model = CountingModelFake()
    opts = PipelineOptions(max_batch=1000, max_wait_ms=30.0, queue_size=10_000)
    stats = Pipeline(frames(60, delay_s=0.01), OneFaceEveryNDetectorFake(every=1), model, lambda item: None,
                     opts).run()
    assert stats.faces == 60
    assert len(model.batches) >= 6, f"batches {model.batches}: max-wait 30 ms over ~0.6 s of input"


def test_ctrl_c_on_a_live_input_ends_the_input_and_finishes_the_run():
    seen: list[int] = []
    pipe = Pipeline(frames(None, delay_s=0.01), OneFaceEveryNDetectorFake(every=5), CountingModelFake(),
                    lambda record: seen.append(record.index), live=True)
    threading.Timer(1.0, _thread.interrupt_main).start()
    stats = pipe.run()
    assert stats.ended_by_user and not stats.interrupted
    assert stats.frames == len(seen) > 10 and seen == list(range(len(seen)))


def test_second_ctrl_c_on_a_live_input_stops_everything():
    pipe = Pipeline(frames(None, delay_s=0.01), OneFaceEveryNDetectorFake(every=5), CountingModelFake(0.05),
                    lambda item: time.sleep(0.05), live=True)
    threading.Timer(0.5, _thread.interrupt_main).start()
    threading.Timer(0.55, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        pipe.run()
    assert pipe.stats.interrupted


def emoengine(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "emoengine", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture()
def face_png(tmp_path):
    import cv2

    path = tmp_path / "face.png"
    cv2.imwrite(str(path), shipped_photo("Tom_Hanks_54745.png")[:, :, ::-1])
    return path


def test_a_foreign_onnx_as_model_exits_2_with_one_line(tmp_path, face_png):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "foreign.onnx")
    r = emoengine("run", str(face_png), "--model", str(tmp_path / "foreign.onnx"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not an emoengine EmoNet export" in r.stderr


def test_out_that_is_a_file_exits_2(tmp_path, face_png):
    (tmp_path / "taken").write_text("x")
    r = emoengine("run", str(face_png), "--weights", "random", "--backend", "torch", "--out", str(tmp_path / "taken"),
                  "--detector", "none")
    assert r.returncode == 2, r.stderr
    assert "cannot create the output folder" in r.stderr.strip().splitlines()[-1]


def test_detector_none_crops_by_plain_resize_and_stale_outputs_go(tmp_path, face_png):
    out = tmp_path / "out"
    out.mkdir()
    (out / "conv1.mp4").write_bytes(b"from an earlier run")
    (out / "my_notes.txt").write_text("mine")
    r = emoengine("run", str(face_png), "--weights", "random", "--backend", "torch", "--out", str(out),
                  "--detector", "none")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["crop"] == "upstream"
    assert not (out / "conv1.mp4").exists() and (out / "my_notes.txt").exists()
    assert set(summary["files"]) == {p.name for p in out.iterdir()} - {"my_notes.txt"}
