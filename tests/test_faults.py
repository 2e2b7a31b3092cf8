"""Faults while running: a failing stage, a read-only or full output folder, a face cut by the frame edge.

The full and read-only folders are real filesystems (a tmpfs of a few KB, or mounted read-only) inside an
unprivileged user+mount namespace (`unshare`); where a machine allows no namespaces those two tests skip,
and the injected-ENOSPC test (named so) still checks the same path everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from emoengine.engine.model.emonet_model import EmoNetBatch
from emoengine.engine.run.demo import shipped_photo, write_clip
from emoengine.engine.run.pipeline import Pipeline, PipelineOptions
from emoengine.engine.sources.opener import Frame
from emoengine.engine.tracking.detectors.base import Faces
from emoengine.errors import RunFailure


def pattern_frames(n: int, w: int = 96, h: int = 64) -> list[np.ndarray]:
    """Busy moving content without faces (so x264 output grows with every frame)."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (h, w + n, 3), np.uint8)
    return [np.ascontiguousarray(base[:, i:i + w]) for i in range(n)]


# --------------------------------------------------------------------------- a stage that raises


class FrameFeedFake:
    """Endless frames (a live feed): nothing ends the run but the failure under test."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at

    def __iter__(self):
        i = 0
        while True:
            if i == self.fail_at:
                raise RuntimeError("decoder blew up")
            yield Frame(i, i / 25, np.full((32, 32, 3), 90, np.uint8))
            i += 1


class FaceEveryFrameDetectorFake:
    name = "fake"

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = 0, fail_at

    def detect(self, frames):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("detector blew up")
        return [Faces(np.array([[0, 0, 32, 32]], np.float32), np.ones(1, np.float32),
                      np.zeros((1, 5, 2), np.float32)) for _ in frames]


class ZeroModelFake:
    class_names = tuple("abcdefgh")
    backend = "fake"

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = 0, fail_at
        self.crops: list[np.ndarray] = []   # what each call was given

    def predict(self, crops):
        self.calls += 1
        self.crops.append(crops)
        if self.calls == self.fail_at:
            raise RuntimeError("model blew up")
        n = len(crops)
        z = np.zeros((n, 8), np.float32)
        return EmoNetBatch(z, z + 1 / 8, z[:, 0], z[:, 0], np.zeros((n, 68, 2), np.float32))


def emoengine_threads(settle_s: float = 2.0) -> list[str]:
    """Stage threads still alive after `settle_s` (a finished stage's thread returns right after it says so)."""
    deadline = time.perf_counter() + settle_s
    while True:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("emoengine-") and t.is_alive()]
        if not alive or time.perf_counter() > deadline:
            return alive
        time.sleep(0.01)


@pytest.mark.parametrize("stage", ["decode", "detect", "crop", "infer", "render"])
def test_a_stage_that_raises_stops_every_stage_and_leaves_no_thread(stage, monkeypatch):
    """Fakes feed an endless input so every other stage is busy or blocked on a full queue when one fails."""
    import emoengine.engine.run.pipeline as pipeline_module

    rendered = []

    def sink(item):
        if stage == "render" and len(rendered) == 5:
            raise OSError(errno.EIO, "sink blew up")
        rendered.append(item)

    if stage == "crop":
        real = pipeline_module.crop_faces
        calls = []

        def crop_that_fails(*a, **k):
            calls.append(1)
            if len(calls) == 5:
                raise ValueError("crop blew up")
            return real(*a, **k)

        monkeypatch.setattr(pipeline_module, "crop_faces", crop_that_fails)
    pipe = Pipeline(FrameFeedFake(fail_at=5 if stage == "decode" else None),
                    FaceEveryFrameDetectorFake(fail_at=5 if stage == "detect" else None),
                    ZeroModelFake(fail_at=2 if stage == "infer" else None), sink,
                    PipelineOptions(max_batch=2, max_wait_ms=5, queue_size=2))
    assert emoengine_threads() == []
    t0 = time.perf_counter()
    with pytest.raises(RunFailure, match=rf"{stage} stage failed: \w+: .*blew up"):
        pipe.run()
    assert time.perf_counter() - t0 < 5
    assert emoengine_threads() == [], "a stage thread outlived the run"


# --------------------------------------------------------------------------- read-only and full folders


def can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                        "mount -t tmpfs -o size=16k tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=16k tmpfs /tmp"],
                       capture_output=True, timeout=30)
    return r.returncode == 0


NAMESPACES = can_mount_tmpfs()
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="no unprivileged user+mount namespaces here "
                                                             "(cannot mount a real tmpfs)")


def run_on_tmpfs(mount_options: str, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`emoengine run ... --out out` with `out` a fresh tmpfs (mount_options), and what it held at the end
    (the mount lives only as long as the namespace, so it is listed from inside)."""
    out.mkdir(parents=True, exist_ok=True)
    script = ('mount -t tmpfs -o "$1" tmpfs "$2" || exit 99; shift 2; '
              f'"{sys.executable}" -m emoengine run "$@"; rc=$?; '
              'echo "LISTING"; ls -A "$OUT"; exit $rc')
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
                        mount_options, str(out), *args, "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OUT": str(out)})
    assert r.returncode != 99, r.stderr
    listing = r.stdout.split("LISTING", 1)[1].split() if "LISTING" in r.stdout else ["<no listing>"]
    return r, listing


@pytest.fixture(scope="module")
def faceless_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "pattern.mp4", iter(pattern_frames(48)), fps=24)


@needs_namespaces
def test_read_only_output_folder_exits_2_before_any_frame(tmp_path, faceless_clip, golden_pth_8):
    r, listing = run_on_tmpfs("ro,size=1m", tmp_path / "ro", str(faceless_clip), "--weights", str(golden_pth_8),
                              "--backend", "torch")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot write into the output folder" in lines[0] and "Read-only file system" in lines[0]
    assert listing == []


@needs_namespaces
def test_full_disk_exits_1_with_one_line_and_leaves_nothing(tmp_path, faceless_clip, golden_pth_8):
    """A 48 KiB tmpfs: the streamed videos fill it part way through the run (real ENOSPC from the kernel)."""
    r, listing = run_on_tmpfs("size=48k", tmp_path / "full", str(faceless_clip), "--weights", str(golden_pth_8),
                              "--backend", "torch", "-q")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("emoengine: error: ") and "No space left on device" in lines[0], lines[0]
    assert listing == [], listing


def test_injected_enospc_on_video_write_exits_1_and_leaves_nothing(tmp_path, faceless_clip, golden_pth_8,
                                                                  monkeypatch, capsys):
    """An OSError(ENOSPC) injected into the muxer after a few frames (the test name says it is injected),
    through the real entry point in-process: exit 1, one error line, an empty output folder."""
    import emoengine.engine.outputs.writers as writers
    from emoengine.cli.main import main

    real_init = writers.VideoWriter.__init__

    def init_then_fill_up(self, *a, **k):
        real_init(self, *a, **k)
        container, muxed = self._container, []

        class FillingContainer:
            def __getattr__(self, name):
                return getattr(container, name)

            def mux(self, packet):
                muxed.append(1)
                if len(muxed) > 3:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return container.mux(packet)

        self._container = FillingContainer()

    monkeypatch.setattr(writers.VideoWriter, "__init__", init_then_fill_up)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["run", str(faceless_clip), "--weights", str(golden_pth_8), "--backend", "torch", "--out", str(out),
              "-q"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exc.value.code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == []


def test_failure_at_commit_removes_what_the_commit_already_put_in_place(tmp_path, monkeypatch):
    """All or nothing: the summary (written last) fails, so the CSV and PNGs renamed before it go again."""
    import emoengine.engine.outputs.run_outputs as outputs_module
    from emoengine.engine.outputs.run_outputs import RunOutputs
    from emoengine.engine.run.records import FrameRecord

    outputs = RunOutputs(tmp_path, tuple("abcdefgh"), fps=10, still=False)
    for i in range(3):
        outputs.write(FrameRecord(i, i / 10, np.full((48, 64, 3), 60, np.uint8), []))

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs_module, "write_json", no_space)
    with pytest.raises(RunFailure, match="No space left on device"):
        outputs.commit({"frames": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the edge of the frame


def test_face_cut_by_the_frame_edge_is_cropped_centred_on_the_whole_face():
    """Real MTCNN on a face whose left fifth is outside the frame: the CSV box is clipped to the frame, but the
    crop is a square around the unclipped box (black where the frame ends), not around the visible part."""
    import cv2

    from emoengine.engine.tracking.detectors import make_detector

    face = cv2.resize(shipped_photo("Tom_Hanks_54745.png"), (150, 150))
    frame = np.full((220, 300, 3), 120, np.uint8)
    frame[35:185, 0:120] = face[:, 30:]            # 30 px of the (tightly cropped) face are beyond the left edge
    detector = make_detector("mtcnn")
    seen = []
    model = ZeroModelFake()
    pipe = Pipeline(iter([Frame(0, 0.0, frame)]), detector, model, seen.append)
    pipe.run()
    detector.close()
    record = seen[0]
    assert len(record.detections) == 1
    box, full = record.detections.boxes[0], record.detections.crop_boxes[0]
    assert box[0] == 0 and full[0] < -8, (box, full)
    region = record.regions[0]
    np.testing.assert_allclose((region[0] + region[2]) / 2, (full[0] + full[2]) / 2, atol=1.0)
    assert region[0] < 0
    black_cols = int(round(-region[0] / (region[2] - region[0]) * 256))
    crop = model.crops[0][0]   # the crop EmoNet was given (the record drops it once inference is done)
    assert not crop[:, : black_cols - 2].any() and crop[:, black_cols + 2:].any()


def test_summary_of_a_clean_run_reports_no_damage(tmp_path, faceless_clip, golden_pth_8):
    from emoengine.engine.model.emonet_model import open_emonet
    from emoengine.engine.run.driver import run_pipeline
    from emoengine.settings import RunSettings

    cfg = RunSettings(weights=str(golden_pth_8), quiet=True, no_video=True).resolve(faceless_clip, tmp_path)
    summary = run_pipeline(cfg, lambda: open_emonet("torch", weights=str(golden_pth_8)))
    assert (summary["frames"], summary["bad_frames"], summary["decode_errors"]) == (48, 0, [])
    assert json.loads((tmp_path / "summary.json").read_text())["bad_frames"] == 0


def test_sigterm_while_a_stage_is_still_in_native_code_exits_130_not_abort(tmp_path, golden_pth_8):
    """Seen under heavy load: a stage still inside PyTorch/ONNX Runtime when the stopped run gave up waiting
    for it; at interpreter shutdown Python unwound that daemon thread through C++ frames and the process
    aborted (status -6, "terminate called without an active exception") after printing its clean line.
    Here the grace period is 0 s (patched in a wrapper around the real entry point), so that always happens."""
    import signal

    from emoengine.engine.run.demo import single_face_frames

    clip = write_clip(tmp_path / "faces.mp4", single_face_frames(48, size=(320, 240), face_px=(100, 140)), fps=24)
    wrapper = tmp_path / "no_grace.py"
    wrapper.write_text("import sys\nimport emoengine.engine.run.pipeline as p\np.STOP_GRACE_S = 0.0\n"
                       "from emoengine.cli.main import main\nsys.argv[0] = 'emoengine'\nmain()\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(wrapper), "run", str(clip), "--weights", str(golden_pth_8),
                             "--backend", "torch", "--detector", "none", "--max-batch", "1", "--out", str(out)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out.exists() and any(out.iterdir())):
        time.sleep(0.05)
    time.sleep(1.0)                      # inside the run: EmoNet busy on a face
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "terminate called" not in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == []
