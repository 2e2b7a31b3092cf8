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
Every planned row is in the results from the start, `pending`, and settles as `measured`; `skipped` (the
backend cannot open here: its one-line reason); `failed` (its one-line reason and its traceback); or `cut` (its
expected cost no longer fits the deadline, or the run was stopped with SIGINT).
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
    deadline_s: float | None = None  # no row is begun whose expected cost does not fit before this (from start)
    row_cost: Callable[[str, int, bool], float] | None = None   # (spec, batch, opening) -> expected seconds


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
    latency: dict[str, float | list[float]] = {
        "p50": round(median, 3), "p95": round(float(np.percentile(ms, 95)), 3), "min": round(float(ms.min()), 3)}
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
# The states of a planned row. Every row of the plan is in the results from the start (`pending`) and ends as one
# of the others; a run stopped at its deadline (or by SIGINT) leaves `cut` rows, never missing ones.
PENDING, MEASURED, FAILED, CUT, SKIPPED = "pending", "measured", "failed", "cut", "skipped"
ROW_KEYS = ("backend", "precision", "device", "batch")   # what a row is; the rest is what happened to it


@dataclass
class PlanResult:
    rows: list[dict]


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
    return {**timing, "first_call_s": first_call_s, "peak_rss_mb": peak_rss_mb(), "parity": par}


def planned_rows(plan: list[PlanRow]) -> list[dict]:
    """Every backend x batch of the plan as a `pending` row, in plan order."""
    from emoengine.engine.backends import backend_row, parse_backend

    rows = []
    for spec, batches in plan:
        options = parse_backend(spec)
        base = {"backend": options.label, "precision": options.precision, "device": backend_row(options.name).device}
        rows += [{**base, "batch": b, "status": PENDING} for b in batches]
    return rows


def settle(row: dict, status: str, **fields) -> None:
    """A row's outcome: what it is (ROW_KEYS) stays, the rest is replaced."""
    for key in [k for k in row if k not in ROW_KEYS]:
        del row[key]
    row.update(status=status, **fields)


class Clock:
    """The plan's deadline (`settings.deadline_s` from the start): a row is begun only where its expected cost
    (`settings.row_cost(spec, batch)`) still fits before it."""

    def __init__(self, settings: BenchSettings) -> None:
        self.settings, self.started = settings, time.perf_counter()

    def fits(self, spec: str, batch: int, opening: bool = False) -> bool:
        s = self.settings
        if s.deadline_s is None:
            return True
        cost = s.row_cost(spec, batch, opening) if s.row_cost else 0.0
        return time.perf_counter() - self.started + cost <= s.deadline_s

    def cut_reason(self) -> str:
        return f"cut: its expected cost does not fit in the {self.settings.deadline_s:.0f} s deadline"


def run_plan(weights: str, plan: list[PlanRow], settings: BenchSettings, crops: np.ndarray,
             parity_crops: np.ndarray, reference: dict[str, np.ndarray] | None, progress=None,
             on_row=None) -> PlanResult:
    """Every spec of the plan at each of its batch sizes (see the module docstring). `on_row(rows)` with every
    planned row, first all `pending`, then after every row that settles, so that a run killed in a long
    (compiling) row keeps the rest; SIGINT (KeyboardInterrupt) cuts what is left, publishes, and re-raises."""
    result = PlanResult(planned_rows(plan))
    clock = Clock(settings)

    def publish() -> None:
        add_speedups(result.rows)
        if on_row:
            on_row(result.rows)

    publish()
    try:
        first = 0
        for spec, batches in plan:   # planned_rows: each spec's rows in turn
            rows, first = result.rows[first:first + len(batches)], first + len(batches)
            _run_spec(weights, spec, rows, settings, clock, crops, parity_crops, reference, progress, publish)
    except KeyboardInterrupt:
        for row in result.rows:
            if row["status"] == PENDING:
                settle(row, CUT, reason="cut: the run was stopped (SIGINT) before this row finished")
        publish()
        raise
    return result


def _run_spec(weights: str, spec: str, rows: list[dict], settings: BenchSettings, clock: Clock, crops,
              parity_crops, reference, progress, publish) -> None:
    """One backend spec: opened once, then each of its rows measured, cut (no time left) or failed."""
    from emoengine.engine.backends import parse_backend
    from emoengine.engine.model.emonet_model import open_emonet

    say = progress or (lambda _msg: None)
    options = parse_backend(spec)
    if not clock.fits(spec, rows[0]["batch"], opening=True):
        for row in rows:
            settle(row, CUT, reason=clock.cut_reason())
        publish()
        return
    say(f"{options.label}: opening")
    t0 = time.perf_counter()
    try:
        model = open_emonet(spec, weights=weights, max_batch=max(r["batch"] for r in rows), threads=settings.threads,
                            cache_optimized=True)
    except EmoengineError as e:   # a backend this machine lacks is a result, not a crash
        for row in rows:
            settle(row, SKIPPED, reason=first_line(e))
        publish()
        return
    except Exception as e:
        _failed(rows, "failed while opening", e)
        publish()
        return
    meta = {"session_open_s": round(time.perf_counter() - t0, 2), "threads": settings.threads,
            "optimized_graph_from_cache": getattr(model.runner, "optimized_from_cache", None),
            "int8_recipe": model.runner.metadata.get("int8_recipe")}
    model.runner.device_timing = True
    try:
        for row in rows:
            if not clock.fits(spec, row["batch"]):
                settle(row, CUT, reason=clock.cut_reason())
            else:
                say(f"{options.label}: batch {row['batch']}")
                settle(row, MEASURED, **measure_batch(model.runner, crops, parity_crops, reference, row["batch"],
                                                      options.precision, settings), **meta)
            publish()
    except Exception as e:  # failing while running is reported too, with its traceback
        _failed([r for r in rows if r["status"] == PENDING], "failed while running", e)
        publish()
    finally:
        model.close()
        gc.collect()


def _failed(rows: list[dict], what: str, e: BaseException) -> None:
    trace = "".join(traceback.format_exception(e))
    for row in rows:
        settle(row, FAILED, reason=f"{what}: {type(e).__name__}: {first_line(e)}", traceback=trace)


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
    ok = {(r["backend"], r["batch"]): r for r in rows if r["status"] == MEASURED}
    for r in ok.values():
        label = reference_label(r["device"])
        for key, batch in (("speedup_vs_torch_b1", 1), ("speedup_vs_torch_same_batch", r["batch"])):
            base = ok.get((label, batch))
            r[key] = round(r["faces_per_s"] / base["faces_per_s"], 3) if base else None


def summarize(rows: list[dict]) -> dict:
    """Per backend spec: its fastest row, with both speed-ups and whether parity passed at every batch."""
    out = {}
    for label in dict.fromkeys(r["backend"] for r in rows):
        ok = [r for r in rows if r["backend"] == label and r["status"] == MEASURED]
        if not ok:
            continue
        best = max(ok, key=lambda r: r["faces_per_s"])
        out[label] = {"best_batch": best["batch"], "faces_per_s": best["faces_per_s"],
                      "speedup_vs_torch_b1": best.get("speedup_vs_torch_b1"),
                      "speedup_vs_torch_same_batch": best.get("speedup_vs_torch_same_batch"),
                      "parity_pass_every_batch": all(r["parity"].get("pass") is True for r in ok)}
    return out
