"""report.html and a batch's index.html, built from run folders written here (no browser: see
test_report_browser.py). Long runs are SYNTHETIC: predictions.csv and summary.json written directly in the
format `run` writes, so an hour of video needs no hour of EmoNet."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from emoengine.contract import CLASS_NAMES_8
from emoengine.engine.outputs.report import build_report
from emoengine.engine.outputs.report.rundata import TIMELINE_BUCKETS, RunFiles, run_taps, timeline_data
from emoengine.engine.outputs.run_outputs import RunOutputs
from emoengine.engine.outputs.schema import predictions_header
from emoengine.engine.run.records import FrameRecord

SIZE_LIMIT = 3 * 1024 * 1024


def synthetic_run(folder: Path, frames: int, faces: int, fps: float = 25.0, seed: int = 0, **summary) -> Path:
    """A SYNTHETIC finished run: predictions.csv (random-walk expressions, valence, arousal for `faces` faces
    seen in every frame), summary.json, and the default taps' files as tiny placeholders."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    logits = np.cumsum(rng.normal(0, 0.15, (frames, faces, 8)), axis=0)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    va = np.clip(np.cumsum(rng.normal(0, 0.02, (frames, faces, 2)), axis=0), -1, 1)
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(predictions_header(CLASS_NAMES_8))
        for i in range(frames):
            for k in range(faces):
                p = probs[i, k]
                w.writerow([i, f"{i / fps:.4f}", k, "10.0", "20.0", "110.0", "140.0", "0.9990",
                            CLASS_NAMES_8[int(p.argmax())], *(f"{x:.5f}" for x in p),
                            f"{va[i, k, 0]:.5f}", f"{va[i, k, 1]:.5f}"])
    files = ["annotated.mp4", "conv1.mp4", "conv1_mean.png", "emo_conv1.mp4", "emo_conv1_mean.png",
             "predictions.csv", "report.html", "summary.json"]
    for name in files[:5]:
        (folder / name).write_bytes(b"synthetic placeholder")
    s = {"input": f"/data/synthetic {frames} frames.mp4", "input_kind": "video", "fps": fps, "frames": frames,
         "frames_with_face": frames, "faces": frames * faces, "backend": "ort", "detector": "mtcnn",
         "classes": list(CLASS_NAMES_8), "random_weights": False, "weights": "models/emonet_8.pth",
         "weights_sha256": "ab" * 32, "wall_s": 100.0, "stages": {"decode": 1.0, "infer": 90.0},
         "queue_wait_s": {"decode": {"in": 0.0, "out": 2.0}}, "frames_per_s": frames / 100.0,
         "faces_per_s": frames * faces / 100.0, "files": files, **summary}
    (folder / "summary.json").write_text(json.dumps(s))
    return folder


def report_data(page: str) -> dict:
    start = page.index('<script type="application/json" id="report-data">') + len(
        '<script type="application/json" id="report-data">')
    return json.loads(page[start:page.index("</script>", start)])


@pytest.mark.parametrize("faces", [1, 3])
def test_a_synthetic_one_hour_run_gives_a_report_under_3_mb(tmp_path, faces):
    folder = synthetic_run(tmp_path / "hour", frames=25 * 3600, faces=faces)
    t0 = time.perf_counter()
    path = build_report(folder)
    took = time.perf_counter() - t0
    size = path.stat().st_size
    print(f"\nsynthetic hour, {faces} face(s): report.html {size / 1e6:.2f} MB, built in {took:.2f} s")
    assert size < SIZE_LIMIT
    page = path.read_text()
    data = report_data(page)
    timeline = data["timeline"]
    assert len(timeline["faces"]) == faces
    assert sum(len(f["t"]) for f in timeline["faces"]) <= TIMELINE_BUCKETS
    assert timeline["bucket_frames"] > 1 and "each point is the mean of" in page   # decimated, and says so
    assert data["duration"] == pytest.approx(3600.0)


def test_decimated_points_are_the_means_and_ranges_of_their_frames(tmp_path):
    folder = synthetic_run(tmp_path / "run", frames=600, faces=2)
    run = RunFiles.load(folder)
    pred = run.predictions
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("emoengine.engine.outputs.report.rundata.TIMELINE_BUCKETS", 100)   # 1200 face-frames → 12 a point
        data = timeline_data(pred, fps=25.0)
    assert data["bucket_frames"] == 12
    face = data["faces"][1]
    rows = pred.rows_of(1)[:12]
    assert len(face["t"]) == 50
    assert face["t"][0] == round(1000 * pred.time_s[rows].mean())
    assert face["v"][0] == round(1000 * pred.valence[rows].mean())
    assert (face["vmin"][0], face["vmax"][0]) == (round(1000 * pred.valence[rows].min()),
                                                  round(1000 * pred.valence[rows].max()))
    assert [p[0] for p in face["p"]] == [round(1000 * x) for x in pred.probs[rows].mean(axis=0)]
    assert sum(face["t"]) == round(1000 * pred.time_s[pred.rows_of(1)][-12:].mean())   # delta-encoded


def test_taps_come_from_the_agreed_summary_list(tmp_path):
    folder = synthetic_run(tmp_path / "run", frames=10, faces=1)
    (folder / "layer 2#b.mp4").write_bytes(b"synthetic")
    taps = [{"name": "conv1", "stem": "conv1", "kind": "map", "video": "conv1.mp4", "mean": "conv1_mean.png"},
            {"name": "emo_net_2.2.conv3", "stem": "layer 2#b", "kind": "map", "video": "layer 2#b.mp4",
             "mean": None},
            {"name": "fc", "stem": "fc", "kind": "vector", "video": None, "mean": None}]
    summary = {**json.loads((folder / "summary.json").read_text()), "taps": taps}
    found = run_taps(folder, summary)
    assert [(t.name, t.video, t.mean) for t in found] == [("conv1", "conv1.mp4", "conv1_mean.png"),
                                                          ("emo_net_2.2.conv3", "layer 2#b.mp4", None)]
    (folder / "summary.json").write_text(json.dumps(summary))
    page = build_report(folder).read_text()
    assert 'src="layer%202%23b.mp4"' in page and "emo_conv1.mp4" not in page.split('id="files"')[0]


def test_without_a_taps_list_the_default_taps_are_found_among_the_files(tmp_path):
    folder = synthetic_run(tmp_path / "run", frames=10, faces=1)
    summary = json.loads((folder / "summary.json").read_text())
    assert "taps" not in summary
    found = run_taps(folder, summary)
    assert [(t.name, t.stem, t.video, t.mean) for t in found] == [
        ("conv1", "conv1", "conv1.mp4", "conv1_mean.png"),
        ("emo_net_2.0.conv1", "emo_conv1", "emo_conv1.mp4", "emo_conv1_mean.png")]
    (folder / "emo_conv1.mp4").unlink()   # listed but gone: never linked
    assert [t.video for t in run_taps(folder, summary)] == ["conv1.mp4", None]


def test_every_link_is_relative_escaped_and_resolves(tmp_path, page_links):
    folder = synthetic_run(tmp_path / "a run #1?", frames=50, faces=2)
    page = build_report(folder).read_text()
    links = page_links(page)
    assert {"annotated.mp4", "conv1.mp4", "emo_conv1.mp4", "conv1_mean.png", "emo_conv1_mean.png",
            "predictions.csv", "summary.json"} <= set(links)
    for link in links:
        assert "://" not in link and not link.startswith("/"), link
        assert (folder / unquote(link)).is_file(), link
    assert "http" not in page.replace("http-equiv", "")   # nothing fetched, no CDN


def test_random_weights_raise_a_banner(tmp_path):
    calm = build_report(synthetic_run(tmp_path / "real", frames=10, faces=1)).read_text()
    loud = build_report(synthetic_run(tmp_path / "random", frames=10, faces=1, random_weights=True)).read_text()
    assert 'class="banner-random"' not in calm and 'class="banner-random"' in loud and "RANDOM WEIGHTS" in loud


def test_faces_table_and_facts(tmp_path):
    page = build_report(synthetic_run(tmp_path / "run", frames=100, faces=2)).read_text()
    assert page.count("<tr><td>0</td><td>100</td>") == 1 and page.count("<tr><td>1</td><td>100</td>") == 1
    for fact in ("models/emonet_8.pth", "ab" * 32, "mtcnn", "1.00 frames/s", "infer"):
        assert fact in page, fact


def test_an_image_folder_gives_a_gallery_with_each_images_predictions(tmp_path, page_links):
    folder = synthetic_run(tmp_path / "images", frames=3, faces=2, input_kind="images")
    (folder / "annotated").mkdir()
    for i, name in enumerate(["a b.jpg", "c.png", "d.jpg"]):
        (folder / "annotated" / f"{i:06d}_{Path(name).stem}.png").write_bytes(b"synthetic")
    with open(folder / "images.csv", "w", newline="") as f:
        f.write("frame,file\n0,a b.jpg\n1,c.png\n2,d.jpg\n")
    page = build_report(folder).read_text()
    assert 'id="gallery"' in page and 'id="timeline"' not in page and "<video" not in page
    assert page.count('<figure class="still">') == 3 and "a b.jpg" in page
    assert "annotated/000000_a%20b.png" in page_links(page)
    assert page.count('<table class="mini">') == 3   # two faces in each image


def test_run_outputs_commit_writes_the_report_and_no_report_removes_a_stale_one(tmp_path):
    def run(report: bool) -> list[str]:
        outputs = RunOutputs(tmp_path, CLASS_NAMES_8, fps=10, still=False, taps=False, report=report)
        for i in range(3):
            outputs.write(FrameRecord(i, i / 10, np.full((48, 64, 3), 60, np.uint8)))
        outputs.commit({"input": "synthetic", "input_kind": "video", "fps": 10, "frames": 3})
        return json.loads((tmp_path / "summary.json").read_text())["files"]

    assert "report.html" in run(report=True) and (tmp_path / "report.html").is_file()
    assert "No face was found" in (tmp_path / "report.html").read_text()
    assert "report.html" not in run(report=False) and not (tmp_path / "report.html").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_run_without_videos_still_gets_its_timeline(tmp_path, page_links):
    folder = synthetic_run(tmp_path / "run", frames=40, faces=1)
    summary = json.loads((folder / "summary.json").read_text())
    summary["files"] = ["predictions.csv", "summary.json"]   # `run --no-video`: no page; `emoengine report` makes one
    for name in ("annotated.mp4", "conv1.mp4", "emo_conv1.mp4", "conv1_mean.png", "emo_conv1_mean.png"):
        (folder / name).unlink()
    (folder / "summary.json").write_text(json.dumps(summary))
    page = build_report(folder).read_text()
    assert "<video" not in page and 'id="player"' not in page and 'id="means"' not in page
    assert 'class="lane"' in page and set(page_links(page)) == {"predictions.csv", "summary.json"}


def test_no_report_reaches_the_run_config():
    from emoengine.settings import RunSettings

    def resolve(**options):
        return RunSettings(weights="random", max_batch=32, quiet=True, **options).resolve("clip.mp4", Path("out"))

    assert resolve().report is True
    cfg = resolve(no_report=True)
    assert cfg.report is False and cfg.weights == "random"
    assert resolve(no_video=True).writes_report is False   # CSV and summary.json only


def test_report_command_rebuilds_and_refuses_a_folder_without_a_summary(tmp_path):
    folder = synthetic_run(tmp_path / "old run", frames=20, faces=1)
    (folder / "report.html").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "emoengine", "report"]
    r = subprocess.run([*cmd, str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (folder / "report.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([*cmd, str(empty)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no summary.json" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not any(empty.iterdir())


def test_batch_index_links_each_report_and_lists_failures(tmp_path, page_links):
    pq = pytest.importorskip("pyarrow.parquet", reason="the batch index reads predictions.parquet (pyarrow)")
    from emoengine.engine.batch.videos import write_predictions_parquet
    from emoengine.engine.outputs.report.index import write_batch_index

    out = tmp_path / "batch"
    for name, seed in (("clip a", 1), ("clip_b", 2)):
        build_report(synthetic_run(out / name, frames=30, faces=1, seed=seed))
    write_predictions_parquet(out, ["clip a", "clip_b"])
    rows = [{"video": "clip a", "status": "done", "frames": 30, "faces": 30, "wall_s": 1.0, "reason": ""},
            {"video": "clip_b", "status": "skipped", "frames": 30, "faces": 30, "wall_s": 1.0,
             "reason": "outputs complete from an earlier run"},
            {"video": "broken", "status": "failed", "frames": 0, "faces": 0, "wall_s": 0.1,
             "reason": "not a video: broken.mp4 <moov atom not found>"}]
    (out / "batch_summary.json").write_text(json.dumps({"videos": rows, "inputs": 3, "done": 1, "skipped": 1,
                                                        "failed": 1, "faces": 60, "wall_s": 3.0}))
    page = write_batch_index(out).read_text()
    assert {"clip%20a/report.html", "clip_b/report.html", "batch_summary.json", "predictions.parquet"} \
        == set(page_links(page))
    assert "&lt;moov atom not found&gt;" in page and 'class="status-failed"' in page
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    top = max(set(r["expression"] for r in table if r["video"] == "clip a"),
              key=lambda e: sum(r["expression"] == e and r["video"] == "clip a" for r in table))
    assert f"<td>{top} (" in page
    r = subprocess.run([sys.executable, "-m", "emoengine", "report", str(out)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "index.html" in r.stderr, r.stderr
