"""Throughput and parity of EmoNet over backends, through the same runner contract `run` uses.

Parity follows Polygraphy's comparator: per output, worst |a-b| / max|reference| against the PyTorch
reference on the same crops, with a tolerance per output and a verdict that is true or false.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.engine.emonet_model import open_emonet

DEFAULT_TOLERANCE = 1e-3   # fp32 backends; relative to each output's magnitude


@dataclass
class BackendResult:
    backend: str
    ok: bool
    error: str | None = None
    batch_timings: dict[str, dict[str, float]] = field(default_factory=dict)  # batch → {ms, images_per_s}
    parity: dict[str, float] = field(default_factory=dict)                   # output → worst rel diff
    parity_pass: bool | None = None


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cpus)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cpus)"


def bench_crops(n: int, seed: int = 0) -> np.ndarray:
    """Deterministic smooth face-sized crops (parity does not need real faces; timings do not care)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)


def worst_relative(a: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.abs(a[k].astype(np.float64) - ref[k]).max() / max(np.abs(ref[k]).max(), 1e-12))
            for k in ref if k in a}


def run_bench(weights: str, backends: list[str], batches: list[int], iters: int = 5,
              tolerance: float = DEFAULT_TOLERANCE, parity_n: int = 4) -> dict:
    crops_parity = bench_crops(parity_n)
    reference = None
    results = []
    for name in (["torch"] if "torch" not in backends else []) + backends:
        res = BackendResult(name, ok=True)
        try:
            model = open_emonet(name, weights=weights, max_batch=max(batches))
        except Exception as e:  # noqa: BLE001 - a backend this machine lacks is a result, not a crash
            res.ok, res.error = False, str(e).splitlines()[0]
            results.append(res)
            continue
        try:
            outs = model.runner.infer({"image": crops_parity})
            if name == "torch":
                reference = outs
            if reference is not None and name != "torch":
                res.parity = worst_relative(outs, reference)
                res.parity_pass = all(v <= tolerance for v in res.parity.values())
            if name in backends:
                for b in batches:
                    crops = bench_crops(b, seed=b)
                    model.runner.infer({"image": crops})  # warm-up
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        model.runner.infer({"image": crops})
                    dt = (time.perf_counter() - t0) / iters
                    res.batch_timings[str(b)] = {"ms": round(dt * 1000, 3), "images_per_s": round(b / dt, 2)}
        finally:
            model.close()
        if name in backends:
            results.append(res)
    import emoengine

    return {
        "device": device_name(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "emoengine": emoengine.__version__,
        "python": platform.python_version(),
        "weights": "random" if weights == "random" else Path(weights).name,
        "iters": iters,
        "tolerance": tolerance,
        "results": [asdict(r) for r in results],
    }


def write_results(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    return path
