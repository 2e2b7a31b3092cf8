"""Throughput and parity of EmoNet over backends, through the same runner contract `run` uses.

For every backend x batch: faces/s (batch / median time of one `infer` call over >= 5 timed runs after warm-up),
latency p50/p95 of one call, peak RSS, and parity against the fp32 PyTorch reference on the same face crops (per
output max |a-b| and max |a-b| / max |ref| as `export` prints it, expression top-1 agreement, valence/arousal mean
absolute error). The `torch` row at batch 1 is the upstream way (eager fp32, one face per call, default threads)
and every row's `speedup` is relative to it. A backend this machine lacks is a `skipped` row with the reason.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.engine.emonet_model import open_emonet
from emoengine.errors import UserInputError, first_line

DEFAULT_BACKENDS = ("torch", "ort", "ort-int8")
DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_RUNS = 7
DEFAULT_WARMUP = 2
DEFAULT_PARITY_INPUTS = 128
FP32_TOLERANCE = 1e-3        # fp32 backends: worst |a-b| / max|ref| per output (export's comparator)
INT8_TOP1_TARGET = 0.97      # int8: expression top-1 agreement with the fp32 reference
PRECISION = {"torch": "fp32", "torch-cuda": "fp32", "ort": "fp32", "ort-cuda": "fp32", "ort-int8": "int8",
             "trt": "fp32"}


# -- machine facts -----------------------------------------------------------------------------------------------
def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    name = _cpuinfo_field("model name") or platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} cpus)"


def cpu_features() -> list[str]:
    """The vector/matrix extensions that decide fp32 and int8 speed (VNNI: int8 dot products; AMX: tiles)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
              "amx_int8", "amx_bf16")
    return [f for f in wanted if f in flags]


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return None


def machine_facts() -> dict:
    import emoengine

    return {
        "cpu": cpu_name(),
        "cpu_mhz": _cpuinfo_field("cpu MHz"),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "emoengine": emoengine.__version__,
        "versions": _versions(),
        "load_average_1m": _load_average(),
    }


def short_device_slug(machine: dict) -> str:
    """`gpu-nvidia-h100-80gb-hbm3` / `cpu-intel-xeon`: a file-name-friendly short name of the bench device."""
    import re

    gpu = machine.get("gpu")
    name = gpu or machine.get("cpu") or "unknown"
    name = re.sub(r"\((R|TM|C)\)|\(\d+ cpus\)|@.*$|\b(CPU|Processor|Core\(TM\))\b", " ", name, flags=re.I)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40].strip("-") or "unknown"
    return f"{'gpu' if gpu else 'cpu'}-{slug}"


def results_path(report: dict, folder: Path = Path("benchmarks/results"), prefix: str = "") -> Path:
    """benchmarks/results/<prefix><machine>-<date>.json"""
    return folder / f"{prefix}{short_device_slug(report['machine'])}-{report['date'][:10]}.json"


def weights_label(weights: str) -> str:
    """What a results file says of the weights: 'random' or the checkpoint's file name (not the user's path)."""
    return "random" if weights == "random" else Path(weights).name


def save_report(report: dict, json_path: Path | None, prefix: str) -> Path:
    """The benchmark scripts' ending: the load average after the run, then the JSON (default
    benchmarks/results/<prefix><machine>-<date>.json)."""
    report["machine"]["load_average_1m_after"] = _load_average()  # were others busy on this machine meanwhile?
    out = json_path or results_path(report, prefix=prefix)
    write_results(report, out)
    print(f"wrote {out}")
    return out


# -- inputs and measurements -------------------------------------------------------------------------------------
def bench_inputs(n: int) -> np.ndarray:
    """n face crops (uint8 RGB 256x256) from the photos shipped in insightface, varied (export.face_crops)."""
    from emoengine.export.face_crops import EVALUATION_SEED, face_crops

    return face_crops(n, seed=EVALUATION_SEED)


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, so each backend's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # process-wide peak


def time_batch(infer, crops: np.ndarray, runs: int, warmup: int) -> dict:
    """faces/s from the median of `runs` timed calls after `warmup` untimed ones; latency of one call."""
    for _ in range(warmup):
        infer(crops)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        infer(crops)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1000
    median = float(np.median(ms))
    return {
        "faces_per_s": round(len(crops) / (median / 1000), 3),
        "latency_ms": {"p50": round(median, 2), "p95": round(float(np.percentile(ms, 95)), 2),
                       "min": round(float(ms.min()), 2), "runs": [round(float(t), 2) for t in ms]},
    }


def logit_margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 expression logit per input: how close a prediction is to flipping."""
    top = np.sort(logits, axis=1)
    return top[:, -1] - top[:, -2]


def margin_summary(margins: np.ndarray) -> dict:
    qs = (5, 10, 25, 50, 75, 95)
    return {f"p{q}": round(float(np.percentile(margins, q)), 4) for q in qs} if len(margins) else {}


def parity(outs: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict:
    """Per output max abs/rel error, expression top-1 agreement, valence/arousal MAE, flipped inputs' margins."""
    from emoengine.export.onnx_export import relative_diff

    per_output = {}
    for name, r in ref.items():
        if name not in outs:
            continue
        a = np.asarray(outs[name], np.float64)
        per_output[name] = {"max_abs": float(np.abs(a - r).max()) if a.shape == r.shape else float("inf"),
                            "max_rel": relative_diff(a, r)}
    top_ref, top_got = ref["expression"].argmax(1), outs["expression"].argmax(1)
    flipped = top_ref != top_got
    return {
        "outputs": per_output,
        "worst_rel": max(v["max_rel"] for v in per_output.values()),
        "top1_agreement": round(float((~flipped).mean()), 4),
        "valence_mae": float(np.abs(outs["valence"] - ref["valence"]).mean()),
        "arousal_mae": float(np.abs(outs["arousal"] - ref["arousal"]).mean()),
        "expression_mae": float(np.abs(outs["expression"] - ref["expression"]).mean()),
        "flipped_reference_margins": sorted(round(float(m), 4) for m in logit_margins(ref["expression"])[flipped]),
        "inputs": int(len(top_ref)),
    }


def _infer_all(runner, crops: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    parts = [runner.infer({"image": crops[i:i + batch]}) for i in range(0, len(crops), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- the bench ---------------------------------------------------------------------------------------------------
def run_bench(weights: str, backends: list[str], batches: list[int], runs: int = DEFAULT_RUNS,
              warmup: int = DEFAULT_WARMUP, parity_inputs: int = DEFAULT_PARITY_INPUTS,
              threads: int | None = None, progress=None) -> dict:
    """Every backend at every batch size, torch first (it is the parity reference and the speed baseline).

    A backend that cannot open here (no TensorRT, no GPU, ...) becomes `skipped` rows with the one-line reason;
    one that fails while running becomes `failed` rows. Neither stops the others.
    """
    from emoengine.engine.cuda_io import parse_backend
    from emoengine.engine.emonet_model import BACKENDS

    unknown = [b for b in backends if parse_backend(b).name not in BACKENDS]
    if unknown or not backends:
        raise UserInputError(f"unknown backend(s) {', '.join(unknown) or '(none given)'} "
                             f"(choose from {', '.join(BACKENDS)})")
    if not batches or min(batches) < 1 or runs < 1 or warmup < 0 or parity_inputs < 1:
        raise UserInputError("batch sizes, --runs and --parity-inputs must be positive integers, --warmup >= 0")
    say = progress or (lambda _msg: None)
    backends = list(dict.fromkeys(backends))
    backends.sort(key=lambda b: b != "torch")
    batches = sorted(set(batches))
    crops = bench_inputs(max(parity_inputs, max(batches)))
    parity_crops = crops[:parity_inputs]
    machine = machine_facts()
    started = datetime.now(timezone.utc)

    reference, reference_error = None, None
    say(f"torch fp32 reference on {parity_inputs} crops")
    try:
        model = open_emonet("torch", weights=weights, max_batch=max(batches))
        try:
            reference = _infer_all(model.runner, parity_crops, 16)
        finally:
            model.close()
    except Exception as e:  # noqa: BLE001 - no torch here: parity is unknown, timings still come
        reference_error = first_line(e)

    rows: list[dict] = []
    for name in backends:
        base = {"backend": name, "precision": backend_precision(name)}
        t0 = time.perf_counter()
        say(f"{name}: opening")
        try:
            model = open_emonet(name, weights=weights, max_batch=max(batches), threads=threads,
                                **({"cache_optimized": True} if name.startswith("ort") else {}))
        except Exception as e:  # noqa: BLE001 - a backend this machine lacks is a result, not a crash
            rows += [{**base, "batch": b, "status": "skipped", "reason": first_line(e)} for b in batches]
            continue
        open_s = time.perf_counter() - t0
        try:
            runner = model.runner
            if reference is not None:
                say(f"{name}: parity on {parity_inputs} crops")
                # torch is the reference itself (eager fp32 is deterministic on CPU): no second pass
                outs = reference if name == "torch" else _infer_all(runner, parity_crops, max(batches))
                par = parity(outs, reference)
                par["pass"] = _parity_pass(base["precision"], par)
            else:
                par = {"error": f"no PyTorch reference: {reference_error}"}
            meta = {"session_open_s": round(open_s, 2), "threads": threads,
                    "optimized_graph_from_cache": getattr(runner, "optimized_from_cache", None),
                    "int8_recipe": runner.metadata.get("int8_recipe")}
            _reset_peak_rss()  # the backend's own peak: its model plus the timed batches, not the parity scratch
            for b in batches:
                say(f"{name}: batch {b}")
                timing = time_batch(lambda x: runner.infer({"image": x}), crops[:b], runs, warmup)
                rows.append({**base, "batch": b, "status": "ok", **timing, "peak_rss_mb": _peak_rss_mb(),
                             "parity": par, **meta})
        except Exception as e:  # noqa: BLE001 - failing while running is reported too
            done = {r["batch"] for r in rows if r["backend"] == name}
            rows += [{**base, "batch": b, "status": "failed", "reason": f"failed while running: {first_line(e)}"}
                     for b in batches if b not in done]
        finally:
            model.close()
            gc.collect()

    baseline = next((r for r in rows if r["backend"] == "torch" and r["batch"] == 1 and r["status"] == "ok"), None)
    for r in rows:
        if r["status"] == "ok":
            r["speedup_vs_torch_b1"] = round(r["faces_per_s"] / baseline["faces_per_s"], 3) if baseline else None
    machine["load_average_1m_after"] = _load_average()  # were others busy on this machine meanwhile?
    return {
        "machine": machine,
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "config": {
            "weights": "random" if weights == "random" else Path(weights).name,
            "backends": backends, "batches": batches, "runs": runs, "warmup": warmup, "threads": threads,
            "baseline": "torch batch 1: eager fp32, one face per call, torch.inference_mode, default threads",
            "inputs": {"source": "insightface t1.jpg + Tom_Hanks_54745.png, MTCNN faces, random views "
                                 "(shift, zoom, rotation, flip, brightness, contrast, noise)",
                       "parity_inputs": parity_inputs,
                       "reference_logit_margin": (margin_summary(logit_margins(reference["expression"]))
                                                  if reference is not None else None)},
            "tolerances": {"fp32_worst_rel": FP32_TOLERANCE, "int8_top1_agreement": INT8_TOP1_TARGET},
        },
        "results": rows,
        "summary": summarize(rows),
    }


def backend_precision(spec: str) -> str:
    """`ort-int8` -> int8, `torch-cuda:fp16+compile` -> fp16 (options after the colon, engine.cuda_io)."""
    from emoengine.engine.cuda_io import parse_backend

    options = parse_backend(spec)
    return options.precision if options.precision != "fp32" else PRECISION.get(options.name, "fp32")


def _parity_pass(precision: str, par: dict) -> bool:
    if precision == "int8":
        return par["top1_agreement"] >= INT8_TOP1_TARGET
    if precision in ("fp16", "bf16"):  # the per-output tolerances the fp16/bf16 export is held to
        from emoengine.export.fp16 import BF16_TOLERANCE, FP16_TOLERANCE

        tolerance = FP16_TOLERANCE if precision == "fp16" else BF16_TOLERANCE
        return all(v["max_rel"] <= tolerance.get(k, max(tolerance.values()))
                   for k, v in par["outputs"].items())
    return par["worst_rel"] <= FP32_TOLERANCE


def summarize(rows: list[dict]) -> dict:
    """The issue's targets: best ort >= 2x and best ort-int8 >= 3.5x torch b1 (int8 top-1 agreement >= 97%)."""
    def best(backend: str):
        ok = [r for r in rows if r["backend"] == backend and r["status"] == "ok"]
        return max(ok, key=lambda r: r["faces_per_s"]) if ok else None

    out = {}
    for backend, target in (("ort", 2.0), ("ort-int8", 3.5)):
        b = best(backend)
        if b is None or b.get("speedup_vs_torch_b1") is None:
            continue
        out[backend] = {"best_batch": b["batch"], "faces_per_s": b["faces_per_s"],
                        "speedup_vs_torch_b1": b["speedup_vs_torch_b1"], "target": target,
                        "speed_met": b["speedup_vs_torch_b1"] >= target,
                        "parity_pass": b.get("parity", {}).get("pass")}
    return out




def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "tensorrt"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return found


def markdown_table(report: dict) -> str:
    """The README's table: one line per backend x batch, with the machine under it."""
    lines = ["| backend | precision | batch | faces/s | × torch b1 | p50 ms | p95 ms | top-1 agree | worst rel. diff |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['status']}: {r['reason']} "
                         "| | | | | |")
            continue
        par = r.get("parity", {})
        agree = f"{par['top1_agreement']:.1%}" if "top1_agreement" in par else "n/a"
        rel = f"{par['worst_rel']:.1e}" if "worst_rel" in par else "n/a"
        speed = f"{r['speedup_vs_torch_b1']:.2f}" if r.get("speedup_vs_torch_b1") is not None else "n/a"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['faces_per_s']:.2f} | {speed} | "
                     f"{r['latency_ms']['p50']:.0f} | {r['latency_ms']['p95']:.0f} | {agree} | {rel} |")
    m = report["machine"]
    lines.append("")
    lines.append(f"Machine: {m['cpu']}{', ' + m['gpu'] if m['gpu'] else ''}; "
                 f"{', '.join(f'{k} {v}' for k, v in m['versions'].items())}; weights {report['config']['weights']};"
                 f" {report['date'][:16]}Z; 1-min load average {m['load_average_1m']} before, "
                 f"{m['load_average_1m_after']} after.")
    return "\n".join(lines) + "\n"


def write_results(report: dict, path: Path) -> Path:
    from emoengine.engine.writers import write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, report)


def write_markdown(report: dict, path: Path) -> Path:
    from emoengine.engine.writers import write_text_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, markdown_table(report))
