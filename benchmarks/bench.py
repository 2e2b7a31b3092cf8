"""Throughput and parity of EmoNet over backends, through the same runner contract `run` uses: `emoengine bench`,
and the GPU plan of benchmarks/gpu_bench.py, both rows of one machinery (benchmarks/measure.py).

For every backend x batch: faces/s and latency p50/p95 from the median of the timed calls, device time where
the runner measures it, the first call's time (compilation included), peak RSS, and parity at that batch
against the fp32 PyTorch reference on the same face crops (emoengine.compare: per output max |a-b| and
max |a-b| / max |ref|, expression top-1 agreement, valence/arousal mean absolute error). Speed-ups are given
against the upstream way (eager fp32 PyTorch, batch 1) and at equal batch, each labelled. Also here: the
machine facts and result files every benchmark script shares.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.benchmarks.measure import MEASURED, SPEEDUPS, BenchSettings, PlanRow, run_plan, summarize
from emoengine.compare import TOLERANCES, logit_margins
from emoengine.errors import UserInputError, first_line


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
        "host": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "emoengine": emoengine.__version__,
        "versions": _versions(),
        "load_average_1m": _load_average(),
    }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "tensorrt"):
        with contextlib.suppress(PackageNotFoundError):
            found[pkg] = version(pkg)
    if gpu_name() is not None:   # torch is there and sees a GPU
        import torch

        found.update(cuda=str(torch.version.cuda), cudnn=str(torch.backends.cudnn.version()))
    return found


def device_slug(name: str) -> str:
    """`nvidia-h100-80gb-hbm3` / `intel-xeon`: a file-name-friendly short name of a CPU or GPU."""
    name = re.sub(r"\((R|TM|C)\)|\(\d+ cpus\)|@.*$|\b(CPU|Processor|Core\(TM\))\b", " ", name, flags=re.I)
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40].strip("-") or "unknown"


def short_device_slug(machine: dict) -> str:
    """`gpu-nvidia-h100-80gb-hbm3` / `cpu-intel-xeon`: the bench device, GPU where there is one."""
    gpu = machine.get("gpu")
    return f"{'gpu' if gpu else 'cpu'}-{device_slug(gpu or machine.get('cpu') or 'unknown')}"


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


# -- the bench ---------------------------------------------------------------------------------------------------
def bench_inputs(n: int) -> np.ndarray:
    """n face crops (uint8 RGB 256x256) from the photos shipped in insightface, varied (export.face_crops)."""
    from emoengine.export.face_crops import EVALUATION_SEED, face_crops

    return face_crops(n, seed=EVALUATION_SEED)


def torch_reference(weights: str, parity_crops: np.ndarray) -> tuple[dict | None, str | None]:
    """(outputs of eager fp32 PyTorch on the CPU, None), or (None, why not) where it cannot run here."""
    from emoengine.benchmarks.measure import reference_label
    from emoengine.engine.model.emonet_model import open_emonet

    label = reference_label("cpu")
    if label is None:
        return None, "no reference PyTorch backend for the CPU"
    try:
        model = open_emonet(label, weights=weights, max_batch=16)
        try:
            return model.runner.infer(parity_crops), None
        finally:
            model.close()
    except Exception as e:  # no torch here: parity is unknown, timings still come
        return None, first_line(e)


def run_bench(weights: str, backends: list[str], batches: list[int], runs: int = BenchSettings.runs,
              warmup: int = BenchSettings.warmup, parity_inputs: int = BenchSettings.parity_inputs,
              threads: int | None = None, progress=None, min_time_s: float = BenchSettings.min_time_s) -> dict:
    """Every backend at every batch size on face crops, the reference backends first (the parity reference and
    the speed baselines)."""
    from emoengine.engine.backends import backend_row, parse_backend

    if not backends:
        raise UserInputError("unknown backend(s) (none given)")
    options = [parse_backend(b) for b in backends]   # unknown names or options: one line, before any work
    if not batches or min(batches) < 1 or runs < 1 or warmup < 0 or parity_inputs < 1 or min_time_s < 0:
        raise UserInputError("batch sizes, runs and parity_inputs must be positive integers, warmup and "
                             "min_time >= 0", options=("runs", "parity_inputs", "warmup", "min_time"))
    # eager fp32 PyTorch first: the parity reference and the speed baseline
    options.sort(key=lambda o: not (backend_row(o.name).reference and o.label == o.name))
    specs = list(dict.fromkeys(o.label for o in options))
    batches = sorted(set(batches))
    settings = BenchSettings(runs=runs, min_time_s=min_time_s, warmup=warmup, parity_inputs=parity_inputs,
                             threads=threads)
    crops = bench_inputs(max(parity_inputs, max(batches)))
    return bench_report(weights, [(s, tuple(batches)) for s in specs], settings, crops, crops[:parity_inputs],
                        progress=progress, inputs_source="insightface t1.jpg + Tom_Hanks_54745.png, MTCNN faces, "
                        "random views (shift, zoom, rotation, flip, brightness, contrast, noise)")


def bench_report(weights: str, plan: list[PlanRow], settings: BenchSettings, crops: np.ndarray,
                 parity_crops: np.ndarray, progress=None, inputs_source: str = "", on_row=None) -> dict:
    """The plan measured (benchmarks/measure.py) and the report around it: machine, date, configuration, rows,
    summary. `on_row(report)` gets the report with every planned row after each row settles."""
    say = progress or (lambda _msg: None)
    machine, started = machine_facts(), datetime.now(timezone.utc)
    say(f"fp32 PyTorch reference on {len(parity_crops)} crops")
    reference, why = torch_reference(weights, parity_crops)
    report = {
        "machine": machine,
        "date": started.isoformat(timespec="seconds"),
        "config": {
            "weights": weights_label(weights), "backends": [s for s, _ in plan],
            "batches": sorted({b for _, bs in plan for b in bs}), "plan": [[s, list(bs)] for s, bs in plan],
            "runs": settings.runs, "min_time_s": settings.min_time_s, "warmup": settings.warmup,
            "warmup_s": settings.warmup_s, "threads": settings.threads,
            "timing": "faces/s and latency from the median timed call; device_ms from CUDA events around the "
                      "device work (copies excluded), where the runner measures it; first_call_s: the first call "
                      "at that batch, compilation and CUDA-graph capture included",
            "speedups": SPEEDUPS,
            "inputs": {"source": inputs_source, "parity_inputs": len(parity_crops),
                       "reference_logit_margin": (margin_summary(logit_margins(reference["expression"]))
                                                  if reference is not None else None),
                       "reference_error": why},
            "tolerances": {p: {"per_output": t.per_output, "default": t.default, "top1": t.top1}
                           for p, t in TOLERANCES.items()},
        },
    }

    def partial(rows: list[dict]) -> None:
        if on_row:
            on_row({**report, "results": rows, "summary": summarize(rows)})

    result = run_plan(weights, plan, settings, crops, parity_crops, reference, progress=say, on_row=partial)
    machine["load_average_1m_after"] = _load_average()  # were others busy on this machine meanwhile?
    report.update(duration_s=round((datetime.now(timezone.utc) - started).total_seconds(), 1),
                  results=result.rows, summary=summarize(result.rows))
    return report


def margin_summary(margins: np.ndarray) -> dict:
    qs = (5, 10, 25, 50, 75, 95)
    return {f"p{q}": round(float(np.percentile(margins, q)), 4) for q in qs} if len(margins) else {}


# -- writing -----------------------------------------------------------------------------------------------------
def _fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def markdown_table(report: dict) -> str:
    """The README's table: one line per backend x batch, with the machine under it."""
    lines = ["| backend | precision | batch | faces/s | × torch b1 (upstream way) | × torch same batch | p50 ms | "
             "device p50 ms | first call s | top-1 agree | worst rel. diff | parity |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        if r["status"] != MEASURED:
            lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['status']}: {r['reason']} "
                         "| | | | | | | | |")
            continue
        par = r.get("parity", {})
        verdict = {True: "pass", False: "FAIL"}.get(par.get("pass"), "n/a")
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['faces_per_s']:.2f} | "
            f"{_fmt(r.get('speedup_vs_torch_b1'), '.2f')} | {_fmt(r.get('speedup_vs_torch_same_batch'), '.2f')} | "
            f"{r['latency_ms']['p50']:.1f} | {_fmt(r.get('device_ms', {}).get('p50'), '.1f', '–')} | "
            f"{r['first_call_s']:.2f} | {_fmt(par.get('top1_agreement'), '.1%')} | "
            f"{_fmt(par.get('worst_rel'), '.1e')} | {verdict} |")
    m = report["machine"]
    lines.append("")
    lines += [f"`{key}`: {text}." for key, text in SPEEDUPS.items()]
    lines.append("")
    lines.append(f"Machine: {m['cpu']}{', ' + m['gpu'] if m['gpu'] else ''}; "
                 f"{', '.join(f'{k} {v}' for k, v in m['versions'].items())}; weights {report['config']['weights']};"
                 f" {report['date'][:16]}Z; 1-min load average {m['load_average_1m']} before, "
                 f"{m.get('load_average_1m_after')} after.")
    return "\n".join(lines) + "\n"


def write_results(report: dict, path: Path) -> Path:
    """The JSON, atomically: every row, a failed one with its one-line reason and its traceback."""
    from emoengine.engine.outputs.writers import write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, report)


def write_markdown(report: dict, path: Path) -> Path:
    from emoengine.engine.outputs.writers import write_text_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, markdown_table(report))
