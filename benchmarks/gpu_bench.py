"""The GPU plan of the bench, for a session with a lent GPU: `python -m emoengine.benchmarks.gpu_bench`.

The same machinery as `emoengine bench` (benchmarks/measure.py: one timing loop, parity at every batch and every
variant with the one comparator, both labelled speed-ups), over the table GPU_PLAN: eager fp32 torch-cuda (the
upstream way at batch 1, and the equal-batch baseline), torch.compile (mode `default`) at batches 1 and 256 only
(each a cold compile), fp16, eager CUDA graphs and bf16 at batches 1/8/64/256, then ort-cuda and trt where they
are installed. Specs whose backend cannot run here are left out; the order is the priority: `--deadline-s` cuts
the tail by the stated per-row costs (ROW_COST_S). Every row is warmed up for a second before it is timed, so the
baseline is not measured on a cold GPU. Weights and parity crops: the golden ones where the golden data is found;
else BatchNorm-calibrated weights made here from a seed and synthetic parity crops; timing crops: synthetic. The
JSON (benchmarks/results/gpu-bench-<device>-<date>.json) holds every planned row from the start (`pending`) and
is rewritten as each settles (`measured`, `failed` with its traceback, `cut`); SIGINT cuts what is left, writes,
and exits 130. Nothing here has run on a GPU yet.
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
from emoengine.benchmarks.shared_data import shared_path

BATCHES = (1, 8, 64, 256)
COMPILE_BATCHES = (1, 256)   # each is a cold compile: two shapes, the upstream way and the largest batch
GPU_PLAN: tuple[PlanRow, ...] = (
    ("torch-cuda", BATCHES),                                         # eager fp32: both baselines
    ("torch-cuda:fp16+channels_last+compile", COMPILE_BATCHES),      # compile mode `default`: early, the longest
    ("torch-cuda:fp16+channels_last", BATCHES),
    ("torch-cuda:fp16+channels_last+cudagraph", BATCHES),            # eager CUDA graphs, one per batch size
    ("torch-cuda:bf16+channels_last", BATCHES),
    ("ort-cuda", (1, 64)),
    ("ort-cuda:fp16", (1, 64, 256)),
    ("ort-cuda:fp16+cudagraph", (64,)),
    ("trt:fp16+max_batch=256", (1, 64, 256)),
    ("trt:fp16+cudagraph+max_batch=256", (64,)),
    ("torch-cuda:fp16+channels_last+compile+cudagraph", (1, 256)),   # reduce-overhead: compiles again, last
)
# The stated cost of a row on an H100/H200 (not measured: no GPU has run this yet), for the budget plan and the
# deadline: >= 1 s of warm-up + >= 1 s timed + first call and parity; a compiled shape is a cold compile of
# EmoNet's 115 convolutions (30-75 s expected); an eager CUDA graph is captured once per shape.
ROW_COST_S = {"eager": 3.0, "cudagraph": 4.0, "compile": 55.0}
OPEN_COST_S = 4.0          # weights to the GPU, the CUDA context's first kernels
REFERENCE_COST_S = 12.0    # the calibrated default weights made on the CPU and the CPU fp32 reference outputs
GPU_SETTINGS = BenchSettings(runs=5, min_time_s=1.0, warmup=3, warmup_s=1.0)
# benchmarks/device_check's plan: what the lent machine can run (PyTorch CUDA alone; no onnxruntime-gpu, no
# TensorRT), compile at two shapes, every other variant at every batch
PLANS = {"full": GPU_PLAN, "reduced": tuple(row for row in GPU_PLAN if row[0].startswith("torch-cuda")
                                                and "compile+cudagraph" not in row[0])}


def row_cost_s(spec: str, batch: int, opening: bool = False) -> float:
    """The stated seconds of one row (ROW_COST_S), plus the spec's opening for its first row."""
    from emoengine.engine.backends import parse_backend

    o = parse_backend(spec)
    kind = "compile" if o.compile else "cudagraph" if o.cudagraph else "eager"
    return ROW_COST_S[kind] + (OPEN_COST_S if opening else 0.0)


def expected_s(table: tuple[PlanRow, ...]) -> float:
    """What a plan is expected to take by the stated costs: the reference, then every spec's rows."""
    return REFERENCE_COST_S + sum(row_cost_s(spec, b, opening=i == 0) for spec, batches in table
                                  for i, b in enumerate(batches))


def plan(available: dict[str, str | None], table: tuple[PlanRow, ...] = GPU_PLAN) -> list[PlanRow]:
    """The table's specs whose backend can run here (`available`: backend name -> None or why not)."""
    from emoengine.engine.backends import parse_backend

    return [(spec, batches) for spec, batches in table if available.get(parse_backend(spec).name) is None]


def results_file(device: str, folder: Path = Path("benchmarks/results")) -> Path:
    """gpu-bench-<device>-<date>.json: not `emoengine bench`'s gpu-<device>-<date>.json on the same GPU and day."""
    from emoengine.benchmarks.bench import device_slug

    return folder / f"gpu-bench-{device_slug(device)}-{datetime.now(timezone.utc):%Y-%m-%d}.json"


def golden_folder() -> Path:
    return Path(os.environ.get("EMOENGINE_GOLDEN") or shared_path("golden"))


def save_upstream_format(state: dict, path: Path) -> Path:
    """A state dict as upstream saves it (nn.DataParallel: `module.` keys, float32)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module." + k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path)
    return path


def resolve_weights(weights: str | None) -> tuple[str, np.ndarray]:
    """The checkpoint to time and the crops to check parity on: the golden weights and crops where the golden
    data is (.golden carried); else BatchNorm-calibrated weights made here from a seed (calibrated_emonet) and
    the synthetic parity crops, on which their fp16/bf16 headroom is tested on the CPU."""
    import torch

    from emoengine.export.emonet import CALIBRATED_SEED, calibrated_emonet, parity_crops
    from emoengine.paths import models_dir

    golden = golden_folder()
    crops = parity_crops()
    if (golden / "emonet8.outputs.npz").is_file():
        with np.load(golden / "emonet8.outputs.npz") as z:
            crops = z["images_rgb"]
    if weights:
        return weights, crops
    if (golden / "emonet8.weights.npz").is_file():
        with np.load(golden / "emonet8.weights.npz") as w:
            state = {k: torch.from_numpy(w[k]) for k in w.files}
        return str(save_upstream_format(state, models_dir() / "emonet8_golden.pth")), crops
    path = models_dir() / f"emonet8-calibrated-seed{CALIBRATED_SEED[8]}.pth"
    return str(save_upstream_format(calibrated_emonet(8).state_dict(), path)), crops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--weights", default=None, help="checkpoint (.pth); default: the golden weights, else random")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="begin no row whose stated cost (ROW_COST_S) does not fit before this many seconds; "
                             "rows left are `cut`")
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
    try:
        return run(args, steps)
    except KeyboardInterrupt:   # stopped at the device check's limit: the JSON already holds every row's state
        print("gpu_bench: stopped (SIGINT); rows not finished are `cut` in the JSON", file=sys.stderr)
        return 130


def run(args, steps: list[PlanRow]) -> int:
    import dataclasses

    import torch

    from emoengine.benchmarks.bench import bench_report, write_results
    from emoengine.benchmarks.measure import planned_rows
    from emoengine.export.emonet import synthetic_crops

    started = time.perf_counter()
    out = args.out or results_file(torch.cuda.get_device_name())
    write_results({"config": {"plan": [[s, list(bs)] for s, bs in steps]}, "results": planned_rows(steps),
                   "summary": {}}, out)   # every row `pending` before the weights and the reference are made
    weights, parity_crops = resolve_weights(args.weights)
    settings = dataclasses.replace(GPU_SETTINGS, deadline_s=args.deadline_s, row_cost=row_cost_s)
    report = bench_report(weights, steps, settings, synthetic_crops(max(BATCHES), seed=7), parity_crops,
                          progress=lambda msg: print(f"  {msg}", flush=True),
                          inputs_source="timing: synthetic crops (export.emonet.synthetic_crops, seed 7); parity: "
                                        "the golden crops where found, else export.emonet.parity_crops",
                          on_row=lambda partial: write_results(partial, out))
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write_results(report, out)
    print(json.dumps(report["summary"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
