"""End to end against the model alone: `emoengine run` on a 720p clip vs `emoengine bench`, in one sitting.

    python -m emoengine.benchmarks.end_to_end --weights emonet_8.pth [--clip FILE ...] [--frames 149] [--rounds 2]
    python -m emoengine.benchmarks.end_to_end --clip ../shared/media/demo.mp4      # the unseen clip as well

One round runs, one after the other, each as its own process: the model-only bench (`emoengine bench --backends
ort`, batches 1, 2, 4, 8 or --model-batches), then on every clip `run` with its defaults and every output,
`run --no-video --no-taps`, and `run --detect-every 1 --no-video --no-taps` (the reference boxes), then the
model-only bench again. Rounds repeat that sequence, so each e2e figure has model-only figures measured minutes
before and after it on the same machine; the ratio divides the e2e frames/s by the best model-only faces/s of the
whole sitting (the issue's "best model-only ort faces/s").

Per run: frames/s, the ratio, ms per frame of each stage (busy seconds / frames; the stages overlap), CPU
seconds per frame of the whole process (user + sys: less disturbed than wall time when others share the
machine; `process_cpu_ms_per_frame` the same over the pipeline's span only, start-up excluded, beside the
stages' own CPU), peak RSS (`/usr/bin/time -v` where installed, and summary.json's `peak_rss_mb`), detector and tracked
frames. Boxes: IoU of the default run's boxes against `--detect-every 1`'s, and frames where one finds a face
and the other does not. Clips: a generated 1280x720 face travelling and growing (engine.run.demo; --no-generated
leaves it out) and every --clip. The 1-min load average is recorded before and after every run: re-measure on a
quiet machine for README figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.benchmarks.bench import machine_facts, save_report, weights_label

SIZE_720P = (1280, 720)
MODEL_BATCHES = "1,2,4,8"
RUNS = {"default": [], "no_video": ["--no-video", "--no-taps"],
        "detect_every_1": ["--detect-every", "1", "--no-video", "--no-taps"]}


def load_1m() -> float:
    return round(os.getloadavg()[0], 2)


def make_clip(path: Path, frames: int) -> Path:
    """One face travelling left to right and growing from 220 to 380 px over a 1280x720 gradient, 24 fps."""
    from emoengine.engine.run.demo import single_face_frames, write_clip

    return write_clip(path, single_face_frames(frames, SIZE_720P, face_px=(220, 380)), fps=24.0)


def _timed(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `cmd` (under /usr/bin/time -v where installed); its peak RSS, CPU seconds and the load around it."""
    gnu_time = Path("/usr/bin/time").is_file()   # GNU time (apt-get install time); the shell's has no -v
    full = ["/usr/bin/time", "-v", *cmd] if gnu_time else cmd
    facts = {"load_1m_before": load_1m()}
    done = subprocess.run(full, capture_output=True, text=True, env=env)
    facts["load_1m_after"] = load_1m()
    if gnu_time:
        keys = ("Maximum resident", "User time", "System time")
        found = {k: m.group(1) for k in keys if (m := re.search(rf"{k}.*?: ([\d.]+)", done.stderr))}
        if len(found) == len(keys):
            facts["time_v_peak_rss_mb"] = round(int(found["Maximum resident"]) / 1024, 1)
            facts["cpu_s"] = round(float(found["User time"]) + float(found["System time"]), 2)
    return done, facts


def model_only(weights: str, batches: str, env: dict, out: Path) -> dict:
    """`emoengine bench --backends ort` at `batches` (1,2,4,8): {batch: faces/s}, its best, the load."""
    cmd = [sys.executable, "-m", "emoengine", "bench", "--weights", weights, "--backends", "ort",
           "--batch", batches, "--parity-inputs", "8", "--json", str(out)]
    done, facts = _timed(cmd, env)
    if done.returncode != 0:
        raise SystemExit(f"emoengine bench failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    rows = json.loads(out.read_text())["results"]
    by_batch = {r["batch"]: r["faces_per_s"] for r in rows if r["status"] == "measured"}
    return {"faces_per_s": by_batch, "best": max(by_batch.values()), **facts}


def run_e2e(clip: Path, model: Path, out: Path, extra: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "emoengine", "run", str(clip), "--model", str(model), "--out", str(out),
           "--quiet", *extra]
    done, facts = _timed(cmd, env)
    if done.returncode != 0:
        raise SystemExit(f"emoengine run failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    s = json.loads((out / "summary.json").read_text())
    frames = max(s["frames"], 1)
    return {
        "options": extra, "frames": s["frames"], "faces": s["faces"], "wall_s": s["wall_s"],
        "frames_per_s": s["frames_per_s"], "faces_per_s": s["faces_per_s"],
        "stage_ms_per_frame": {k: round(1000 * v / frames, 1) for k, v in s["stages"].items()},
        "stage_cpu_ms_per_frame": {k: round(1000 * v / frames, 1) for k, v in s.get("stages_cpu_s", {}).items()},
        "queue_wait_s": s["queue_wait_s"], "detect_frames": s.get("detect_frames"),
        "tracked_frames": s.get("tracked_frames"), "peak_rss_mb": s.get("peak_rss_mb"),
        "cpu_ms_per_frame": round(1000 * facts["cpu_s"] / frames, 1) if "cpu_s" in facts else None,
        # the pipeline's own span (summary.json process_cpu_s: every thread, start-up excluded), beside the stages'
        "process_cpu_s": s.get("process_cpu_s"),
        "process_cpu_ms_per_frame": round(1000 * s["process_cpu_s"] / frames, 1) if "process_cpu_s" in s else None,
        "options_used": s.get("options"), **facts,
    }


def read_boxes(csv_path: Path) -> dict[int, np.ndarray]:
    boxes: dict[int, list] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            boxes.setdefault(int(row["frame"]), []).append([float(row[k]) for k in ("x1", "y1", "x2", "y2")])
    return {k: np.array(v) for k, v in boxes.items()}


def compare_boxes(test: dict[int, np.ndarray], reference: dict[int, np.ndarray]) -> dict:
    """Each reference face's best IoU among the test boxes of its frame, and faces found by one run only."""
    from emoengine.engine.tracking.tracker import iou_matrix

    ious, missed = [], 0
    for frame, ref in reference.items():
        got = test.get(frame)
        best = iou_matrix(ref, got).max(axis=1) if got is not None and len(got) else np.zeros(len(ref))
        ious += best.tolist()
        missed += int((best < 0.3).sum())
    extra = sum(len(b) for f, b in test.items() if f not in reference)
    ious = np.asarray(ious) if ious else np.zeros(1)
    n = sum(len(b) for b in reference.values())
    return {"reference_faces": n, "iou_median": round(float(np.median(ious)), 4),
            "iou_min": round(float(ious.min()), 4), "iou_p5": round(float(np.percentile(ious, 5)), 4),
            "missed": missed, "missed_fraction": round(missed / max(n, 1), 4), "extra_frames_faces": extra}


def one_round(i: int, clips: dict[str, Path], model: Path, args, env: dict, tmp: Path) -> dict:
    """The model alone, each run on each clip, the model alone again."""
    row = {"model_only_before": model_only(args.weights, args.model_batches, env, tmp / f"bench-{i}a.json")}
    for label, clip in clips.items():
        runs = row[label] = {}
        for name, extra in RUNS.items():
            runs[name] = run_e2e(clip, model, tmp / f"{label}-{name}-{i}", extra, env)
            print(f"round {i} {label} {name}: {runs[name]['frames_per_s']:.2f} frames/s, stages ms/frame "
                  f"{runs[name]['stage_ms_per_frame']}, peak {runs[name].get('time_v_peak_rss_mb')} MB, "
                  f"load {runs[name]['load_1m_before']}", flush=True)
        runs["boxes_default_vs_detect_every_1"] = compare_boxes(
            read_boxes(tmp / f"{label}-default-{i}" / "predictions.csv"),
            read_boxes(tmp / f"{label}-detect_every_1-{i}" / "predictions.csv"))
        print(f"round {i} {label}: boxes {runs['boxes_default_vs_detect_every_1']}", flush=True)
    row["model_only_after"] = model_only(args.weights, args.model_batches, env, tmp / f"bench-{i}b.json")
    print(f"round {i}: model-only best {row['model_only_before']['best']:.2f} / "
          f"{row['model_only_after']['best']:.2f} faces/s", flush=True)
    return row


def summarise(rounds: list[dict], clips) -> dict:
    """The best figure of each kind per clip over the sitting, and the issue's two ratios."""
    best_model = max(r[k]["best"] for r in rounds for k in ("model_only_before", "model_only_after"))
    out: dict = {"model_only_best_faces_per_s": best_model}
    for label in clips:
        per_clip = out[label] = {}
        for name in RUNS:
            best = max((r[label][name] for r in rounds), key=lambda x: x["frames_per_s"])
            per_clip[name] = {
                "frames_per_s": best["frames_per_s"],
                "ratio_to_model_only": round(best["frames_per_s"] / best_model, 3),
                "stage_ms_per_frame": best["stage_ms_per_frame"], "cpu_ms_per_frame": best["cpu_ms_per_frame"],
                "process_cpu_ms_per_frame": best["process_cpu_ms_per_frame"],
                "stage_cpu_ms_per_frame": best["stage_cpu_ms_per_frame"],
                "peak_rss_mb": max(r[label][name].get("time_v_peak_rss_mb") or r[label][name]["peak_rss_mb"]
                                   for r in rounds)}
        per_clip["boxes_default_vs_detect_every_1"] = [r[label]["boxes_default_vs_detect_every_1"] for r in rounds]
        per_clip["targets"] = {"default_ratio_0.8": per_clip["default"]["ratio_to_model_only"] >= 0.8,
                               "no_video_ratio_0.9": per_clip["no_video"]["ratio_to_model_only"] >= 0.9}
    return out


def export_model(weights: str, folder: Path, env: dict) -> Path:
    out = folder / "emonet.onnx"
    done = subprocess.run([sys.executable, "-m", "emoengine", "export", "--weights", weights, "--output", str(out)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"emoengine export failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--weights", default="random")
    ap.add_argument("--clip", type=Path, action="append", default=[],
                    help="a video to run on as well (repeatable), e.g. ../shared/media/demo.mp4")
    ap.add_argument("--no-generated", action="store_true", help="only the --clip videos, no generated 720p clip")
    ap.add_argument("--frames", type=int, default=149, help="length of the generated clip")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model-batches", default=MODEL_BATCHES, help="batches of the model-only bench")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.no_generated and not args.clip:
        ap.error("--no-generated needs at least one --clip")
    return args


def clip_labels(args, tmp: Path) -> dict[str, Path]:
    """{label: video}: the generated clip (`generated_720p`) unless --no-generated, then each --clip by stem."""
    clips = {} if args.no_generated else {"generated_720p": make_clip(tmp / "clip720p.mp4", args.frames)}
    for path in args.clip:
        label = path.stem
        while label in clips:
            label += "_"
        clips[label] = path
    return clips


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    machine = machine_facts()
    with tempfile.TemporaryDirectory(prefix="emoengine-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "EMOENGINE_MODELS": str(tmp / "models")}
        clips = clip_labels(args, tmp)
        model = export_model(args.weights, tmp, env)
        run_e2e(next(iter(clips.values())), model, tmp / "warm", ["--no-video"], env)   # untimed: first-use costs
        t0 = time.perf_counter()
        rounds = [one_round(i, clips, model, args, env, tmp) for i in range(args.rounds)]
    generated = f"engine.run.demo single face, {SIZE_720P[0]}x{SIZE_720P[1]}, {args.frames} frames, 24 fps"
    report = {"machine": machine, "date": started.isoformat(timespec="seconds"),
              "duration_s": round(time.perf_counter() - t0, 1),
              "config": {"weights": weights_label(args.weights),
                         "model_only": f"emoengine bench --backends ort --batch {args.model_batches}",
                         "clips": {k: generated if k == "generated_720p" else str(v) for k, v in clips.items()},
                         "runs": {k: ["run", "--model", "M", *v] for k, v in RUNS.items()}},
              "summary": summarise(rounds, clips), "rounds": rounds}
    print(json.dumps(report["summary"], indent=1))
    return save_report(report, args.json, prefix="e2e-")


if __name__ == "__main__":
    main()
