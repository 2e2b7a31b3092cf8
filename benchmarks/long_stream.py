"""Memory over a long run: a generated stream of small frames through the real `emoengine run` process,
its resident memory sampled from outside every 0.25 s.

    python -m emoengine.benchmarks.long_stream --frames 90000 --fps 25 --weights W.pth --out results.json

The stream is MPEG-TS (H.264) opened through the stream path (a file:// URL), like a camera or RTSP feed
that never ends; a face appears every `face_every` frames, so detection, inference, tracking and every writer
stay busy. `start` is the RSS once the run is warm (10 % of the way in), `peak` the most after that, `end`
the last sample; flat memory means peak and end stay within a few MiB of start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

FRAME_SIZE = (64, 48)   # w, h: small, so an hour of frames runs in minutes
FACE_FRAMES = 9           # frames a face stays: more than one keyframe interval (run detects every 8th)


def make_stream(path: Path, frames: int, fps: int = 25, size: tuple[int, int] = FRAME_SIZE,
                face_every: int = 500, face_frames: int = FACE_FRAMES) -> Path:
    """An H.264 MPEG-TS of `frames` frames: a moving gradient, with a face for `face_frames` frames every
    `face_every` (more than one keyframe interval, as `run` detects on every 8th frame and a one-frame face
    would fall between keyframes)."""
    import av
    import cv2

    from emoengine.engine.run.demo import shipped_photo

    w, h = size
    side = min(w, h) - 8
    face = cv2.resize(shipped_photo("Tom_Hanks_54745.png"), (side, side), interpolation=cv2.INTER_AREA)
    xx = np.arange(w, dtype=np.int64)[None, :]
    with av.open(str(path), "w", format="mpegts") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.options = {"preset": "ultrafast", "g": str(fps * 10)}
        img = np.full((h, w, 3), 90, np.uint8)
        for i in range(frames):
            img[...] = 90
            img[..., 0] = (xx + i) % 256
            if i % face_every < face_frames:
                y0, x0 = (h - side) // 2, (w - side) // 2
                img[y0:y0 + side, x0:x0 + side] = face
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def run_and_sample(args: list[str], interval_s: float = 0.25, env: dict | None = None) -> dict:
    """Run `python -m emoengine <args>` and sample its RSS (MiB); returns rc, stderr and the figures."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "emoengine", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    while proc.poll() is None:
        try:
            samples.append((time.perf_counter() - t0, ps.memory_info().rss / 2**20))
        except psutil.Error:
            break
        time.sleep(interval_s)
    stderr = proc.communicate()[1]
    rss = [r for _, r in samples if r > 0]   # a process being reaped reads 0
    warm = max(1, len(rss) // 10)
    after = rss[warm:] or rss
    return {
        "rc": proc.returncode,
        "stderr": stderr,
        "wall_s": round(time.perf_counter() - t0, 2),
        "samples": len(rss),
        "rss_mib": {"start": round(rss[warm], 1) if len(rss) > warm else None,
                    "peak": round(max(after), 1) if after else None,
                    "end": round(rss[-1], 1) if rss else None,
                    "first": round(rss[0], 1) if rss else None},
        "rss_trace_mib": [round(r, 1) for r in rss[:: max(1, len(rss) // 60)]] + ([round(rss[-1], 1)] if rss else []),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--frames", type=int, default=90_000)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--face-every", type=int, default=500)
    ap.add_argument("--weights", required=True, help="EmoNet .pth (or 'random')")
    ap.add_argument("--work", type=Path, default=Path("long-stream-work"))
    ap.add_argument("--out", type=Path, required=True, help="results .json")
    ap.add_argument("extra", nargs="*", help="more `emoengine run` options, after --")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stream = make_stream(a.work / "stream.ts", a.frames, a.fps, face_every=a.face_every)
    made_s = time.perf_counter() - t0
    run_args = ["run", stream.resolve().as_uri(), "--weights", a.weights, "--backend", "torch",
                "--out", str(a.work / "out"), "-q", *a.extra]
    result = run_and_sample(run_args, env=dict(os.environ))
    summary = json.loads((a.work / "out" / "summary.json").read_text()) if result["rc"] == 0 else {}
    record = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus (shared; load avg "
                   f"{os.getloadavg()[0]:.1f} at the end)",
        "stream": {"frames": a.frames, "fps": a.fps, "seconds_of_video": a.frames / a.fps,
                   "size": list(FRAME_SIZE), "face_every": a.face_every, "face_frames": FACE_FRAMES,
                   "generate_s": round(made_s, 1)},
        "command": "emoengine " + " ".join(run_args),
        **{k: v for k, v in result.items() if k != "stderr"},
        "stderr": result["stderr"].strip().splitlines()[-3:],
        "summary": {k: summary.get(k) for k in ("frames", "frames_with_face", "faces", "wall_s", "frames_per_s")},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("stream", "rc", "wall_s", "rss_mib", "summary")}, indent=2))


if __name__ == "__main__":
    main()
