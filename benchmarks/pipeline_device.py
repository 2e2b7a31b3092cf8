"""`pipeline_capacity.py --device-check`: `emoengine run` end to end on a lent GPU machine, bounded in time.

The generated 720p clip (one pass), then `run` with EmoNet on the GPU (`--backend torch-cuda:fp16+cudagraph`,
random weights: the machine has no checkpoint) and with the stand-in model (the pipeline's own capacity on
this machine's cores), each with every output and with `--no-video --no-taps`: frames/s, process CPU and each
stage's ms per frame. A run that would start with too little of DEVICE_BUDGET_S left is listed as skipped.
Without CUDA (PyTorch's view) it exits 2 with one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from emoengine.benchmarks.bench import machine_facts
from emoengine.benchmarks.pipeline_capacity import (
    DEVICE_BACKEND,
    DEVICE_BUDGET_S,
    child_env,
    make_looped_clip,
    run_once,
)
from emoengine.benchmarks.standin_model import write_standin
from emoengine.engine.outputs.writers import write_json

DEVICE_FRAMES = 149
MIN_LEFT_S = 8.0   # no run starts with less than this left of the budget
OUTPUTS = {"every_output": [], "no_video": ["--no-video", "--no-taps"]}


def cuda_missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return None if torch.cuda.is_available() else "PyTorch sees no CUDA device"


def device_runs(model: Path) -> dict[str, list[str]]:
    """{label: run's model options}: EmoNet on the GPU, and the stand-in (the pipeline alone)."""
    return {"torch_cuda_fp16_cudagraph": ["--weights", "random", "--backend", DEVICE_BACKEND],
            "standin": ["--model", str(model)]}


def device_check(json_path: Path | None) -> Path:
    """Every run of device_runs x OUTPUTS within the budget; results to `json_path` (also on a skip or a fail)."""
    if (why := cuda_missing()) is not None:
        print(f"pipeline_capacity --device-check: no GPU here ({why})", file=sys.stderr)
        raise SystemExit(2)
    t0 = time.perf_counter()
    report: dict = {"machine": machine_facts(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "budget_s": DEVICE_BUDGET_S, "runs": {}}
    out = json_path or Path("e2e.json")
    with tempfile.TemporaryDirectory(prefix="emoengine-e2e-device-") as tmp_name:
        tmp = Path(tmp_name)
        env = child_env(tmp)
        clip = make_looped_clip(tmp / "clip720p.mp4", DEVICE_FRAMES, 1)
        model = write_standin(tmp / "standin.onnx")
        for label, model_args in device_runs(model).items():
            for name, extra in OUTPUTS.items():
                key, left = f"{label}/{name}", DEVICE_BUDGET_S - (time.perf_counter() - t0)
                if left < MIN_LEFT_S:
                    report["runs"][key] = {"status": "skipped", "why": f"{left:.0f} s of the budget left"}
                    continue
                report["runs"][key] = _one(clip, model_args, tmp / key.replace("/", "-"), extra, env, left)
                print(f"{key}: {json.dumps(report['runs'][key])[:400]}", flush=True)
                write_json(out, {**report, "duration_s": round(time.perf_counter() - t0, 1)})
    report["duration_s"] = round(time.perf_counter() - t0, 1)
    write_json(out, report)
    print(f"wrote {out}")
    return out


def _one(clip: Path, model_args: list[str], out: Path, extra: list[str], env: dict, left_s: float) -> dict:
    try:
        return {"status": "ok", **run_once(clip, model_args, out, extra, env, timeout_s=left_s)}
    except subprocess.TimeoutExpired:
        return {"status": "failed", "why": f"over the budget ({left_s:.0f} s left when it started)"}
    except SystemExit as e:   # run_once's one line about a failed run
        return {"status": "failed", "why": str(e)[-500:]}
