"""A long run keeps memory flat: one hour of stream (at 4 frames/s: 14,400 small frames) through the real
`emoengine run` process, a face every 400 frames, RSS sampled from outside.

The full-rate figure (90,000 frames = 1 h at 25 fps) is in benchmarks/results/long-stream-rss-*.json, made by
`python -m emoengine.benchmarks.long_stream`; this test is its short form, sized for the suite.
"""

from __future__ import annotations

import json
import os
import statistics

import pytest

from emoengine.benchmarks.long_stream import make_stream, run_and_sample

FRAMES, FPS = 14_400, 4   # one hour of video


@pytest.mark.slow
def test_an_hour_of_stream_runs_with_flat_memory(tmp_path, golden_pth_8):
    stream = make_stream(tmp_path / "hour.ts", FRAMES, fps=FPS, face_every=400)
    out = tmp_path / "out"
    result = run_and_sample(["run", stream.resolve().as_uri(), "--weights", str(golden_pth_8), "--backend", "torch",
                             "--out", str(out), "--no-taps", "-q"], env=dict(os.environ))
    assert result["rc"] == 0 and result["stderr"] == "", result["stderr"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == FRAMES and summary["input_kind"] == "stream"
    assert summary["frames_with_face"] >= FRAMES // 400 - 2
    trace = result["rss_trace_mib"]
    assert result["samples"] >= 20, result
    # warm-up (model, encoders, allocator arenas) takes the first part; after it the level must hold
    warm = trace[len(trace) * 3 // 10:]
    base = statistics.median(warm[: max(1, len(warm) // 3)])
    print(f"RSS MiB over {FRAMES} frames: first {result['rss_mib']['first']}, warm {base:.0f}, "
          f"peak {max(warm):.0f}, end {result['rss_mib']['end']}")
    assert max(warm) - base < 64, f"RSS grew from {base:.0f} to {max(warm):.0f} MiB: {trace}"
    assert result["rss_mib"]["end"] - base < 64, trace
