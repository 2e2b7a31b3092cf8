"""The GPU plan of the bench, for a session with a lent GPU: `python -m emoengine.benchmarks.gpu_bench`.

The same machinery as `emoengine bench` (benchmarks/measure.py: one timing loop, parity at every batch and every
variant with the one comparator, both labelled speed-ups, tracebacks to a log), over the table GPU_PLAN: eager
fp32 torch-cuda (the upstream way at batch 1, and the equal-batch baseline), fp16/bf16, eager CUDA graphs and
torch.compile (mode `default`) at batches 1/8/64/256, then ort-cuda and trt where they are installed. Specs whose
backend cannot run here are left out; the order is the priority, so a time budget cuts the tail. Every row is
warmed up for a second before it is timed, so the baseline is not measured on a cold GPU. Parity crops: the
golden crops where the golden data is found, synthetic ones otherwise; timing crops: synthetic. The results are
written after every row to benchmarks/results/gpu-bench-<device>-<date>.json (and failed rows' tracebacks to
the .log beside it), so a run cut short keeps its numbers. Nothing here has run on a GPU yet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.benchmarks.measure import BenchSettings, PlanRow

BATCHES = (1, 8, 64, 256)
GPU_PLAN: tuple[PlanRow, ...] = (
    ("torch-cuda", BATCHES),                                         # eager fp32: both baselines
    ("torch-cuda:fp16+channels_last", BATCHES),
    ("torch-cuda:bf16+channels_last", BATCHES),
    ("torch-cuda:fp16+channels_last+cudagraph", BATCHES),            # eager CUDA graphs, one per batch size
    ("torch-cuda:fp16+channels_last+compile", BATCHES),              # compile mode `default`, one per batch size
    ("ort-cuda", (1, 64)),
    ("ort-cuda:fp16", (1, 64, 256)),
    ("ort-cuda:fp16+cudagraph", (64,)),
    ("trt:fp16+max_batch=256", (1, 64, 256)),
    ("trt:fp16+cudagraph+max_batch=256", (64,)),
    ("torch-cuda:fp16+channels_last+compile+cudagraph", (1, 256)),   # reduce-overhead: compiles again, last
)
GPU_SETTINGS = BenchSettings(runs=5, min_time_s=1.0, warmup=3, warmup_s=1.0, budget_s=300.0)
# benchmarks/device_check's plan: what the lent machine can run (PyTorch CUDA alone; no onnxruntime-gpu, no
# TensorRT), every variant at every batch, each row >= 1 s after >= 1 s of warm-up
PLANS = {"full": GPU_PLAN, "reduced": tuple(row for row in GPU_PLAN if row[0].startswith("torch-cuda")
                                                and "compile+cudagraph" not in row[0])}


def plan(available: dict[str, str | None], table: tuple[PlanRow, ...] = GPU_PLAN) -> list[PlanRow]:
    """The table's specs whose backend can run here (`available`: backend name -> None or why not)."""
    from emoengine.engine.backends import parse_backend

    return [(spec, batches) for spec, batches in table if available.get(parse_backend(spec).name) is None]


def results_file(device: str, folder: Path = Path("benchmarks/results")) -> Path:
    """gpu-bench-<device>-<date>.json: not `emoengine bench`'s gpu-<device>-<date>.json on the same GPU and day."""
    from emoengine.benchmarks.bench import device_slug

    return folder / f"gpu-bench-{device_slug(device)}-{datetime.now(timezone.utc):%Y-%m-%d}.json"


def golden_folder() -> Path:
    return Path(os.environ.get("EMOENGINE_GOLDEN") or Path(__file__).resolve().parents[1] / ".." / "shared" / "golden")


def resolve_weights(weights: str | None) -> tuple[str, np.ndarray]:
    """The checkpoint to time and the crops to check parity on (golden crops where the golden data is)."""
    from emoengine.export.emonet import synthetic_crops

    golden = golden_folder()
    crops = synthetic_crops(4, seed=1)
    if (golden / "emonet8.outputs.npz").is_file():
        with np.load(golden / "emonet8.outputs.npz") as z:
            crops = z["images_rgb"]
    if weights:
        return weights, crops
    if (golden / "emonet8.weights.npz").is_file():
        import torch

        path = Path("models") / "emonet8_golden.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        w = np.load(golden / "emonet8.weights.npz")
        torch.save({"module." + k: torch.from_numpy(w[k]).float() if w[k].dtype == np.float16 else
                    torch.from_numpy(w[k]) for k in w.files}, path)
        return str(path), crops
    return "random", crops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="checkpoint (.pth); default: the golden weights, else random")
    parser.add_argument("--budget-s", type=float, default=GPU_SETTINGS.budget_s,
                        help="open no new backend spec after this many seconds")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plan", choices=sorted(PLANS), default="full", help="reduced: benchmarks/device_check's")
    parser.add_argument("--dry-run", action="store_true", help="print the plan for this machine and exit")
    args = parser.parse_args(argv)

    from emoengine.engine.backends import availability, parse_backend

    available = availability()
    steps = plan(available, PLANS[args.plan])
    if args.dry_run:
        for spec, batches in steps:
            print(f"{spec:<50} batches {', '.join(map(str, batches))}")
        for name, why in available.items():
            if why:
                print(f"skipped {name}: {why}")
        return 0
    baseline = parse_backend(GPU_PLAN[0][0]).name
    if available[baseline] is not None:
        print(f"gpu_bench: no CUDA GPU here: {available[baseline]}", file=sys.stderr)
        return 2
    return run(args, steps)


def run(args, steps: list[PlanRow]) -> int:
    import dataclasses

    import torch

    from emoengine.benchmarks.bench import bench_report, write_results
    from emoengine.export.emonet import synthetic_crops

    started = time.perf_counter()
    weights, parity_crops = resolve_weights(args.weights)
    out = args.out or results_file(torch.cuda.get_device_name())
    settings = dataclasses.replace(GPU_SETTINGS, budget_s=args.budget_s)
    report = bench_report(weights, steps, settings, synthetic_crops(max(BATCHES), seed=7), parity_crops,
                          progress=lambda msg: print(f"  {msg}", flush=True),
                          inputs_source="timing: synthetic crops (export.emonet.synthetic_crops, seed 7); parity: "
                                        "the golden crops where found, else synthetic",
                          on_row=lambda partial: write_results(partial, out))
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write_results(report, out)
    print(json.dumps(report["summary"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
