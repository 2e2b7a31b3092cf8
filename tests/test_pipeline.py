"""The streaming engine end to end: real video files (made here from photos shipped in insightface's wheel),
the real MTCNN detector, real ONNX Runtime and PyTorch EmoNet (random weights: the machinery, not the
emotions, is under test), real encoders."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from emoengine.compare import FP32_TOLERANCE
from emoengine.engine.run.demo import shipped_photo, single_face_frames, write_clip

CONTRACT_VIDEO_FILES = ("predictions.csv", "annotated.mp4", "conv1.mp4", "emo_conv1.mp4", "conv1_mean.png",
                        "emo_conv1_mean.png", "timeline.png", "summary.json")


def emoengine(*args: str, env_models: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_models is not None:
        env["EMOENGINE_MODELS"] = str(env_models)
    return subprocess.run([sys.executable, "-m", "emoengine", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def count_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def random_onnx(random_onnx_full) -> Path:
    """Random-weight EmoNet exported once for the session (full taps, so --save-activations works too)."""
    return random_onnx_full


@pytest.fixture(scope="module")
def moving_face_clip(tmp_path_factory) -> Path:
    """24 frames of one face travelling and growing across a 640×360 frame."""
    return write_clip(tmp_path_factory.mktemp("media") / "moving_face.mp4", single_face_frames(24), fps=24)


@pytest.fixture(scope="module")
def ort_run(tmp_path_factory, random_onnx, moving_face_clip) -> Path:
    out = tmp_path_factory.mktemp("run_ort")
    r = emoengine("run", str(moving_face_clip), "--model", str(random_onnx), "--out", str(out),
                  "--save-activations")
    assert r.returncode == 0, r.stderr
    return out


def test_run_writes_every_contract_file_with_input_frame_count(ort_run, moving_face_clip):
    for name in CONTRACT_VIDEO_FILES:
        assert (ort_run / name).is_file(), name
    n = count_frames(moving_face_clip)
    assert n == 24
    for video in ("annotated.mp4", "conv1.mp4", "emo_conv1.mp4"):
        assert count_frames(ort_run / video) == n, video
    leftovers = [p.name for p in ort_run.iterdir() if p.name.startswith(".") or "partial" in p.name]
    assert not leftovers


def test_csv_has_a_row_per_frame_and_face_and_the_moving_face_keeps_its_id(ort_run):
    rows = read_rows(ort_run / "predictions.csv")
    frames = sorted({int(r["frame"]) for r in rows})
    assert len(frames) >= 22, "the face is found in nearly every frame"
    assert len(rows) == len(frames), "one face per frame in this clip"
    assert {r["face_id"] for r in rows} == {"0"}
    probs = np.array([[float(r[k]) for k in r if k.startswith("p_")] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    assert list(rows[0])[:9] == ["frame", "time_s", "face_id", "x1", "y1", "x2", "y2", "det_score",
                                 "expression"]
    xs = [float(r["x1"]) for r in rows]
    assert xs[-1] > xs[0] + 200, "the face travels left to right"


def test_summary_has_contract_fields(ort_run):
    s = json.loads((ort_run / "summary.json").read_text())
    for key in ("frames", "frames_with_face", "faces", "backend", "wall_s", "stages", "faces_per_s",
                "frames_per_s"):
        assert key in s, key
    assert s["frames"] == 24 and s["backend"] == "ort"
    assert {"decode", "detect", "infer", "render"} <= set(s["stages"])
    # keyframe detection: the detector's frames and the flow's add up to every frame; memory is reported
    assert s["detect_frames"] + s["tracked_frames"] == 24 and 1 <= s["detect_frames"] < 24
    assert s["options"]["detect_every"] > 1 and 0 < s["peak_rss_mb"] < 1500
    assert set(s["stages_cpu_s"]) == set(s["stages"]) and "encode" in s["stages"]


def test_summary_names_the_weights_and_their_sha256(ort_run, random_onnx):
    from emoengine.export.onnx_export import read_metadata

    s = json.loads((ort_run / "summary.json").read_text())
    assert s["weights"] == str(random_onnx)
    assert s["weights_sha256"] == read_metadata(random_onnx)["checkpoint_sha256"]


def test_activations_archive_holds_each_faces_maps(ort_run):
    with np.load(ort_run / "activations.npz") as z:
        frames = z["frames"]
        assert len(frames) == len(read_rows(ort_run / "predictions.csv"))
        assert z["conv1_mean"].shape == (len(frames), 128, 128) and z["conv1_channels"].shape == (len(frames), 64)


@pytest.mark.slow   # over ~10 s on 2 cores (docs/development.md)
def test_torch_and_ort_agree_within_1e3(tmp_path, ort_run, moving_face_clip):
    out = tmp_path / "torch"
    r = emoengine("run", str(moving_face_clip), "--weights", "random", "--backend", "torch", "--out", str(out),
                  "--no-video")
    assert r.returncode == 0, r.stderr
    a, b = read_rows(ort_run / "predictions.csv"), read_rows(out / "predictions.csv")
    assert [(x["frame"], x["face_id"]) for x in a] == [(x["frame"], x["face_id"]) for x in b]
    cols = [k for k in a[0] if k.startswith("p_")] + ["valence", "arousal"]
    va = np.array([[float(x[k]) for k in cols] for x in a])
    vb = np.array([[float(x[k]) for k in cols] for x in b])
    # an absolute bound (the fp32 tolerance's number) on the CSV's values, probabilities and valence/arousal
    assert np.abs(va - vb).max() <= FP32_TOLERANCE
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "summary.json"]


def test_group_photo_gives_one_row_per_face_and_annotated_png(tmp_path, random_onnx):
    import cv2

    photo = tmp_path / "group.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(shipped_photo("t1.jpg"), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    r = emoengine("run", str(photo), "--model", str(random_onnx), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert len(read_rows(out / "predictions.csv")) == 6
    assert (out / "annotated.png").is_file()
    assert len({r["face_id"] for r in read_rows(out / "predictions.csv")}) == 6


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_bad_video_exits_2_and_writes_nothing_final(tmp_path, random_onnx, moving_face_clip, kind):
    bad = tmp_path / "bad.mp4"
    if kind == "truncated":
        data = moving_face_clip.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_text("this is not a video\n")
    out = tmp_path / "out"
    r = emoengine("run", str(bad), "--model", str(random_onnx), "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))


@pytest.mark.slow
def test_stream_of_5000_small_frames_runs_with_flat_memory(tmp_path, random_onnx):
    """An MPEG-TS stream opened through the stream path (file:// URL), faces in some frames."""
    import psutil

    from emoengine.engine.model.emonet_model import open_emonet
    from emoengine.engine.run.driver import run_pipeline
    from emoengine.settings import RunSettings

    face = single_face_frames(1, size=(160, 160), face_px=(100, 100)).__next__()
    blank = np.full_like(face, 90)
    ts = tmp_path / "stream.ts"
    with av.open(str(ts), "w", format="mpegts") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 160, 160, "yuv420p"
        for i in range(5000):
            img = face if i % 250 == 0 else blank
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    proc = psutil.Process()
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(proc.memory_info().rss / 2**20)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        cfg = RunSettings(model=str(random_onnx), quiet=True).resolve(ts.resolve().as_uri(), tmp_path / "out")
        summary = run_pipeline(cfg, lambda: open_emonet("ort", model=str(random_onnx)))
    finally:
        done.set()
        sampler.join()
    assert summary["frames"] == 5000 and summary["input_kind"] == "stream"
    assert summary["frames_with_face"] >= 15
    warm = samples[len(samples) // 5]
    assert max(samples[len(samples) // 5:]) - warm < 150, f"RSS grew from {warm:.0f} to {max(samples):.0f} MiB"


def test_a_stage_that_raises_ends_the_run_within_seconds_with_exit_1(tmp_path, random_onnx, moving_face_clip,
                                                                      monkeypatch, capsys):
    """A failing detector (a fake: the failure is what is under test) stops every stage promptly."""
    import emoengine.engine.run.driver as run_module
    from emoengine.cli.main import main

    class ExplodingDetectorFake:
        name = "exploding"
        calls = 0

        def detect(self, frames):
            ExplodingDetectorFake.calls += 1
            if ExplodingDetectorFake.calls == 5:
                raise RuntimeError("detector blew up")
            from emoengine.engine.tracking.detectors.base import Faces
            return [Faces.empty() for _ in frames]

        def close(self):
            pass

    monkeypatch.setattr(run_module, "make_detector", lambda *a, **k: ExplodingDetectorFake())
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        # --detect-every 1: the detector on every frame, so its 5th call is the 5th frame
        main(["run", str(moving_face_clip), "--model", str(random_onnx), "--out", str(out), "--detect-every", "1"])
    assert exc.value.code == 1
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if "error" in line]
    assert len(errors) == 1 and "detector blew up" in errors[0]
    assert not any(p for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else True


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_cleanly_and_leaves_no_final_files(tmp_path, random_onnx, moving_face_clip, sig):
    import os
    import signal

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "emoengine", "run", str(moving_face_clip), "--model",
                             str(random_onnx), "--out", str(out), "--max-batch", "1"],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:   # wait until writing has started
        if out.exists() and any(out.iterdir()):
            break
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    t0 = time.time()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.time() - t0 < 10
    assert "Traceback" not in err and "interrupted" in err
    assert [p.name for p in out.iterdir()] == []


def test_folder_of_images_gives_rows_per_face_and_one_annotated_png_per_image(tmp_path, random_onnx):
    import cv2

    folder = tmp_path / "faces"
    folder.mkdir()
    for name, rgb in (("1_group.jpg", shipped_photo("t1.jpg")), ("2_single.png", shipped_photo("Tom_Hanks_54745.png")),
                      ("3_blank.png", np.full((200, 300, 3), 128, np.uint8))):
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not an image")
    (folder / "4_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    r = emoengine("run", str(folder), "--model", str(random_onnx), "--out", str(out), "--detector", "mtcnn")
    assert r.returncode == 0, r.stderr
    assert "skipping 4_broken.jpg" in r.stderr
    rows = read_rows(out / "predictions.csv")
    assert [sum(1 for x in rows if x["frame"] == str(i)) for i in range(4)] == [6, 1, 0, 0]
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["000000_1_group.png", "000001_2_single.png",
                                                                       "000002_3_blank.png"]
    assert read_rows(out / "images.csv") == [{"frame": "0", "file": "1_group.jpg"}, {"frame": "1", "file": "2_single.png"},
                                             {"frame": "2", "file": "3_blank.png"}, {"frame": "3", "file": "4_broken.jpg"}]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_inputs"] == ["4_broken.jpg"] and summary["frames"] == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_video_without_faces_still_yields_every_contract_file(tmp_path, random_onnx):
    clip = write_clip(tmp_path / "empty.mp4", (np.full((120, 160, 3), 40 + 10 * i, np.uint8) for i in range(10)))
    out = tmp_path / "out"
    r = emoengine("run", str(clip), "--model", str(random_onnx), "--out", str(out))
    assert r.returncode == 0, r.stderr
    for name in CONTRACT_VIDEO_FILES:
        assert (out / name).is_file(), name
    for video in ("annotated.mp4", "conv1.mp4", "emo_conv1.mp4"):
        assert count_frames(out / video) == 10, video
    assert read_rows(out / "predictions.csv") == []
    assert (out / "predictions.csv").read_text().splitlines()[0].startswith("frame,time_s,face_id,x1,y1,x2,y2")
    for video in ("conv1.mp4", "emo_conv1.mp4"):   # black where no face: every frame
        with av.open(str(out / video)) as c:
            assert max(int(f.to_ndarray(format="rgb24").max()) for f in c.decode(video=0)) <= 2, video
    s = json.loads((out / "summary.json").read_text())
    assert (s["frames"], s["frames_with_face"], s["faces"]) == (10, 0, 0)


OPEN_BY_WEIGHTS = """
import sys
from emoengine.engine.model.emonet_model import open_emonet
for weights in sys.argv[1:]:
    model = open_emonet("ort", weights=weights, max_batch=1)
    print(len(model.class_names), model.is_random)
    model.close()
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.slow   # over ~10 s on 2 cores (docs/development.md)
def test_a_cached_export_opens_without_importing_torch(tmp_path, golden_pth_8):
    """`--weights` exports once; later runs find that export by name and hash, and never pay PyTorch's ~200 MB
    resident (the memory budget of `emoengine demo`); random weights still say they are random."""
    import os

    env = {**os.environ, "EMOENGINE_MODELS": str(tmp_path / "models")}
    runs = [subprocess.run([sys.executable, "-c", OPEN_BY_WEIGHTS, "random", str(golden_pth_8)], capture_output=True,
                           text=True, env=env, timeout=600) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[:2] == ["8 True", "8 False"], r.stdout
        assert "RANDOM EmoNet weights" in r.stderr
    assert runs[0].stdout.splitlines()[-1] == "torch imported: True"    # the first run exported both
    assert runs[1].stdout.splitlines()[-1] == "torch imported: False", runs[1].stdout
    assert len(list((tmp_path / "models").glob("*.onnx"))) == 2
