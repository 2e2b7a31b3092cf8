"""Throughput and parity of EmoNet over backends, through the same runner contract `run` uses.

Parity follows Polygraphy's comparator: per output, worst |a-b| / max|reference| against the PyTorch
reference on the same crops, with a tolerance per output and a verdict that is true or false.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.engine.emonet_model import open_emonet
from emoengine.errors import UserInputError

DEFAULT_TOLERANCE = 1e-3   # fp32 backends; relative to each output's magnitude


@dataclass
class BackendResult:
    backend: str
    ok: bool
    error: str | None = None
    batch_timings: dict[str, dict[str, float]] = field(default_factory=dict)  # batch → {ms, images_per_s}
    parity: dict[str, float] = field(default_factory=dict)                   # output → worst rel diff
    parity_pass: bool | None = None
    parity_error: str | None = None                                          # why parity is missing


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cpus)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cpus)"


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return None


def device_name() -> str:
    """The GPU where there is one (the CUDA backends' device), else the CPU."""
    return gpu_name() or cpu_name()


def short_device_slug(report: dict) -> str:
    """`gpu-nvidia-h100-80gb-hbm3` / `cpu-intel-xeon`: a file-name-friendly short name of the bench device."""
    import re

    gpu = report.get("gpu")
    name = gpu or report.get("cpu") or report.get("device", "unknown")
    name = re.sub(r"\((R|TM|C)\)|\(\d+ cpus\)|@.*$|\b(CPU|Processor|Core\(TM\))\b", " ", name, flags=re.I)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40].strip("-") or "unknown"
    return f"{'gpu' if gpu else 'cpu'}-{slug}"


def results_path(report: dict, folder: Path = Path("benchmarks/results")) -> Path:
    return folder / f"{short_device_slug(report)}-{report['date'][:10]}.json"


def bench_crops(n: int, seed: int = 0) -> np.ndarray:
    """Deterministic smooth face-sized crops (parity does not need real faces; timings do not care)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)


def worst_relative(a: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Per output, the comparator `export` prints (parity needs the torch reference, so torch is here)."""
    from emoengine.export.onnx_export import relative_diff

    return {k: relative_diff(a[k], ref[k]) for k in ref if k in a}


def run_bench(weights: str, backends: list[str], batches: list[int], iters: int = 5,
              tolerance: float = DEFAULT_TOLERANCE, parity_n: int = 4) -> dict:
    """Time each backend at each batch size and compare its outputs with PyTorch's on the same crops.

    A backend this machine lacks (or that fails while running) is a result with `ok: false` and the one-line
    reason, not a crash. The torch reference runs first (and only when something needs it).
    """
    from emoengine.engine.emonet_model import BACKENDS

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise UserInputError(f"unknown backend(s) {', '.join(unknown) or '(none given)'} "
                             f"(choose from {', '.join(BACKENDS)})")
    if not batches or min(batches) < 1 or iters < 1:
        raise UserInputError("batch sizes and --iters must be positive integers")
    backends = list(dict.fromkeys(backends))  # once each, in order, torch first: it is the reference
    backends.sort(key=lambda b: b != "torch")
    crops_parity = bench_crops(parity_n)
    reference: dict[str, np.ndarray] | None = None
    reference_error: str | None = None

    def torch_reference() -> dict[str, np.ndarray] | None:
        nonlocal reference, reference_error
        if reference is None and reference_error is None:
            try:
                ref_model = open_emonet("torch", weights=weights, max_batch=parity_n)
                try:
                    reference = ref_model.runner.infer({"image": crops_parity})
                finally:
                    ref_model.close()
            except Exception as e:  # noqa: BLE001
                reference_error = _one_line(e)
        return reference

    load_before = _load_average()
    results = []
    for name in backends:
        res = BackendResult(name, ok=True)
        results.append(res)
        try:
            model = open_emonet(name, weights=weights, max_batch=max(batches))
        except Exception as e:  # noqa: BLE001 - a backend this machine lacks is a result, not a crash
            res.ok, res.error = False, _one_line(e)
            continue
        try:
            outs = model.runner.infer({"image": crops_parity})
            if name == "torch":
                reference = outs
            elif torch_reference() is not None:
                res.parity = worst_relative(outs, reference)
                res.parity_pass = all(v <= tolerance for v in res.parity.values())
            else:
                res.parity_error = f"no PyTorch reference: {reference_error}"
            for b in batches:
                crops = bench_crops(b, seed=b)
                model.runner.infer({"image": crops})  # warm-up
                t0 = time.perf_counter()
                for _ in range(iters):
                    model.runner.infer({"image": crops})
                dt = (time.perf_counter() - t0) / iters
                res.batch_timings[str(b)] = {"ms": round(dt * 1000, 3), "images_per_s": round(b / dt, 2)}
        except Exception as e:  # noqa: BLE001 - failing while running is reported too
            res.ok, res.error = False, f"failed while running: {_one_line(e)}"
        finally:
            model.close()
    import emoengine

    return {
        "device": device_name(),
        "cpu": cpu_name(),
        "gpu": gpu_name(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "emoengine": emoengine.__version__,
        "python": platform.python_version(),
        "versions": _versions(),
        "weights": "random" if weights == "random" else Path(weights).name,
        "batches": list(batches),
        "iters": iters,
        "tolerance": tolerance,
        "parity_crops": parity_n,
        "load_average_1m": {"before": load_before, "after": _load_average()},  # others busy on this machine?
        "results": [asdict(r) for r in results],
    }


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return found


def write_results(report: dict, path: Path) -> Path:
    from emoengine.engine.writers import write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, report)
