"""`emoengine batch` on a real local Ray (2 CPUs, started once for the module): three short generated clips with a
real face (real MTCNN, real ONNX Runtime EmoNet with random weights) and one corrupt file.

One batch runs with a test-only worker (`dying_worker`) that kills the first worker process on its first item, so
the retry is part of every assertion below; a direct `run` of each clip is the reference for the per-video outputs.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install \"emoengine[cluster]\")")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install \"emoengine[cluster]\")")

from emoengine.cli.main import main
from emoengine.engine.batch import ray_driver as ray_batch
from emoengine.engine.batch.videos import VideoWorker
from emoengine.engine.run.demo import single_face_frames, write_clip

CLIP_FRAMES = {"clip_a": 8, "clip_b": 12, "clip_c": 16}
RUN_FILES = ("predictions.csv", "annotated.mp4", "conv1.mp4", "emo_conv1.mp4", "conv1_mean.png",
             "emo_conv1_mean.png", "timeline.png", "summary.json", "report.html")


def cli(*args: str) -> int:
    """The real entry point, in this process (so the batch joins the module's Ray instead of starting one)."""
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("batch_media")
    clips = root / "clips"
    clips.mkdir()
    for name, n in CLIP_FRAMES.items():
        write_clip(clips / f"{name}.mp4", single_face_frames(n, size=(160, 120), face_px=(50, 80)), fps=24)
    (clips / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)   # not a video
    listing = root / "videos.txt"   # INPUTS as a text file of paths; clips first, so the hook kills on a clip
    listing.write_text("".join(f"clips/{name}.mp4\n" for name in CLIP_FRAMES) + "clips/broken.mp4\n")
    onnx = root / "emonet8-random.onnx"
    assert cli("export", "--weights", "random", "--output", str(onnx)) == 0
    return {"root": root, "clips": clips, "list": listing, "onnx": onnx}


@pytest.fixture(scope="module")
def direct_runs(media) -> dict[str, Path]:
    """What `emoengine run` writes for each clip: the reference."""
    outs = {}
    for name in CLIP_FRAMES:
        out = media["root"] / "direct" / name
        assert cli("run", str(media["clips"] / f"{name}.mp4"), "--model", str(media["onnx"]), "--out", str(out),
                   "-q") == 0
        outs[name] = out
    return outs


def dying_worker(marker: Path) -> type:
    """A VideoWorker whose process kills itself on the first item any worker takes (creating `marker` first), so
    the batch must restart a real Ray actor and rerun that video. Defined in a function: Ray ships the class by
    value to its worker processes, which cannot import this test module."""

    class DyingWorker(VideoWorker):
        def process(self, item):
            if not os.path.exists(marker):
                Path(marker).write_text(f"{item.name}\n")
                os._exit(17)
            return super().process(item)

    return DyingWorker


@pytest.fixture(scope="module")
def batch_run(local_ray, media) -> dict:
    out = media["root"] / "batch"
    marker = media["root"] / "worker-died-once"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray_batch, "VideoWorker", dying_worker(marker))
        rc = cli("batch", str(media["list"]), "--model", str(media["onnx"]), "--out", str(out), "--workers", "2",
                 "--retries", "2")
    return {"rc": rc, "out": out, "marker": marker,
            "summary": json.loads((out / "batch_summary.json").read_text())}


def by_video(summary: dict) -> dict[str, dict]:
    return {v["video"]: v for v in summary["videos"]}


def test_a_killed_worker_is_retried_and_the_corrupt_file_is_the_only_failure(batch_run):
    assert batch_run["marker"].is_file(), "the test hook never killed a worker"
    assert batch_run["marker"].read_text().strip() in CLIP_FRAMES   # a clip was lost once, and redone in full
    videos = by_video(batch_run["summary"])
    assert set(videos) == {*CLIP_FRAMES, "broken"}
    for name, n in CLIP_FRAMES.items():
        assert videos[name]["status"] == "done", videos[name]
        assert videos[name]["frames"] == n and videos[name]["faces"] == n   # one face per frame
        assert videos[name]["wall_s"] > 0
    broken = videos["broken"]
    assert broken["status"] == "failed" and broken["kind"] == "input"
    assert broken["reason"] and "\n" not in broken["reason"] and "broken.mp4" in broken["reason"]
    s = batch_run["summary"]
    assert (s["done"], s["failed"], s["skipped"]) == (3, 1, 0)
    assert s["faces"] == sum(CLIP_FRAMES.values()) and s["faces_per_s"] > 0 and s["videos_per_min"] > 0
    assert batch_run["rc"] == 1   # the batch finished, and says that a video failed


def test_per_video_outputs_are_what_run_writes(batch_run, direct_runs):
    for name, ref in direct_runs.items():
        got = batch_run["out"] / name
        assert sorted(p.name for p in got.iterdir()) == sorted(RUN_FILES), name   # no temporaries left
        assert (got / "predictions.csv").read_bytes() == (ref / "predictions.csv").read_bytes(), name
        a, b = (json.loads((d / "summary.json").read_text()) for d in (got, ref))
        for key in ("frames", "frames_with_face", "faces", "backend", "detector", "files"):
            assert a[key] == b[key], (name, key)
    assert not (batch_run["out"] / "broken").exists() or not any((batch_run["out"] / "broken").iterdir())


def test_index_links_each_videos_report_and_gives_the_failure_reason(batch_run, page_links):
    page = (batch_run["out"] / "index.html").read_text()
    links = page_links(page)
    for name in CLIP_FRAMES:
        assert f"{name}/report.html" in links and (batch_run["out"] / name / "report.html").is_file()
    reason = by_video(batch_run["summary"])["broken"]["reason"]
    assert html.escape(reason) in page and "broken/report.html" not in links
    assert not [p for p in batch_run["out"].iterdir() if p.name.startswith(".")]


def test_parquet_holds_every_row_with_its_video(batch_run, direct_runs):
    import csv

    table = pq.read_table(batch_run["out"] / "predictions.parquet")
    assert table.column_names[0] == "video"
    rows = table.to_pylist()
    for name, ref in direct_runs.items():
        with open(ref / "predictions.csv", newline="") as f:
            expected = list(csv.DictReader(f))
        got = [r for r in rows if r["video"] == name]
        assert len(got) == len(expected) == CLIP_FRAMES[name]
        for g, e in zip(got, expected, strict=True):
            assert g["frame"] == int(e["frame"]) and g["face_id"] == int(e["face_id"])
            assert g["expression"] == e["expression"]
            assert g["valence"] == pytest.approx(float(e["valence"]), abs=1e-9)
            assert g["x1"] == pytest.approx(float(e["x1"]), abs=1e-9)
    assert len(rows) == sum(CLIP_FRAMES.values())


def test_a_second_invocation_does_nothing_new(batch_run, media):
    out = batch_run["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.parent != out}
    rc = cli("batch", str(media["clips"]), "--model", str(media["onnx"]), "--out", str(out), "--workers", "2")
    # (the folder names the same four videos as the list did)
    assert rc == 1   # the corrupt file is still reported
    s = json.loads((out / "batch_summary.json").read_text())
    assert (s["done"], s["skipped"], s["failed"]) == (0, 3, 1)
    assert s["ray"]["address"] is None   # nothing to run: no Ray work at all
    assert by_video(s)["broken"]["reason"] == by_video(batch_run["summary"])["broken"]["reason"]
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.parent != out}
    assert after == before
    assert pq.read_table(out / "predictions.parquet").num_rows == sum(CLIP_FRAMES.values())

