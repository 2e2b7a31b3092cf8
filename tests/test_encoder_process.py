"""The annotated video's encoder process (issue 20): what it writes, and nothing left behind when it fails."""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest

from emoengine.engine.outputs.annotate import annotate_frame
from emoengine.engine.outputs.encoder_process import EncoderProcess
from emoengine.engine.outputs.encoders import EncoderThread
from emoengine.engine.run.records import FaceResult, FrameRecord
from emoengine.errors import RunFailure

W, H = 320, 192
CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
DRAW = functools.partial(annotate_frame, class_names=CLASSES)


def face(i: int) -> FaceResult:
    """A face whose box, label and circumplex move (what the child draws), with a tap map it need not get."""
    box = np.array([40 + 2 * i, 30, 150 + 2 * i, 150], np.float32)
    probs = np.full(len(CLASSES), 0.02, np.float32)
    probs[1] = 1 - probs.sum() + 0.02
    landmarks = box[:2] + np.random.default_rng(i).random((68, 2)) * (box[2:] - box[:2])
    return FaceResult(box=box, det_score=0.99, landmarks5=np.full((5, 2), np.nan, np.float32),
                      logits=np.log(probs), probs=probs, expression="happy", valence=0.4 - 0.03 * i,
                      arousal=0.2, landmarks68=landmarks.astype(np.float32), face_id=1,
                      taps={"conv1": np.ones((128, 128), np.float32)})


def records(n: int) -> list[FrameRecord]:
    yy, xx = np.mgrid[0:H, 0:W]
    return [FrameRecord(i, i / 24, np.stack([(xx + 3 * i) % 256, (yy * 2) % 256, (xx + yy) % 256], -1)
                        .astype(np.uint8), faces=[face(i)]) for i in range(n)]


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def shm_names() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_writes_what_the_thread_writes(tmp_path):
    frames = records(20)
    before = shm_names()
    proc = EncoderProcess(tmp_path / "p.mp4", 24.0, (W, H), DRAW)
    thread = EncoderThread(tmp_path / "t.mp4", 24.0, (W, H), DRAW)
    for fr in frames:
        proc.put(fr)
        thread.put(fr)
    assert proc.finish() and thread.finish()
    assert not (tmp_path / "p.mp4").exists()   # nothing under the final name before commit
    proc.commit(), thread.commit()
    got, want = decode(tmp_path / "p.mp4"), decode(tmp_path / "t.mp4")
    assert len(got) == len(want) == 20
    assert max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(got, want, strict=True)) < 1.0
    assert np.abs(got[0].astype(int) - frames[0].rgb.astype(int)).mean() > 2   # the face was drawn
    assert proc.clock.items == 20 and proc.clock.busy_s > 0 and proc.child_cpu_s > 0
    assert shm_names() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.mp4", "t.mp4"]


def test_a_killed_child_fails_the_run_in_one_line_and_leaves_nothing(tmp_path):
    before = shm_names()
    proc = EncoderProcess(tmp_path / "annotated.mp4", 24.0, (W, H), DRAW)
    child = proc._proc
    assert child is not None
    pid = child.pid
    frames = records(8)
    proc.put(frames[0])
    os.kill(pid, signal.SIGKILL)
    child.join(5)
    with pytest.raises(RunFailure) as info:
        for fr in frames[1:] * 4:
            proc.put(fr)
        proc.finish()
    message = str(info.value)
    assert "annotated.mp4" in message and "\n" not in message
    proc.abort()
    assert list(tmp_path.iterdir()) == []
    assert shm_names() == before
    with pytest.raises(ProcessLookupError):   # reaped, not a zombie
        os.kill(pid, 0)


def test_abort_leaves_nothing(tmp_path):
    before = shm_names()
    proc = EncoderProcess(tmp_path / "annotated.mp4", 24.0, (W, H), DRAW)
    assert proc._proc is not None
    pid = proc._proc.pid
    for fr in records(5):
        proc.put(fr)
    proc.abort()
    proc.abort()   # twice: harmless
    time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []
    assert shm_names() == before
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_an_error_in_the_child_is_one_run_failure(tmp_path):
    proc = EncoderProcess(tmp_path / "annotated.mp4", 24.0, (W, H), _broken_picture)
    with pytest.raises(RunFailure, match="annotated.mp4"):
        for fr in records(10):
            proc.put(fr)
        proc.finish()
    assert list(tmp_path.iterdir()) == []


def _broken_picture(record):
    raise ValueError("drawing failed")
