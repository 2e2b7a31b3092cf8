"""The int8 speed/accuracy frontier: which EmoNet layer groups stay float, and what each choice costs.

    python -m emoengine.benchmarks.int8_frontier --weights emonet_8.pth [--json FILE]

For each recipe (layer groups kept float x quantised op set x calibration method) it makes the int8 model (cached
in models/, calibration shared), measures expression top-1 agreement and the other parity numbers against the
fp32 PyTorch reference on the bench's face crops, and times it at batch 1 and 8 (faces/s, plus CPU-ms per face,
which stays meaningful when other processes share the cores). The fp32 ORT model and torch batch 1 are timed in
the same run for scale.

    ... --min-agreement 0.97 [--flavour s8s8]

walks the frontier instead of the fixed RECIPES: the greedy search `emoengine export --min-agreement` runs
(export.int8_search, the same code), judged here against the PyTorch reference on the bench's crops, then times
the recipe it chose.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from emoengine.benchmarks.bench import bench_inputs, machine_facts, margin_summary, save_report, weights_label
from emoengine.benchmarks.measure import BenchSettings, parity, time_calls
from emoengine.compare import INT8_TOP1_TARGET, logit_margins

# (keep float, op set, calibration method): from everything int8 to only the cheapest-to-keep groups float
RECIPES: list[tuple[tuple[str, ...], str, str]] = [
    ((), "conv", "minmax"),
    (("fc",), "conv", "minmax"),
    (("emotion",), "conv", "minmax"),
    (("emotion", "hourglass1"), "conv", "minmax"),
    (("emotion", "hourglass0"), "conv", "minmax"),
    (("emotion", "stem"), "conv", "minmax"),
    (("emotion", "hourglass0", "hourglass1"), "conv", "minmax"),
    ((), "all", "minmax"),
    (("emotion",), "all", "minmax"),
]
# (Percentile and Entropy calibration are left out: onnxruntime's histogram calibrators keep every calibrated
# activation of every crop in memory, about 0.5 GB per face crop for EmoNet.)


def cpu_ms_per_face(runner, crops: np.ndarray, runs: int = 3) -> float:
    """Process CPU time per face (all threads): the work done, whoever else is using the cores."""
    runner.infer(crops)
    t0 = time.process_time()
    for _ in range(runs):
        runner.infer(crops)
    return round((time.process_time() - t0) / runs / len(crops) * 1000, 1)


def measure(runner, crops, reference, parity_inputs, runs, batches, precision: str = "int8") -> dict:
    """Parity (an int8 model's judged by top-1 agreement) and speed of one model."""
    row: dict[str, Any] = {"parity": parity(runner.infer(crops[:parity_inputs], max_batch=8), reference, precision)}
    for b in batches:
        row[f"b{b}"] = time_calls(runner.infer, crops[:b], BenchSettings(runs=runs, min_time_s=0.0, warmup=1))
    row["cpu_ms_per_face_b1"] = cpu_ms_per_face(runner, crops[:1])
    return row


def torch_reference_and_speed(args, crops: np.ndarray) -> tuple[dict, dict | None]:
    """The fp32 PyTorch outputs on the parity crops (from --reference-cache where it exists) and, unless
    --no-torch-timing, its batch-1 speed."""
    from emoengine.engine.model.emonet_model import open_emonet

    torch_model = open_emonet("torch", weights=args.weights)
    try:
        cache = args.reference_cache
        if cache and cache.is_file():
            reference = dict(np.load(cache))
        else:
            reference = torch_model.runner.infer(crops[:args.parity_inputs], max_batch=16)
            if cache:
                np.savez(cache, **reference)  # pyright: ignore[reportArgumentType]  output names, never allow_pickle
        torch_b1 = None if args.no_torch_timing else time_calls(
            torch_model.runner.infer, crops[:1], BenchSettings(runs=args.runs, min_time_s=0.0, warmup=1))
    finally:
        torch_model.close()
    if torch_b1:
        print(f"torch b1 {torch_b1['faces_per_s']:.2f} faces/s", flush=True)
    return reference, torch_b1


def search_frontier(args, request, crops: np.ndarray, reference: dict) -> tuple[tuple[str, ...], dict]:
    """export --min-agreement's greedy search (export.int8_search), judged against the PyTorch reference."""
    from emoengine.export.int8_search import AgreementCheck, search_keep_float
    from emoengine.export.prepare import cached_int8_onnx_for

    check = AgreementCheck(crops[:args.parity_inputs], reference)
    best, trials = search_keep_float(
        lambda keep: cached_int8_onnx_for(request, keep_float=keep, calibration_crops=args.calibration_crops,
                                          flavour=args.flavour),
        check, args.min_agreement, say=lambda msg: print(msg, flush=True))
    return best.keep_float, {"min_agreement": args.min_agreement, "flavour": args.flavour,
                             "met": best.agreement >= args.min_agreement, "tried": [t.summary() for t in trials]}


def recipe_row(args, request, recipe, crops, reference, batches, torch_b1, fp32) -> dict:
    """One recipe's model (made once, cached in models/), its parity and speed."""
    from emoengine.engine.backends import OrtRunner
    from emoengine.export.prepare import cached_int8_onnx_for
    from emoengine.export.quantize import recipe_tag

    keep, ops, method = recipe
    t0 = time.perf_counter()
    path = cached_int8_onnx_for(request, keep_float=keep, ops=ops, method=method,
                                calibration_crops=args.calibration_crops, flavour=args.flavour)
    made_s = time.perf_counter() - t0
    with OrtRunner(path) as runner:
        row = measure(runner, crops, reference, args.parity_inputs, args.runs, batches)
    best = max(row[f"b{b}"]["faces_per_s"] for b in batches)
    row.update(recipe=recipe_tag(args.calibration_crops, method, keep, ops, args.flavour), keep_float=list(keep),
               ops=ops, method=method, make_s=round(made_s, 1), best_faces_per_s=best,
               speedup_vs_torch_b1=round(best / torch_b1["faces_per_s"], 3) if torch_b1 else None,
               speedup_vs_ort_fp32_cpu=round(fp32["cpu_ms_per_face_b1"] / row["cpu_ms_per_face_b1"], 3),
               meets_top1=row["parity"]["top1_agreement"] >= INT8_TOP1_TARGET)
    print(f"{row['recipe']:>48}: top-1 {row['parity']['top1_agreement']:.1%}, best {best:.2f} faces/s "
          f"({row['speedup_vs_torch_b1']}x torch b1), {row['cpu_ms_per_face_b1']} CPU-ms/face "
          f"({row['speedup_vs_ort_fp32_cpu']:.2f}x ort fp32 work)", flush=True)
    return row


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--parity-inputs", type=int, default=BenchSettings.parity_inputs)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--calibration-crops", type=int, default=64)
    ap.add_argument("--only", type=int, nargs="*", help="indices into RECIPES (default: all)")
    ap.add_argument("--reference-cache", type=Path, help="npz of the torch reference outputs (reused if present)")
    ap.add_argument("--no-torch-timing", action="store_true")
    ap.add_argument("--min-agreement", type=float, help="search the frontier for this top-1 agreement instead")
    ap.add_argument("--flavour", default="u8s8", help="QDQ flavour (export.quantize.INT8_FORMATS)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from emoengine.engine.backends import OrtRunner, request_for
    from emoengine.export.prepare import cached_onnx_for

    request = request_for("ort", weights=args.weights)
    batches = [int(b) for b in args.batches.split(",")]
    crops = bench_inputs(max(args.parity_inputs, max(batches)))
    machine, started = machine_facts(), datetime.now(timezone.utc)
    reference, torch_b1 = torch_reference_and_speed(args, crops)
    fp32_path = cached_onnx_for(request)
    with OrtRunner(fp32_path) as runner:
        fp32 = measure(runner, crops, reference, args.parity_inputs, args.runs, batches, "fp32")
    print(f"ort fp32 b1 {fp32['b1']['faces_per_s']:.2f} faces/s, {fp32['cpu_ms_per_face_b1']} CPU-ms/face", flush=True)

    recipes = [r for i, r in enumerate(RECIPES) if not args.only or i in args.only]
    search = None
    if args.min_agreement is not None:
        keep, search = search_frontier(args, request, crops, reference)
        recipes = [(keep, "conv", "minmax")]
    rows = [recipe_row(args, request, recipe, crops, reference, batches, torch_b1, fp32) for recipe in recipes]
    report = {
        "machine": machine, "date": started.isoformat(timespec="seconds"),
        "config": {"weights": weights_label(args.weights),
                   "parity_inputs": args.parity_inputs, "runs": args.runs, "batches": batches,
                   "calibration_crops": args.calibration_crops, "int8_top1_target": INT8_TOP1_TARGET,
                   "reference_logit_margin": margin_summary(logit_margins(reference["expression"]))},
        "torch_b1": torch_b1, "ort_fp32": fp32, "recipes": rows, "search": search,
    }
    return save_report(report, args.json, prefix="int8-frontier-")


if __name__ == "__main__":
    main()
