"""The measurements behind every bench row, CPU and GPU alike: one timing loop, parity at every batch size with
the one comparator (emoengine.compare), and speed-ups that say what they are relative to.

A plan is a list of (backend spec, batch sizes). Each spec is opened once through `open_emonet` (the path `run`
uses); at each batch size its row gets, in this order:
- `first_call_s`: the first call at that size, alone (torch.compile compiles and CUDA graphs are captured here:
  the compile time of compiled rows);
- `parity`: the parity crops (tiled up to a multiple of the batch, so every call has exactly that size: with
  compile or CUDA graphs each batch size is a different graph) against the fp32 PyTorch CPU reference;
- timing: untimed warm-up calls (at least `warmup` calls and `warmup_s` seconds, so a GPU is clocked up before
  the first timed row), then at least `runs` calls and `min_time_s` seconds of timed calls. Throughput and
  latency both come from the median call; `device_ms` (CUDA events around the device work, copies excluded) is
  reported separately where the runner measures it (CPU runners have no device time);
- `speedup_vs_torch_b1` (the upstream way: eager fp32 PyTorch, one face per call, on the row's device) and
  `speedup_vs_torch_same_batch` (eager fp32 PyTorch at the same batch on the row's device).
A backend that cannot open here becomes `skipped` rows with the one-line reason; a failure while running,
`failed` rows whose tracebacks go to the run's log, not to the JSON.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emoengine.compare import compare
from emoengine.contract import INPUT_NAME
from emoengine.errors import EmoengineError, first_line
from emoengine.memory import peak_rss_mb

PlanRow = tuple[str, tuple[int, ...]]   # (backend spec, batch sizes)


@dataclass(frozen=True)
class BenchSettings:
    runs: int = 7               # at least this many timed calls per row...
    min_time_s: float = 1.0     # ...and at least this many seconds of them
    warmup: int = 2             # untimed calls first: at least this many...
    warmup_s: float = 0.0       # ...and at least this many seconds (a GPU's clocks ramp up)
    parity_inputs: int = 128    # distinct crops compared with the reference
    threads: int | None = None  # ONNX Runtime intra-op threads
    budget_s: float | None = None   # no new backend spec is opened after this many seconds


# -- one row's numbers -------------------------------------------------------------------------------------------
def time_calls(infer: Callable[[np.ndarray], object], crops: np.ndarray, settings: BenchSettings,
               device_ms: Callable[[], float | None] = lambda: None) -> dict:
    """faces/s and latency from the median of the timed calls, after warm-up; device time where measured."""
    started = time.perf_counter()
    calls = 0
    while calls < settings.warmup or time.perf_counter() - started < settings.warmup_s:
        infer(crops)
        calls += 1
    times, device = [], []
    started = time.perf_counter()
    while len(times) < settings.runs or time.perf_counter() - started < settings.min_time_s:
        t0 = time.perf_counter()
        infer(crops)
        times.append(time.perf_counter() - t0)
        d = device_ms()
        if d is not None:
            device.append(d)
    ms = np.asarray(times) * 1000
    median = float(np.median(ms))
    latency = {"p50": round(median, 3), "p95": round(float(np.percentile(ms, 95)), 3), "min": round(float(ms.min()), 3)}
    if len(ms) <= 100:
        latency["runs"] = [round(float(t), 3) for t in ms]
    out = {"faces_per_s": round(len(crops) / (median / 1000), 3), "latency_ms": latency, "calls": len(times),
           "timed_s": round(float(ms.sum()) / 1000, 3)}
    if device:
        d50 = float(np.median(device))
        out["device_ms"] = {"p50": round(d50, 3), "p95": round(float(np.percentile(device, 95)), 3)}
        out["device_faces_per_s"] = round(len(crops) / (d50 / 1000), 3)
    return out


def parity(outs: dict[str, np.ndarray], ref: dict[str, np.ndarray], precision: str = "fp32") -> dict:
    """The comparator's verdict as a row's `parity`: per output max abs/rel error and tolerance, expression top-1
    agreement, valence/arousal/expression mean absolute error, the flipped inputs' reference margins, pass."""
    c = compare(outs, ref, precision)
    mae = {f"{name}_mae": c.outputs[name]["mean_abs"] for name in ("valence", "arousal", "expression")
           if name in c.outputs}
    return {"outputs": {k: {"max_abs": v["max_abs"], "max_rel": v["max_rel"], "tolerance": v["tolerance"]}
                        for k, v in c.outputs.items()},
            "worst_rel": c.worst_rel, "top1_agreement": c.top1_agreement, **mae,
            "flipped_reference_margins": c.flipped_reference_margins, "inputs": c.inputs, "pass": c.passed}


def tiled(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Every array's rows repeated in turn up to n rows."""
    return {k: v[np.arange(n) % len(v)] for k, v in arrays.items()}


def parity_at_batch(runner, parity_crops: np.ndarray, reference: dict[str, np.ndarray], batch: int,
                    precision: str) -> dict:
    """Parity with every call of exactly `batch` crops: the parity crops tiled up to a multiple of `batch`."""
    n = math.ceil(len(parity_crops) / batch) * batch
    outs = runner.infer({INPUT_NAME: tiled({"c": parity_crops}, n)["c"]}, max_batch=batch)
    result = parity(outs, tiled(reference, n), precision)
    result.update(inputs=len(parity_crops), rows=n)
    return result


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, so each row's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- a plan ------------------------------------------------------------------------------------------------------
@dataclass
class PlanResult:
    rows: list[dict]
    tracebacks: list[dict]      # {"backend", "batch", "traceback"} of failed rows: for the log, not the JSON


def measure_batch(runner, crops: np.ndarray, parity_crops, reference, batch: int, precision: str,
                  settings: BenchSettings) -> dict:
    """One backend x batch row's numbers (see the module docstring for the order)."""
    x = crops[:batch]
    t0 = time.perf_counter()
    runner.infer({INPUT_NAME: x})
    first_call_s = round(time.perf_counter() - t0, 4)
    par = (parity_at_batch(runner, parity_crops, reference, batch, precision) if reference is not None
           else {"error": "no PyTorch reference"})
    gc.collect()
    _reset_peak_rss()   # the row's own peak: the model plus the timed calls, not the parity scratch
    timing = time_calls(lambda c: runner.infer({INPUT_NAME: c}), x, settings, lambda: runner.last_device_ms)
    return {"status": "ok", **timing, "first_call_s": first_call_s, "peak_rss_mb": peak_rss_mb(), "parity": par}


def run_plan(weights: str, plan: list[PlanRow], settings: BenchSettings, crops: np.ndarray,
             parity_crops: np.ndarray, reference: dict[str, np.ndarray] | None, progress=None,
             on_row=None) -> PlanResult:
    """Every spec of the plan at each of its batch sizes (see the module docstring); `on_row(rows)` after each
    row and each spec, so that a run cut short keeps what it measured."""
    from emoengine.engine.backends import backend_row, parse_backend
    from emoengine.engine.model.emonet_model import open_emonet

    say = progress or (lambda _msg: None)
    result = PlanResult([], [])
    started = time.perf_counter()
    for spec, batches in plan:
        options = parse_backend(spec)
        base = {"backend": options.label, "precision": options.precision,
                "device": backend_row(options.name).device}
        if settings.budget_s is not None and time.perf_counter() - started > settings.budget_s:
            result.rows += [{**base, "batch": b, "status": "skipped",
                             "reason": f"time budget of {settings.budget_s:.0f} s spent"} for b in batches]
            continue
        say(f"{options.label}: opening")
        t0 = time.perf_counter()
        try:
            model = open_emonet(spec, weights=weights, max_batch=max(batches), threads=settings.threads,
                                cache_optimized=True)
        except EmoengineError as e:   # a backend this machine lacks is a result, not a crash
            result.rows += [{**base, "batch": b, "status": "skipped", "reason": first_line(e)} for b in batches]
            continue
        except Exception as e:
            _failed(result, base, batches, "failed while opening", e)
            continue
        meta = {"session_open_s": round(time.perf_counter() - t0, 2), "threads": settings.threads,
                "optimized_graph_from_cache": getattr(model.runner, "optimized_from_cache", None),
                "int8_recipe": model.runner.metadata.get("int8_recipe")}
        model.runner.device_timing = True
        try:
            for b in batches:
                say(f"{options.label}: batch {b}")
                result.rows.append({**base, "batch": b, **measure_batch(
                    model.runner, crops, parity_crops, reference, b, options.precision, settings), **meta})
                if on_row:   # every row as it is measured: a run killed in a long spec (compiling) keeps it
                    add_speedups(result.rows)
                    on_row(result.rows)
        except Exception as e:  # failing while running is reported too
            done = {r["batch"] for r in result.rows if r["backend"] == base["backend"]}
            _failed(result, base, [b for b in batches if b not in done], "failed while running", e)
        finally:
            model.close()
            gc.collect()
        add_speedups(result.rows)
        if on_row:
            on_row(result.rows)
    return result


def _failed(result: PlanResult, base: dict, batches, what: str, e: BaseException) -> None:
    result.rows += [{**base, "batch": b, "status": "failed", "reason": f"{what}: {type(e).__name__}: {first_line(e)}"}
                    for b in batches]
    result.tracebacks.append({"backend": base["backend"], "batches": list(batches),
                              "traceback": "".join(traceback.format_exception(e))})


# -- speed-ups and summary ---------------------------------------------------------------------------------------
def reference_label(device: str) -> str | None:
    """The eager fp32 PyTorch backend of a device (its row is marked `reference`): the speed baseline there."""
    from emoengine.engine.backends import BACKENDS

    return next((r.name for r in BACKENDS.values() if r.reference and r.device == device), None)


SPEEDUPS = {
    "speedup_vs_torch_b1": "faces/s over eager fp32 PyTorch at batch 1 on the row's device (the upstream way: one "
                           "face per call)",
    "speedup_vs_torch_same_batch": "faces/s over eager fp32 PyTorch at the row's batch on the row's device (the "
                                   "gain at equal batch)",
}


def add_speedups(rows: list[dict]) -> None:
    """Both labelled speed-ups (SPEEDUPS) on every ok row; None where that baseline row was not measured."""
    ok = {(r["backend"], r["batch"]): r for r in rows if r["status"] == "ok"}
    for r in ok.values():
        label = reference_label(r["device"])
        for key, batch in (("speedup_vs_torch_b1", 1), ("speedup_vs_torch_same_batch", r["batch"])):
            base = ok.get((label, batch))
            r[key] = round(r["faces_per_s"] / base["faces_per_s"], 3) if base else None


def summarize(rows: list[dict]) -> dict:
    """Per backend spec: its fastest row, with both speed-ups and whether parity passed at every batch."""
    out = {}
    for label in dict.fromkeys(r["backend"] for r in rows):
        ok = [r for r in rows if r["backend"] == label and r["status"] == "ok"]
        if not ok:
            continue
        best = max(ok, key=lambda r: r["faces_per_s"])
        out[label] = {"best_batch": best["batch"], "faces_per_s": best["faces_per_s"],
                      "speedup_vs_torch_b1": best.get("speedup_vs_torch_b1"),
                      "speedup_vs_torch_same_batch": best.get("speedup_vs_torch_same_batch"),
                      "parity_pass_every_batch": all(r["parity"].get("pass") is True for r in ok)}
    return out
