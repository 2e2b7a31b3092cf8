"""A/B of the run's child processes against threads (issue 20), on 2 cores and on 1, alternating in one sitting.

    python benchmarks/process_ab.py --switch annotated [--rounds 3] [--frames 149] [--loops 3] [--json P]
    python benchmarks/process_ab.py --switch segments --clip ../shared/media/demo.mp4

`annotated`: the annotated video's encoder in a child process or on a thread (every output). `segments`: the
detect stage's segments in worker processes or on threads (`--no-video --no-taps`). Each round runs the switch
on (=1) then off (=0), on the generated 720p clip and on every `--clip`; the 1-min load average is kept beside
each run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent / "pythonpath"))

from emoengine.benchmarks.bench import machine_facts, save_report
from emoengine.benchmarks.pipeline_capacity import RUNS, child_env, make_looped_clip, one_core, run_once
from emoengine.benchmarks.standin_model import write_standin

# switch name -> (environment variable, the run's options, the result file's prefix)
SWITCHES = {"annotated": ("EMOENGINE_ANNOTATED_IN_PROCESS", RUNS["every_output"], "encoder-process-ab-"),
            "segments": ("EMOENGINE_SEGMENT_PROCESSES", RUNS["no_video"], "segment-processes-ab-")}


def one_round(r: int, clips: dict, model: Path, tmp: Path, switch: str) -> list[dict]:
    variable, extra, _ = SWITCHES[switch]
    rows = []
    for on in ("1", "0"):
        env = {**child_env(tmp), variable: on}
        for label, clip in clips.items():
            row = {"round": r, "clip": label, "in_process": on == "1"}
            for cores_label, cores in (("all_cores", None), ("one_core", one_core())):
                row[cores_label] = run_once(clip, ["--model", str(model)], tmp / f"r{r}-{on}-{label}-{cores_label}",
                                            extra, env, cores)
            row["scaling"] = round(row["all_cores"]["frames_per_s"] / row["one_core"]["frames_per_s"], 3)
            rows.append(row)
            print(f"round {r} {label} {variable}={on}: "
                  + ", ".join(f"{k} {row[k]['frames_per_s']:.1f} f/s {row[k]['cpu_ms_per_frame']} ms CPU/f "
                              f"load {row[k]['load_1m_before']}" for k in ("all_cores", "one_core"))
                  + f", scaling {row['scaling']}", flush=True)
    return rows


def medians(rows: list[dict]) -> dict:
    """Per clip and side: median frames/s (2 cores, 1 core), CPU ms a frame (2 cores) and scaling."""
    out: dict = {}
    for row in rows:
        side = out.setdefault(row["clip"], {}).setdefault("process" if row["in_process"] else "thread", [])
        side.append(row)
    med = lambda xs: round(statistics.median(xs), 2)
    return {clip: {side: {"frames_per_s": med([r["all_cores"]["frames_per_s"] for r in rs]),
                          "one_core_frames_per_s": med([r["one_core"]["frames_per_s"] for r in rs]),
                          "cpu_ms_per_frame": med([r["all_cores"]["cpu_ms_per_frame"] for r in rs]),
                          "scaling": med([r["scaling"] for r in rs]),
                          "scaling_range": [min(r["scaling"] for r in rs), max(r["scaling"] for r in rs)]}
                   for side, rs in sides.items()} for clip, sides in out.items()}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--switch", choices=sorted(SWITCHES), default="annotated")
    ap.add_argument("--clip", type=Path, action="append", default=[], help="a video to run on as well")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=149)
    ap.add_argument("--loops", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    started = datetime.now(timezone.utc)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="emoengine-ab-") as name:
        tmp = Path(name)
        model = write_standin(tmp / "standin.onnx")
        clips = {"generated_720p": make_looped_clip(tmp / "clip720p.mp4", args.frames, args.loops)}
        clips.update({c.stem: c for c in args.clip})
        run_once(clips["generated_720p"], ["--model", str(model)], tmp / "warm", ["--no-video"], child_env(tmp))
        for r in range(args.rounds):
            rows += one_round(r, clips, model, tmp, args.switch)
    variable, extra, prefix = SWITCHES[args.switch]
    report = {"machine": machine_facts(), "date": started.isoformat(timespec="seconds"),
              "config": {"switch": variable, "run_options": extra, "model": "stand-in",
                         "clips": {"generated_720p": f"engine.run.demo single face 720p, {args.frames} x "
                                                     f"{args.loops} frames", **{k: str(v) for k, v in clips.items()
                                                                                if k != "generated_720p"}}},
              "medians": medians(rows), "rows": rows}
    return save_report(report, args.json, prefix=prefix)


if __name__ == "__main__":
    main()
