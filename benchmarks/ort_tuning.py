"""ONNX Runtime CPU session options for EmoNet, measured: threads, graph optimisation level, spinning, batch,
and the session start with and without the cached optimised graph.

    python -m emoengine.benchmarks.ort_tuning --weights emonet_8.pth [--json FILE]

What OrtRunner uses by default (ORT_ENABLE_ALL, ORT's own thread count = physical cores, spinning on) should be
the fastest row here; if a quiet machine says otherwise, change `engine.backends.ort.session_options`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from itertools import product
from pathlib import Path

from emoengine.benchmarks.bench import bench_inputs, machine_facts, save_report, weights_label
from emoengine.benchmarks.measure import BenchSettings, time_calls
from emoengine.contract import INPUT_NAME


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--weights", default="random")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from emoengine.engine.backends import request_for
    from emoengine.engine.backends.ort import OrtRunner, session_options
    from emoengine.export.prepare import cached_onnx_for

    batches = [int(b) for b in args.batches.split(",")]
    crops = bench_inputs(max(batches))
    model = cached_onnx_for(request_for("ort", weights=args.weights))
    timing = BenchSettings(runs=args.runs, min_time_s=0.0, warmup=1)
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    cores = os.cpu_count() or 1
    machine, started = machine_facts(), datetime.now(timezone.utc)
    rows = []
    for (level, threads, spinning) in product(levels, sorted({1, cores}), (True, False)):
        so = session_options(threads, spinning=spinning)   # OrtRunner's options, only the level varied
        so.graph_optimization_level = levels[level]
        t0 = time.perf_counter()
        session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        open_s = time.perf_counter() - t0
        names = [o.name for o in session.get_outputs()]
        row = {"graph_optimization": level, "threads": threads, "spinning": spinning, "open_s": round(open_s, 2)}
        for b in batches:
            row[f"b{b}"] = time_calls(lambda x, s=session, n=names: s.run(n, {INPUT_NAME: x}), crops[:b], timing)
        rows.append(row)
        print(f"{level:>8} threads {threads} spinning {spinning!s:>5}: open {open_s:.2f} s, " +
              ", ".join(f"b{b} {row[f'b{b}']['faces_per_s']:.2f} faces/s" for b in batches), flush=True)

    # the cached optimised graph: how long a session takes to start without and with it
    starts = {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / model.name
        shutil.copy2(model, copy)
        for label in ("optimise and save", "load cached"):
            t0 = time.perf_counter()
            runner = OrtRunner(copy, cache_optimized=True)
            starts[label] = {"open_s": round(time.perf_counter() - t0, 2), "from_cache": runner.optimized_from_cache,
                             "b1": time_calls(runner.infer, crops[:1], timing)}
            runner.close()
    print("session start: " + ", ".join(f"{k} {v['open_s']} s" for k, v in starts.items()))
    report = {"machine": machine, "date": started.isoformat(timespec="seconds"),
              "config": {"weights": weights_label(args.weights),
                         "runs": args.runs, "batches": batches},
              "sessions": rows, "optimized_graph_cache": starts}
    return save_report(report, args.json, prefix="ort-tuning-")


if __name__ == "__main__":
    main()
