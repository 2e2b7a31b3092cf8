"""One-shot GPU benchmark for a session with a lent GPU: `python -m emoengine.benchmarks.gpu_bench` (~8 min on H100).

Plan, most important first (so a time budget cuts the tail, not the baseline): torch-cuda eager fp32 at batch 1
(the upstream way: the baseline), torch-cuda fp16 eager and compiled at batch 1..256, bf16, ort-cuda (where
onnxruntime-gpu is installed), trt (where TensorRT is). Every configuration is opened through the same
`open_emonet(backend-spec)` contract `run` and `bench` use, timed end to end per `runner.infer` call (uint8 crops
up, float32 outputs down), and compared with the CPU PyTorch fp32 reference on the golden crops (parity: worst
|a-b|/max|ref| per output against fp32 1e-3, fp16 export.fp16.FP16_TOLERANCE, bf16 BF16_TOLERANCE).

Rows: {backend, precision, batch, faces_per_s, latency_ms, parity, parity_pass}, written after every row to
benchmarks/results/gpu-bench-<device>-<date>.json, so a run cut short still leaves its numbers.
Nothing here has run yet: it was written on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.errors import first_line

BATCHES = (1, 8, 32, 64, 128, 256)


def plan(available: dict[str, str | None], batches=BATCHES) -> list[tuple[str, tuple[int, ...]]]:
    """(backend spec, batches) in the order they run. Backends that are unavailable here are left out."""
    steps: list[tuple[str, tuple[int, ...]]] = []
    if available.get("torch-cuda") is None:
        big = tuple(b for b in batches if b > 1)
        steps += [
            ("torch-cuda", (1,)),                                                   # the baseline
            ("torch-cuda:fp16+channels_last", tuple(batches)),
            # reduce-overhead; one compilation per batch size (the bulk of this script's time): three sizes
            ("torch-cuda:fp16+channels_last+compile+cudagraph", (batches[0], *big[-4:-3], big[-1]) if big else (1,)),
            ("torch-cuda", big[-2:] if len(big) >= 2 else big),
            ("torch-cuda:bf16+channels_last", big[-2:] if len(big) >= 2 else big),
        ]
    if available.get("ort-cuda") is None:
        steps += [("ort-cuda", (1, 64)), ("ort-cuda:conv_search=HEURISTIC", (64,)),  # cudnn_conv_algo_search
                  ("ort-cuda:conv_search=DEFAULT", (64,)), ("ort-cuda:fp16", (1, 64, 256)),
                  ("ort-cuda:fp16+cudagraph", (64,))]
    if available.get("trt") is None:
        steps += [("trt:fp16+max_batch=256", (1, 64, 256)), ("trt:fp16+cudagraph+max_batch=256", (64,))]
    return steps


def tolerance_for(precision: str) -> dict[str, float] | float:
    from emoengine.export.fp16 import BF16_TOLERANCE, FP16_TOLERANCE

    if precision == "fp32":
        return 1e-3
    return BF16_TOLERANCE if precision == "bf16" else FP16_TOLERANCE


def parity(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], precision: str) -> tuple[dict, bool]:
    from emoengine.export.onnx_export import relative_diff

    tol = tolerance_for(precision)
    diffs = {name: relative_diff(got[name], r) for name, r in ref.items()}
    ok = all(d <= (tol if isinstance(tol, float) else tol.get(name, 1e-2)) for name, d in diffs.items())
    return diffs, ok


def time_batch(runner, crops: np.ndarray, min_s: float = 1.0, min_iters: int = 5, warmup: int = 3) -> list[float]:
    """Seconds per infer() call of one batch, after warm-up (compilation and graph capture happen there)."""
    for _ in range(warmup):
        runner.infer(crops)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        runner.infer(crops)
        times.append(time.perf_counter() - t)
        if len(times) >= 200:
            break
    return times


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "unknown"


def results_file(device: str, folder: Path = Path("benchmarks/results")) -> Path:
    """gpu-bench-<device>-<date>.json: not `emoengine bench`'s gpu-<device>-<date>.json on the same GPU and day."""
    return folder / f"gpu-bench-{device_slug(device)}-{datetime.now(timezone.utc):%Y-%m-%d}.json"


def summarize(rows: list[dict]) -> dict:
    """Baseline (torch-cuda fp32 batch 1), best row and best fp16 compiled row, speed-ups against the baseline."""
    ok = [r for r in rows if "faces_per_s" in r]
    base = next((r for r in ok if r["backend"] == "torch-cuda" and r["batch"] == 1), None)
    best = max(ok, key=lambda r: r["faces_per_s"], default=None)
    compiled = [r for r in ok if r["backend"].startswith("torch-cuda:fp16") and "compile" in r["backend"]]
    best_compiled = max(compiled, key=lambda r: r["faces_per_s"], default=None)
    out: dict = {"baseline": base, "best": best, "best_torch_fp16_compiled": best_compiled}
    if base:
        for key, row in (("best_speedup", best), ("fp16_compiled_speedup", best_compiled)):
            if row:
                out[key] = round(row["faces_per_s"] / base["faces_per_s"], 2)
        if best_compiled:
            out["fp16_compiled_meets_20x"] = out["fp16_compiled_speedup"] >= 20 and bool(best_compiled["parity_pass"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="checkpoint (.pth); default: the golden weights, else random")
    parser.add_argument("--budget-s", type=float, default=400.0, help="stop starting new configurations after this")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the plan for this machine and exit")
    args = parser.parse_args(argv)

    from emoengine.engine.cuda_io import backend_availability, parse_backend

    available = backend_availability()
    steps = plan(available)
    if args.dry_run:
        for spec, batches in steps:
            print(f"{spec:<50} batches {', '.join(map(str, batches))}")
        for name, why in available.items():
            if why:
                print(f"skipped {name}: {why}")
        return 0
    if available["torch-cuda"] is not None:
        print(f"gpu_bench: no CUDA GPU here: {available['torch-cuda']}", file=sys.stderr)
        return 2

    import torch

    from emoengine.engine.emonet_model import open_emonet
    from emoengine.export.emonet import synthetic_crops

    started = time.perf_counter()
    weights, parity_crops = resolve_weights(args.weights)
    device = torch.cuda.get_device_name()
    out = args.out or results_file(device)
    report = {
        "device": device, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpu_count": os.cpu_count(), "weights": str(weights),
        "versions": versions(), "skipped": {k: v for k, v in available.items() if v}, "rows": [],
        "method": "median/mean of runner.infer(batch) wall time after 3 warm-up calls, >= 1 s or 5 calls; "
                  "end to end (uint8 crops host->GPU, float32 outputs GPU->host)",
    }
    ref_model = open_emonet("torch", weights=str(weights), max_batch=len(parity_crops))
    reference = ref_model.runner.infer(parity_crops)
    ref_model.close()
    crops = synthetic_crops(max(BATCHES), seed=7)
    for spec, batches in steps:
        if time.perf_counter() - started > args.budget_s:
            report["rows"].append({"backend": spec, "skipped": f"time budget {args.budget_s:.0f} s spent"})
            continue
        options = parse_backend(spec)
        try:
            model = open_emonet(spec, weights=str(weights), max_batch=max(batches))
        except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others
            report["rows"].append({"backend": spec, "error": f"{type(e).__name__}: {first_line(e)}"})
            write(report, out)
            continue
        try:
            # parity at the largest batch (the fastest rows' shape; no extra compilation or graph capture)
            rows = np.arange(max(batches)) % len(parity_crops)
            got = model.runner.infer(parity_crops[rows])
            diffs, ok = parity(got, {k: v[rows] for k, v in reference.items()}, options.precision)
            for batch in batches:
                times = time_batch(model.runner, crops[:batch])
                mean = statistics.fmean(times)
                row = {"backend": options.label, "precision": options.precision, "batch": batch,
                       "faces_per_s": round(batch / mean, 1), "latency_ms": round(1e3 * statistics.median(times), 3),
                       "iters": len(times), "parity": {k: float(f"{v:.3g}") for k, v in diffs.items()},
                       "parity_pass": ok}
                report["rows"].append(row)
                print(f"{row['backend']:<50} b{batch:<4} {row['faces_per_s']:>10.1f} faces/s "
                      f"{row['latency_ms']:>9.2f} ms  parity {'ok' if ok else 'FAIL'}", flush=True)
                write(report, out)
        except Exception as e:  # noqa: BLE001
            report["rows"].append({"backend": spec, "error": f"{type(e).__name__}: {first_line(e)}"})
        finally:
            model.close()
            torch.cuda.empty_cache()
    report["summary"] = summarize(report["rows"])
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write(report, out)
    print(json.dumps(report["summary"], indent=1))
    print(f"wrote {out}")
    return 0


def resolve_weights(weights: str | None) -> tuple[Path | str, np.ndarray]:
    """The checkpoint to time and the crops to check parity on (golden crops where the golden data is)."""
    from emoengine.export.emonet import synthetic_crops

    golden = Path(os.environ.get("EMOENGINE_GOLDEN", Path(__file__).resolve().parents[1] / ".." / "shared" / "golden"))
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
        return path, crops
    return "random", crops


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        import torch

        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())
    except ImportError:
        pass
    return out


def write(report: dict, path: Path) -> None:
    from emoengine.engine.writers import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
