"""A/B of the annotated video's encoder in a child process vs on a thread (issue 20): every output, 2 cores and 1.

    python benchmarks/encoder_process_ab.py [--rounds 3] [--frames 149] [--loops 3] [--json P]

Alternates EMOENGINE_ANNOTATED_IN_PROCESS=1 / =0 in one sitting (pipeline_capacity's runs, every output only),
the 1-min load average kept beside each run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent / "pythonpath"))

from emoengine.benchmarks.bench import machine_facts, save_report
from emoengine.benchmarks.pipeline_capacity import child_env, make_looped_clip, one_core, run_once
from emoengine.benchmarks.standin_model import write_standin


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=149)
    ap.add_argument("--loops", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    started = datetime.now(timezone.utc)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="emoengine-encab-") as name:
        tmp = Path(name)
        model = write_standin(tmp / "standin.onnx")
        clip = make_looped_clip(tmp / "clip720p.mp4", args.frames, args.loops)
        run_once(clip, ["--model", str(model)], tmp / "warm", ["--no-video"], child_env(tmp))   # untimed
        for r in range(args.rounds):
            for switch in ("1", "0"):
                env = {**child_env(tmp), "EMOENGINE_ANNOTATED_IN_PROCESS": switch}
                row = {"round": r, "annotated_in_process": switch == "1"}
                for label, cores in (("all_cores", None), ("one_core", one_core())):
                    row[label] = run_once(clip, ["--model", str(model)], tmp / f"r{r}-{switch}-{label}", [], env,
                                          cores)
                row["scaling"] = round(row["all_cores"]["frames_per_s"] / row["one_core"]["frames_per_s"], 3)
                rows.append(row)
                print(f"round {r} in_process={switch}: "
                      + ", ".join(f"{k} {row[k]['frames_per_s']:.1f} f/s {row[k]['cpu_ms_per_frame']} ms CPU/f "
                                  f"load {row[k]['load_1m_before']}" for k in ("all_cores", "one_core"))
                      + f", scaling {row['scaling']}", flush=True)
    report = {"machine": machine_facts(), "date": started.isoformat(timespec="seconds"),
              "config": {"clip": f"engine.run.demo single face 720p, {args.frames} x {args.loops} frames",
                         "runs": "every output (defaults), stand-in model"}, "rows": rows}
    return save_report(report, args.json, prefix="encoder-process-ab-")


if __name__ == "__main__":
    main()
