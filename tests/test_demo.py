"""`emoengine demo` offline: a clip from photos in insightface's wheel, the whole pipeline, every file."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import av
import pytest


@pytest.mark.slow   # over ~10 s on 2 cores (docs/development.md)
def test_demo_writes_every_contract_file_offline(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, EMOENGINE_MODELS=str(tmp_path / "models"))
    r = subprocess.run([sys.executable, "-m", "emoengine", "demo", "--out", str(out), "--frames", "12"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "random" in r.stderr.lower(), "random weights must be announced"
    for name in ("demo_input.mp4", "predictions.csv", "annotated.mp4", "conv1.mp4", "emo_conv1.mp4",
                 "conv1_mean.png", "emo_conv1_mean.png", "timeline.png", "summary.json", "report.html"):
        assert (out / name).is_file(), name
    with av.open(str(out / "conv1.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 12
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    faces_per_frame = {}
    for row in rows:
        faces_per_frame[int(row["frame"])] = faces_per_frame.get(int(row["frame"]), 0) + 1
    assert faces_per_frame.get(0) == 1, "the single-face half"
    assert max(faces_per_frame.values()) == 6, "the group-photo half shows six people"
