"""Detection and flow on a pool of workers (issue 20): the same boxes and ids whatever the number of workers,
today's rules for scene cuts and faces that enter inside a segment, a worker's error or Ctrl-C ending the run
with no file under a final name and no thread behind, and `--workers` checked.

Real parts throughout: MTCNN, clips encoded and decoded through the engine's own writers and sources, and the
stand-in model (benchmarks/standin_model.py: the export's contract under ONNX Runtime, cheap ops). The one
injected fault, a detector that raises on its third call, wraps the real detector."""

from __future__ import annotations

import _thread
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from emoengine.benchmarks.standin_model import write_standin
from emoengine.engine.model.emonet_model import open_emonet
from emoengine.engine.run.demo import group_in_view_frames, shipped_photo, single_face_frames, write_clip
from emoengine.engine.run.driver import RunConfig, run_pipeline
from emoengine.engine.run.pipeline import Pipeline, PipelineOptions
from emoengine.engine.sources.opener import open_source
from emoengine.engine.tracking.detectors import DEFAULT_MIN_FACE, make_detector
from emoengine.errors import RunFailure
from emoengine.settings import RunSettings

EVERY = 8


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return write_standin(tmp_path_factory.mktemp("standin") / "standin.onnx")


@pytest.fixture(scope="module")
def detector():
    det = make_detector("mtcnn", threads=1, min_face=DEFAULT_MIN_FACE)   # what run uses on a CPU
    yield det
    det.close()


def background(size=(640, 360)) -> np.ndarray:
    w, h = size
    return np.clip(np.linspace(60, 170, w)[None, :, None] + np.linspace(0, 40, h)[:, None, None]
                   + np.array([10, 20, 30]), 0, 255).astype(np.uint8).repeat(h, 0)[:h]


def paste(frame: np.ndarray, face: np.ndarray, x: int, y: int, side: int) -> np.ndarray:
    out = frame.copy()
    out[y:y + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    return out


def emoengine_threads(settle_s: float = 2.0) -> list[str]:
    """The engine's threads (stages, workers, encoders) still alive after `settle_s`."""
    deadline = time.perf_counter() + settle_s
    while True:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("emoengine-") and t.is_alive()]
        if not alive or time.perf_counter() > deadline:
            return alive
        time.sleep(0.01)


# how the worker processes make run's CPU detector (a lent detector object stays in this process: threads)
MTCNN_RECIPE = functools.partial(make_detector, "mtcnn", threads=1, min_face=DEFAULT_MIN_FACE)


def pipeline_records(path, detector, standin, workers: int, in_processes: bool = False, **options) -> list:
    """Every record of a Pipeline run on `path` with `workers` detect/flow workers (threads, or processes),
    in the order rendered."""
    seen: list = []
    model = open_emonet("ort", model=str(standin), max_batch=1)
    if in_processes:
        options.update(detector_recipe=MTCNN_RECIPE)
    with open_source(path) as source:
        Pipeline(source, detector, model, seen.append,
                 PipelineOptions(max_batch=1, detect_every=EVERY, workers=workers, frame_size=source.size,
                                 **options)).run()
    model.close()
    return seen


def detect_processes() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("emoengine-detect")]


def shared_memory() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_n_workers_write_the_same_predictions_as_one(tmp_path, standin):
    """Six faces panning and zooming, 44 frames (five segments and a short one): predictions.csv byte for byte."""
    clip = write_clip(tmp_path / "group.mp4", group_in_view_frames(44), fps=24)
    written = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        r = subprocess.run([sys.executable, "-m", "emoengine", "run", str(clip), "--model", str(standin),
                            "--no-video", "--workers", str(workers), "--out", str(out), "--quiet"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        written[workers] = (out / "predictions.csv").read_text()
    assert written[1] == written[3]
    rows = [line.split(",") for line in written[3].splitlines()[1:]]
    frames = [int(r[0]) for r in rows]
    assert frames == sorted(frames) and set(frames) == set(range(44))
    assert {int(r[2]) for r in rows} == set(range(6)), "six faces, six ids"


@pytest.mark.parametrize("in_processes", [False, True], ids=["threads", "processes"])
def test_a_cut_and_a_face_entering_inside_a_segment_keep_todays_rules(tmp_path, detector, standin, in_processes):
    """With 3 workers, threads or processes: a cut at frame 12 (inside the segment 8..15) is detected on the cut frame; a face that
    enters at frame 11 is found at the next keyframe, 16, at most EVERY - 1 frames late, and kept."""
    hanks, group = shipped_photo("Tom_Hanks_54745.png"), shipped_photo("t1.jpg")
    bg = background()
    cut = [paste(bg, hanks, 200 + 2 * i, 90, 170) for i in range(12)]
    cut += [paste(np.full_like(bg, 200), group[260:420, 460:590], 224 + 2 * i, 90, 170) for i in range(8)]
    records = pipeline_records(write_clip(tmp_path / "cut.mp4", cut, fps=24), detector, standin, workers=3,
                               in_processes=in_processes)
    assert [r.index for r in records] == list(range(20))
    assert [r.index for r in records if r.keyframe] == [0, 8, 12, 16]
    assert detector.detect([records[12].rgb])[0].boxes.tolist() == records[12].detections.boxes.tolist()
    enters = [bg if i < 11 else paste(bg, hanks, 150 + 3 * i, 80, 180) for i in range(28)]
    records = pipeline_records(write_clip(tmp_path / "enters.mp4", enters, fps=24), detector, standin, workers=3,
                               in_processes=in_processes)
    found = next(r.index for r in records if r.num_detections)
    assert found == 16 and all(r.num_detections == 1 for r in records[found:])
    assert {int(i) for r in records for i in r.ids} == {0}


def test_frames_too_big_for_segments_in_flight_are_tracked_alike_one_at_a_time(tmp_path, detector, standin):
    """With room for less than two segments (as at 4K) the detect stage tracks frame by frame in its own
    thread: the same keyframes, boxes and ids as the workers give."""
    clip = write_clip(tmp_path / "group.mp4", group_in_view_frames(20), fps=24)
    pooled = pipeline_records(clip, detector, standin, workers=3)
    inline = pipeline_records(clip, detector, standin, workers=3, segment_bytes=1)
    assert [r.keyframe for r in inline] == [r.keyframe for r in pooled]
    for a, b in zip(inline, pooled, strict=True):
        np.testing.assert_array_equal(a.detections.boxes, b.detections.boxes)
        np.testing.assert_array_equal(a.ids, b.ids)


class FailingDetector:
    """The real MTCNN, raising on its third call: the fault injected into a worker."""

    name = "mtcnn"

    def __init__(self, real) -> None:
        self.real, self.calls, self.lock = real, 0, threading.Lock()

    def detect(self, frames):
        with self.lock:
            self.calls += 1
            fail = self.calls == 3
        if fail:
            raise RuntimeError("detector blew up")
        return self.real.detect(frames)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """240 frames at 320x240: far longer than a failure or an interrupt lets a run get."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    return write_clip(path, single_face_frames(240, size=(320, 240), face_px=(90, 130)), fps=24)


def run_cfg(clip, out, workers: int, model) -> RunConfig:
    return RunSettings(model=str(model), quiet=True, workers=workers, detect_every=EVERY).resolve(clip, out)


def test_an_error_in_a_worker_fails_the_run_at_once_with_one_line_and_no_final_file(tmp_path, detector, standin,
                                                                                      long_clip):
    out, rendered = tmp_path / "out", []
    with pytest.raises(RunFailure) as failure:
        run_pipeline(run_cfg(long_clip, out, workers=2, model=standin), lambda: open_emonet("ort", model=str(standin)),
                     detector=lambda: FailingDetector(detector), observe=lambda r: rendered.append(r.index))
    assert str(failure.value) == "detect stage failed: RuntimeError: detector blew up"
    assert len(rendered) < 40, "the run went on after the worker failed"   # the third keyframe is frame 16
    assert sorted(p.name for p in out.iterdir()) == []
    assert emoengine_threads() == []


def test_ctrl_c_with_workers_leaves_no_final_file_and_no_thread(tmp_path, detector, standin, long_clip):
    out, rendered = tmp_path / "out", []

    def observe(record) -> None:
        rendered.append(record.index)
        if len(rendered) == 20:
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(run_cfg(long_clip, out, workers=3, model=standin), lambda: open_emonet("ort", model=str(standin)),
                     detector=detector, observe=observe)
    assert len(rendered) < 240
    assert sorted(p.name for p in out.iterdir()) == []
    assert emoengine_threads() == []


@pytest.mark.parametrize("value", ["0", "-2"])
def test_workers_below_one_exit_2_with_one_line(value, tmp_path, capsys):
    from emoengine.cli.main import main

    image, out = tmp_path / "frame.png", tmp_path / "out"
    cv2.imwrite(str(image), background())
    with pytest.raises(SystemExit) as exc:
        main(["run", str(image), "--weights", "random", "--out", str(out), "--workers", value])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1, captured.err
    assert lines[0] == "emoengine: error: Invalid value for '--workers': Input should be greater than or equal to 1"
    assert not out.exists()


def test_the_stand_in_keeps_the_export_contract_and_says_it_is_no_emonet(standin):
    from emoengine.engine.model.model_check import check_onnx_contract

    check_onnx_contract(standin)   # raises on any difference from the contract's tensors
    model = open_emonet("ort", model=str(standin), max_batch=4)
    batch = model.predict(np.zeros((2, 256, 256, 3), np.uint8))
    assert model.is_stand_in and model.is_random and model.has_taps
    assert batch.probs.shape == (2, 8) and batch.taps["conv1_mean"].shape == (2, 128, 128)
    np.testing.assert_allclose(batch.probs.sum(axis=1), 1.0, rtol=1e-6)
    model.close()


def test_the_capacity_device_check_without_cuda_exits_2_with_one_line(tmp_path):
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline_capacity.py"
    r = subprocess.run([sys.executable, str(script), "--device-check", "--json", str(tmp_path / "e2e.json")],
                       capture_output=True, text=True, timeout=120)
    if r.returncode == 0:
        pytest.skip("CUDA is here: the check ran")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("pipeline_capacity --device-check: no GPU here")


FAULTY = """
from emoengine.engine.tracking.detectors import DEFAULT_MIN_FACE, make_detector


class FailingDetector:
    \"\"\"The real MTCNN, raising on its third call in this process: the fault injected into a worker process.\"\"\"

    name = "mtcnn"

    def __init__(self):
        self.real, self.calls = make_detector("mtcnn", threads=1, min_face=DEFAULT_MIN_FACE), 0

    def detect(self, frames):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("detector blew up")
        return self.real.detect(frames)

    def close(self):
        pass
"""


def test_an_error_in_a_worker_process_fails_the_run_at_once_with_one_line(tmp_path, detector, standin, long_clip,
                                                                           monkeypatch):
    """The recipe lives in a module the child imports (it gets this process's sys.path), as a real one would."""
    (tmp_path / "faulty_detectors.py").write_text(FAULTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    from faulty_detectors import FailingDetector  # pyright: ignore[reportMissingImports]

    before = shared_memory()
    with pytest.raises(RunFailure) as failure:
        pipeline_records(long_clip, detector, standin, workers=2, detector_recipe=FailingDetector)
    assert str(failure.value) == "a detect worker failed: RuntimeError: detector blew up"
    assert detect_processes() == [] and emoengine_threads() == [] and shared_memory() <= before


def test_a_killed_worker_process_fails_the_run_in_one_line_and_leaves_nothing(tmp_path, standin, long_clip):
    out, before = tmp_path / "out", shared_memory()

    def observe(record) -> None:
        if record.index == 10:
            os.kill(detect_processes()[0].pid, signal.SIGKILL)

    with pytest.raises(RunFailure) as failure:
        run_pipeline(run_cfg(long_clip, out, workers=2, model=standin), lambda: open_emonet("ort", model=str(standin)),
                     observe=observe)
    assert str(failure.value) == "a detect worker stopped (exit code -9)"
    assert sorted(p.name for p in out.iterdir()) == []
    assert detect_processes() == [] and emoengine_threads() == [] and shared_memory() <= before


def test_ctrl_c_with_worker_processes_leaves_no_file_process_thread_or_shared_memory(tmp_path, standin, long_clip):
    out, rendered, before = tmp_path / "out", [], shared_memory()

    def observe(record) -> None:
        rendered.append(record.index)
        if len(rendered) == 1:
            assert len(detect_processes()) == 3, "run's own detector from its settings: the segments in processes"
        if len(rendered) == 20:
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(run_cfg(long_clip, out, workers=3, model=standin), lambda: open_emonet("ort", model=str(standin)),
                     observe=observe)
    assert len(rendered) < 240
    assert sorted(p.name for p in out.iterdir()) == []
    assert detect_processes() == [] and emoengine_threads() == [] and shared_memory() <= before
