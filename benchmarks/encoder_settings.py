"""x264 settings for `annotated.mp4`: CPU time per frame, file size and PSNR per preset x CRF x threads.

    python -m emoengine.benchmarks.encoder_settings [--frames 48] [--json FILE]

The frames are what `run` encodes: a generated 1280x720 clip of a moving face (engine.run.demo), or --clip's, with the
annotation panel drawn (engine.outputs.annotate). Each setting encodes them through
engine.outputs.writers.VideoWriter; CPU time is the
process's (x264's own threads included), so it stays meaningful on a busy machine where wall time does not;
PSNR is against the frames that went in (decoded back with PyAV).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.benchmarks.bench import machine_facts, save_report

SIZE_720P = (1280, 720)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster")
CRFS = (20, 23, 26)
THREADS = (1, 0)   # 0: x264 picks (1.5 x cores)


def annotated_frames(n: int, clip: Path | None = None) -> list[np.ndarray]:
    """n frames of `clip` (default: a generated 720p face) with the annotation panel drawn."""
    from emoengine.engine.outputs.annotate import annotate_frame
    from emoengine.engine.run.demo import single_face_frames
    from emoengine.engine.run.records import FrameRecord
    from emoengine.engine.sources.opener import open_source

    if clip is None:
        frames = single_face_frames(n, size=SIZE_720P, face_px=(220, 380))
    else:
        with open_source(clip) as source:
            frames = [f.rgb for f, _ in zip(source, range(n), strict=False)]
    return [annotate_frame(FrameRecord(i, i / 24, rgb)) for i, rgb in enumerate(frames)]


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def psnr(path: Path, frames: list[np.ndarray]) -> float:
    import av

    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    mse = np.mean([np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2) for a, b in zip(frames, decoded, strict=True)])
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def encode(frames: list[np.ndarray], path: Path, preset: str, crf: int, threads: int) -> dict:
    from emoengine.engine.outputs.writers import VideoWriter

    c0, t0 = cpu_s(), time.perf_counter()
    size = (frames[0].shape[1], frames[0].shape[0])
    writer = VideoWriter(path, 24.0, size, crf=crf, preset=preset, threads=threads or None)
    for frame in frames:
        writer.write(frame)
    writer.close()
    cpu, wall = cpu_s() - c0, time.perf_counter() - t0
    return {"preset": preset, "crf": crf, "threads": threads or "auto",
            "cpu_ms_per_frame": round(1000 * cpu / len(frames), 2), "wall_ms_per_frame": round(1000 * wall / len(frames), 2),
            "kbytes_per_frame": round(path.stat().st_size / len(frames) / 1024, 2), "psnr_db": round(psnr(path, frames), 2)}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--clip", type=Path, help="a real video's frames instead of the generated 720p face")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    started = datetime.now(timezone.utc)
    machine = machine_facts()
    frames = annotated_frames(args.frames, args.clip)
    rows = []
    with tempfile.TemporaryDirectory(prefix="emoengine-x264-") as tmp:
        for preset in PRESETS:
            for crf in CRFS:
                for threads in THREADS:
                    row = encode(frames, Path(tmp) / f"{preset}-{crf}-{threads}.mp4", preset, crf, threads)
                    rows.append(row)
                    print(row, flush=True)
    report = {"machine": machine, "date": started.isoformat(timespec="seconds"),
              "config": {"frames": len(frames), "size": [frames[0].shape[1], frames[0].shape[0]],
                         "content": (str(args.clip) if args.clip else "engine.run.demo single face")
                         + ", annotation panel drawn", "rgb_to_yuv": "OpenCV (engine.outputs.writers.VideoWriter)"},
              "results": rows}
    return save_report(report, args.json, prefix="encoder-settings-")


if __name__ == "__main__":
    main()
