"""`run --resume` skips only a complete earlier run of the same input, settings and model."""

from __future__ import annotations

import json
import os

import cv2
import pytest

from emoengine.engine.run.demo import shipped_photo

pytestmark = pytest.mark.slow


def test_resume_skips_a_complete_run_and_reruns_on_any_change(tmp_path, cli, golden_pth_8):
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.cvtColor(shipped_photo("Tom_Hanks_54745.png"), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    base = ["run", str(photo), "--weights", str(golden_pth_8), "--backend", "torch", "--detector", "none",
            "--out", str(out), "--resume"]

    def run(*extra):
        r = cli(*base, *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r, json.loads((out / "summary.json").read_text()), (out / "summary.json").stat().st_mtime_ns

    r1, s1, t1 = run()
    assert "skipped" not in r1.stderr and len(s1["fingerprint"]) == 64
    r2, s2, t2 = run()
    assert "already holds the complete outputs" in r2.stderr and t2 == t1      # nothing rewritten
    r3, s3, t3 = run("--smooth", "0.5")                                       # other settings: runs again
    assert "skipped" not in r3.stderr and s3["fingerprint"] != s1["fingerprint"]
    os.utime(photo, ns=(t3 + 10**9, t3 + 10**9))                               # the input changed
    r4, s4, _ = run("--smooth", "0.5")
    assert "skipped" not in r4.stderr and s4["fingerprint"] != s3["fingerprint"]
    (out / "annotated.png").unlink()                                          # incomplete outputs: runs again
    r5, _, _ = run("--smooth", "0.5")
    assert "skipped" not in r5.stderr and (out / "annotated.png").is_file()
