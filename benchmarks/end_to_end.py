"""End to end: `emoengine run` on a generated 720p clip -> frames/s, per-stage busy seconds, overlap ratio.

    python -m emoengine.benchmarks.end_to_end --weights emonet_8.pth [--backend ort] [--frames 48] [--json FILE]

The clip is made from the photos that ship in insightface (engine.demo: a single face travelling and growing,
then a pan over a six-person photo) at 1280x720. The real console command runs it (decode -> detect -> crop ->
infer -> render threads); its summary.json gives the wall time and each stage's busy seconds. The overlap ratio
is the sum of stage busy seconds over the wall time: 1.0 means the stages ran one after another, more means they
worked at the same time (at most the 5 stages; on 2 cores about 2 at best).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from emoengine.benchmarks.bench import machine_facts, save_report, weights_label

SIZE_720P = (1280, 720)


def make_clip(path: Path, frames: int) -> Path:
    from emoengine.engine.demo import demo_frames, write_clip

    return write_clip(path, demo_frames(frames, SIZE_720P), fps=24.0)


def run_once(clip: Path, out: Path, weights: str, backend: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "emoengine", "run", str(clip), "--weights", weights, "--backend", backend,
           "--out", str(out), "--quiet", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"emoengine run failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    summary = json.loads((out / "summary.json").read_text())
    busy = summary["stages"]
    return {
        "backend": backend, "options": extra, "frames": summary["frames"], "faces": summary["faces"],
        "wall_s": summary["wall_s"], "frames_per_s": summary["frames_per_s"], "faces_per_s": summary["faces_per_s"],
        "stage_busy_s": busy, "queue_wait_s": summary["queue_wait_s"],
        "overlap_ratio": round(sum(busy.values()) / max(summary["wall_s"], 1e-9), 3),
        "bottleneck_stage": max(busy, key=busy.get),
    }


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="random")
    ap.add_argument("--backend", action="append", help="repeatable (default: ort)")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--no-video", action="store_true", help="pass --no-video to run (inference-side cost only)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    backends = args.backend or ["ort"]
    extra = ["--no-video"] if args.no_video else []
    started = datetime.now(timezone.utc)
    machine = machine_facts()
    rows = []
    with tempfile.TemporaryDirectory(prefix="emoengine-e2e-") as tmp:
        clip = make_clip(Path(tmp) / "clip720p.mp4", args.frames)
        for backend in backends:
            # once untimed, so export/quantisation and ORT's graph cache are not part of the figure
            run_once(clip, Path(tmp) / f"warm-{backend}", args.weights, backend, ["--no-video"])
            row = run_once(clip, Path(tmp) / f"out-{backend}", args.weights, backend, extra)
            rows.append(row)
            print(f"{backend}: {row['frames_per_s']:.2f} frames/s ({row['faces']} faces in {row['frames']} "
                  f"frames, {row['wall_s']:.1f} s), overlap {row['overlap_ratio']:.2f}, busy "
                  + ", ".join(f"{k} {v:.1f}s" for k, v in row["stage_busy_s"].items()), flush=True)
    report = {"machine": machine, "date": started.isoformat(timespec="seconds"),
              "config": {"weights": weights_label(args.weights),
                         "clip": f"engine.demo frames at {SIZE_720P[0]}x{SIZE_720P[1]}, {args.frames} frames, 24 fps",
                         "write_video": not args.no_video},
              "results": rows}
    return save_report(report, args.json, prefix="e2e-")


if __name__ == "__main__":
    main()
