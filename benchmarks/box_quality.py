"""Nothing lost: the default run's boxes (a detector every N frames, optical flow between) against the detector
on every frame, from the two runs' predictions.csv.

    python -m emoengine.benchmarks.box_quality [--clip FILE ...] [--no-generated] [--json FILE]

On each clip (default: ../shared/media/demo.mp4 where it exists, end_to_end's generated 720p face travelling and
growing, and the six faces of t1.jpg panning and zooming at 720p; plus any --clip) `emoengine run` twice with
the stand-in model (benchmarks/standin_model.py: boxes do not depend on the model, and it is fast), `--no-video
--no-taps` with the defaults and with `--detect-every 1`. Per clip: each per-frame face's best IoU among the
default run's boxes of its frame (median, 5th percentile, min), the frames where per-frame detection finds a face
and the default run has none (presence), and the ids the default run gave. Pass: median IoU >= 0.9, min >= 0.7,
frames without a face <= 1 % (issue 20's "nothing lost"); the IoUs judged on the faces per-frame detection sees
on more than one frame running (a one-frame flicker, e.g. a hand scored 0.92 on the six-face pan, is nothing the
tracker lost; they are counted, and the IoUs over every face are reported beside).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.benchmarks.bench import machine_facts, save_report
from emoengine.benchmarks.end_to_end import load_1m, make_clip
from emoengine.benchmarks.pipeline_capacity import child_env, run_once
from emoengine.benchmarks.shared_data import shared_path
from emoengine.benchmarks.standin_model import write_standin

DEMO = shared_path("media", "demo.mp4")
THRESHOLDS = {"iou_median": 0.9, "iou_min": 0.7, "frames_without_face_fraction": 0.01}
RUNS = {"default": ["--no-video", "--no-taps"], "detect_every_1": ["--detect-every", "1", "--no-video", "--no-taps"]}


def read_faces(csv_path: Path) -> dict[int, tuple[np.ndarray, list[int]]]:
    """frame -> ((K, 4) boxes, [face ids]) from a predictions.csv."""
    rows: dict[int, tuple[list, list]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            boxes, ids = rows.setdefault(int(row["frame"]), ([], []))
            boxes.append([float(row[k]) for k in ("x1", "y1", "x2", "y2")])
            ids.append(int(row["face_id"]))
    return {k: (np.array(b, np.float64), i) for k, (b, i) in rows.items()}


def one_frame_faces(reference: dict) -> dict[int, np.ndarray]:
    """frame -> mask of its reference faces that per-frame detection itself sees on that frame only (no box
    with IoU >= 0.3 on the frame before or after): its flickers, e.g. a hand at 0.92 for one frame."""
    from emoengine.engine.tracking.tracker import iou_matrix

    out = {}
    for frame, (ref, _) in reference.items():
        seen = np.zeros(len(ref), bool)
        for near in (frame - 1, frame + 1):
            if near in reference and len(reference[near][0]):
                seen |= iou_matrix(ref, reference[near][0]).max(axis=1) >= 0.3
        out[frame] = ~seen
    return out


def _iou_figures(a: np.ndarray, suffix: str = "") -> dict:
    a = a if len(a) else np.ones(1)
    return {f"iou_median{suffix}": round(float(np.median(a)), 4), f"iou_p5{suffix}": round(float(np.percentile(a, 5)), 4),
            f"iou_min{suffix}": round(float(a.min()), 4)}


def box_quality(test: dict, reference: dict) -> dict:
    """Each reference face's best IoU in the test run's frame; reference frames with a face the test lacks.
    The thresholds are judged on the reference's persistent faces (one_frame_faces left out, and counted)."""
    from emoengine.engine.tracking.tracker import iou_matrix

    flicker = one_frame_faces(reference)
    ious, persistent, empty = [], [], []
    for frame, (ref, _) in sorted(reference.items()):
        got = test.get(frame)
        if got is None or not len(got[0]):
            empty.append(frame)
        best = iou_matrix(ref, got[0]).max(axis=1) if got is not None and len(got[0]) else np.zeros(len(ref))
        ious += best.tolist()
        persistent += best[~flicker[frame]].tolist()
    out = {"reference_frames_with_face": len(reference), "reference_faces": len(ious),
           "reference_one_frame_faces": int(sum(m.sum() for m in flicker.values())),
           **_iou_figures(np.asarray(ious)), **_iou_figures(np.asarray(persistent), "_persistent"),
           "faces_under_iou_0.5": int((np.asarray(ious) < 0.5).sum()),
           "frames_without_face": len(empty), "frames_without_face_list": empty[:20],
           "frames_without_face_fraction": round(len(empty) / max(len(reference), 1), 4),
           "extra_frames_with_face": len(set(test) - set(reference)),
           "ids_default": sorted({i for _, ids in test.values() for i in ids})}
    out["passes"] = (out["iou_median_persistent"] >= THRESHOLDS["iou_median"]
                     and out["iou_min_persistent"] >= THRESHOLDS["iou_min"]
                     and out["frames_without_face_fraction"] <= THRESHOLDS["frames_without_face_fraction"])
    return out


def clip_quality(clip: Path, model: Path, env: dict, out: Path) -> dict:
    """Both runs on `clip`; their boxes compared, with each run's figures beside."""
    runs = {name: run_once(clip, ["--model", str(model)], out / name, extra, env) for name, extra in RUNS.items()}
    faces = {name: read_faces(out / name / "predictions.csv") for name in RUNS}
    row = box_quality(faces["default"], faces["detect_every_1"])
    row["runs"] = {name: {k: r.get(k) for k in ("frames", "frames_per_s", "detect_frames", "peak_rss_mb",
                                                 "load_1m_before")} for name, r in runs.items()}
    return row


def generated_clips(tmp: Path) -> dict[str, Path]:
    from emoengine.engine.run.demo import group_in_view_frames, write_clip

    return {"generated_720p": make_clip(tmp / "clip720p.mp4", 149),
            "six_faces_720p": write_clip(tmp / "six.mp4", group_in_view_frames(96, (1280, 720)), fps=24.0)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--clip", type=Path, action="append", default=[], help="a video to check as well (repeatable)")
    ap.add_argument("--no-generated", action="store_true", help="only demo.mp4 and the --clip videos")
    ap.add_argument("--json", type=Path, help="where the results go (default benchmarks/results/...)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="emoengine-boxes-") as tmp_name:
        tmp = Path(tmp_name)
        env, model = child_env(tmp), write_standin(tmp / "standin.onnx")
        clips = {"demo_mp4": DEMO} if DEMO.is_file() else {}
        clips.update({p.stem: p for p in args.clip})
        if not args.no_generated:
            clips.update(generated_clips(tmp))
        results = {}
        for label, clip in clips.items():
            results[label] = clip_quality(clip, model, env, tmp / label)
            print(f"{label}: {json.dumps({k: v for k, v in results[label].items() if k != 'runs'})} "
                  f"(load {load_1m()})", flush=True)
    report = {"machine": machine_facts(), "date": started.isoformat(timespec="seconds"),
              "config": {"model": "stand-in (benchmarks/standin_model.py)", "runs": RUNS, "thresholds": THRESHOLDS,
                         "clips": {k: str(v) if k in ("demo_mp4", *(p.stem for p in args.clip)) else "generated"
                                   for k, v in clips.items()}, "cores": len(os.sched_getaffinity(0))},
              "results": results, "passes": all(r["passes"] for r in results.values())}
    return save_report(report, args.json, prefix="box-quality-")


if __name__ == "__main__":
    main()
