"""How often to detect and how small a face to look for: the measurements behind --detect-every and --min-face.

    python -m emoengine.benchmarks.detection_settings [--clip FILE ...] [--json FILE]

On each clip (default: three made from the photos in insightface's wheel — one face travelling and growing at
720p, six faces panning and zooming at 720p, and the demo's 640x360 half-and-half — plus any --clip):
- min-face: MTCNN's CPU milliseconds per frame (one ORT thread, the calling thread's CPU time, so other load on
  the machine changes it little) and the faces it finds, against min-face 20, for 20, 32, 40, 48, 64 px;
- detect every N: at the default min-face, the boxes of engine.tracking.keyframes against per-frame detection
  (each per-frame face's best IoU; faces missed; frames where a face is carried that per-frame detection does not
  find), detector calls, and CPU milliseconds per frame of detection plus flow, for N = 1, 2, 4, 8, 12, 16.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.benchmarks.bench import machine_facts, save_report

MIN_FACES = (20, 32, 40, 48, 64)
EVERY = (1, 2, 4, 8, 12, 16)


def generated_clips() -> dict[str, list[np.ndarray]]:
    from emoengine.engine.run.demo import demo_frames, group_in_view_frames, single_face_frames

    return {"one_face_720p": list(single_face_frames(96, (1280, 720), face_px=(220, 380))),
            "six_faces_720p": list(group_in_view_frames(96, (1280, 720))),
            "demo_360p": list(demo_frames(96))}


def decoded(path: Path) -> list[np.ndarray]:
    from emoengine.engine.sources.opener import open_source

    with open_source(path) as source:
        return [f.rgb for f in source]


def cpu_ms(fn, frames) -> tuple[list, float]:
    t0 = time.thread_time()
    out = [fn(f) for f in frames]
    return out, round(1000 * (time.thread_time() - t0) / len(frames), 2)


def min_face_rows(frames: list[np.ndarray]) -> list[dict]:
    from emoengine.engine.tracking.detectors import make_detector
    from emoengine.engine.tracking.tracker import iou_matrix

    rows, reference = [], None
    for min_face in MIN_FACES:
        detector = make_detector("mtcnn", threads=1, min_face=min_face)
        detector.detect(frames[:1])
        found, ms = cpu_ms(lambda f, d=detector: d.detect([f])[0], frames)
        detector.close()
        reference = reference or found
        kept = sum(int((iou_matrix(r.boxes, f.boxes).max(axis=1) >= 0.5).sum()) if len(f) else 0
                   for r, f in zip(reference, found, strict=True))
        rows.append({"min_face": min_face, "cpu_ms_per_frame": ms, "faces": sum(len(f) for f in found),
                     "faces_of_min_face_20_found": kept, "faces_min_face_20": sum(len(r) for r in reference)})
    return rows


def every_rows(frames: list[np.ndarray]) -> list[dict]:
    from emoengine.engine.tracking.detectors import DEFAULT_MIN_FACE, make_detector
    from emoengine.engine.tracking.keyframes import KeyframeTracker
    from emoengine.engine.tracking.tracker import iou_matrix

    detector = make_detector("mtcnn", threads=1, min_face=DEFAULT_MIN_FACE)
    rows, reference = [], None
    for every in EVERY:
        tracker = KeyframeTracker(detector, every=every)
        tracked, ms = cpu_ms(lambda f, t=tracker: t.track([f])[0], frames)
        reference = reference or tracked
        ious, missed, extra = [], 0, 0
        for r, t in zip(reference, tracked, strict=True):
            best = iou_matrix(r.faces.boxes, t.faces.boxes).max(axis=1) if len(t.faces) else np.zeros(len(r.faces))
            ious += best.tolist()
            missed += int((best < 0.3).sum())
            extra += max(0, len(t.faces) - len(r.faces))
        ious = np.asarray(ious or [0.0])
        rows.append({"every": every, "cpu_ms_per_frame": ms, "detect_frames": tracker.stats.detect_frames,
                     "iou_median": round(float(np.median(ious)), 4), "iou_p5": round(float(np.percentile(ious, 5)), 4),
                     "iou_min": round(float(ious.min()), 4), "missed": missed, "extra": extra,
                     "reference_faces": sum(len(r.faces) for r in reference),
                     "ids": len({int(i) for t in tracked for i in t.ids})})
    detector.close()
    return rows


def main(argv: list[str] | None = None) -> Path:
    import cv2

    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--clip", type=Path, action="append", default=[], help="also measure on this video")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)   # the calling thread's CPU time is the whole cost
    started = datetime.now(timezone.utc)
    machine = machine_facts()
    clips = {**generated_clips(), **{p.name: decoded(p) for p in args.clip}}
    results = {}
    for name, frames in clips.items():
        results[name] = {"frames": len(frames), "size": list(frames[0].shape[1::-1]),
                         "min_face": min_face_rows(frames), "detect_every": every_rows(frames)}
        for kind in ("min_face", "detect_every"):
            for row in results[name][kind]:
                print(name, row, flush=True)
    report = {"machine": machine, "date": started.isoformat(timespec="seconds"),
              "config": {"detector": "mtcnn, one ORT thread", "cpu_time": "the calling thread's (cv2 single-threaded)"},
              "results": results}
    return save_report(report, args.json, prefix="detection-settings-")


if __name__ == "__main__":
    main()
