"""The work of benchmarks/device_check: one prepared command for a lent GPU machine (see that file and README).

It needs only what the lent machine has (PyTorch with CUDA, numpy, onnx, onnxruntime CPU, typer, rich, pytest,
psutil), installs nothing and runs from the source tree (benchmarks/pythonpath on PYTHONPATH). In order, under one
total deadline (default 330 s, so that the whole command ends inside 6 minutes on an H100/H200):
1. the machine: GPU, driver, clocks (nvidia-smi, before and after), versions;
2. the GPU tests (tests/test_gpu_backends.py, tests/test_trt.py) with pytest, capped at `tests_s`; the log and a
   JUnit file go to the output folder;
3. the reduced bench (benchmarks/gpu_bench.py `--plan reduced`: torch-cuda fp32 as the warm baseline, fp16,
   bf16, CUDA graphs and torch.compile at batches 1/8/64/256, each row with its own parity), which writes its JSON
   after every row and is killed at the deadline, so what it measured stays.
Everything goes to one JSON, gpu-bench-<device>-<date>.json, in the output folder ($OUT, else
benchmarks/results): the bench's report with a `device_check` section added. Without CUDA it exits 2 at once with
one line ("no CUDA: ...").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / "benchmarks" / "pythonpath"
# the command the README gives for the lent machine's `run` (run from the repository root; carries nothing)
RUN_COMMAND = "PYTHONUNBUFFERED=1 PYTHONPATH=benchmarks/pythonpath python3 benchmarks/device_check"
GPU_TESTS = ("tests/test_gpu_backends.py", "tests/test_trt.py")
DEADLINE_S = 330.0
TESTS_S = 110.0
WRAP_UP_S = 10.0           # kept for writing the JSON after the bench
SMI_FIELDS = ("name", "driver_version", "pstate", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
              "power.draw", "power.limit", "temperature.gpu", "memory.total", "memory.used")


def cuda_missing() -> str | None:
    """None where PyTorch sees a CUDA GPU; else why not, in a few words."""
    try:
        import torch
    except ImportError as e:
        return f"PyTorch is not installed ({e.name})"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
    return None


def nvidia_smi() -> dict[str, str] | str:
    """The GPU's driver, clocks, power and memory as nvidia-smi reports them, or why they could not be read."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi: {type(e).__name__}: {e}"
    if out.returncode != 0:
        return f"nvidia-smi exited {out.returncode}: {out.stderr.strip()[:200]}"
    first = out.stdout.strip().splitlines()[0]
    return dict(zip(SMI_FIELDS, (v.strip() for v in first.split(",")), strict=False))


def machine() -> dict:
    """What the numbers were measured on: the GPU as PyTorch sees it, nvidia-smi's view, the versions."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    props = torch.cuda.get_device_properties(0)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda),
                "cudnn": str(torch.backends.cudnn.version())}
    for pkg in ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "triton", "pytest"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            "gpus_visible": torch.cuda.device_count(), "nvidia_smi_before": nvidia_smi(),
            "cpu_count": os.cpu_count(), "host": platform.node(), "versions": versions}


def golden_folder() -> Path | None:
    """The golden data where it travelled: $EMOENGINE_GOLDEN, shared/golden or .golden in the tree; else None
    (parity is then against the CPU reference on synthetic crops and random weights; golden-only tests skip)."""
    candidates = [os.environ.get("EMOENGINE_GOLDEN"), REPO / "shared" / "golden", REPO / ".golden"]
    return next((Path(c) for c in candidates if c and (Path(c) / "emonet8.weights.npz").is_file()), None)


def child_env(models: Path, golden: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")])),
           "EMOENGINE_MODELS": str(models), "PYTHONUNBUFFERED": "1"}
    if golden is not None:
        env["EMOENGINE_GOLDEN"] = str(golden)
    return env


def run_step(cmd: list[str], env: dict[str, str], timeout: float, log: Path) -> dict:
    """Run a command with its output in `log`; killed with its children when it outlasts `timeout`."""
    started = time.monotonic()
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code, timed_out = proc.wait(timeout=max(timeout, 1.0)), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code, timed_out = proc.wait(), True
    return {"command": " ".join(cmd[1:]), "returncode": code, "timed_out": timed_out, "limit_s": round(timeout, 1),
            "wall_s": round(time.monotonic() - started, 1), "log": log.name}


def junit_counts(path: Path) -> dict:
    """tests / failures / errors / skipped of a pytest JUnit file, and the ids of what did not pass."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return {"error": f"no JUnit results ({type(e).__name__})"}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    bad = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
           if c.find("failure") is not None or c.find("error") is not None]
    return {**counts, "not_passed": bad}


def run_tests(env: dict[str, str], out: Path, timeout: float) -> dict:
    junit = out / "device-check-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={junit}",
           *GPU_TESTS]
    return {**run_step(cmd, env, timeout, out / "device-check-tests.log"), **junit_counts(junit)}


def run_bench(env: dict[str, str], json_path: Path, timeout: float) -> dict:
    """The reduced bench; it opens no new spec in its last 90 s (a compile can take that), and is killed at the
    deadline (its JSON holds every spec measured by then)."""
    cmd = [sys.executable, "-m", "emoengine.benchmarks.gpu_bench", "--plan", "reduced", "--out", str(json_path),
           "--budget-s", str(max(timeout - 90.0, 0.0))]
    return run_step(cmd, env, timeout, json_path.with_name("device-check-bench.log"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else "
                        "benchmarks/results)")
    parser.add_argument("--deadline-s", type=float, default=DEADLINE_S, help="the whole check, start to end")
    parser.add_argument("--tests-s", type=float, default=TESTS_S, help="at most this long for the GPU tests")
    args = parser.parse_args(argv)
    started = time.monotonic()
    why = cuda_missing()
    if why:
        print(f"no CUDA: {why}; device_check needs a CUDA GPU, nothing was run", file=sys.stderr)
        return 2
    from emoengine.benchmarks.gpu_bench import results_file

    out = args.out or Path(os.environ.get("OUT") or REPO / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    facts, golden = machine(), golden_folder()
    json_path = results_file(facts["gpu"], folder=out)
    smi = facts["nvidia_smi_before"]
    print(f"device_check: {facts['gpu']}, driver {smi.get('driver_version') if isinstance(smi, dict) else smi}; "
          f"golden data: {golden or 'none (random weights, synthetic crops)'}; results: {json_path}", flush=True)

    def left() -> float:
        return args.deadline_s - (time.monotonic() - started) - WRAP_UP_S

    with tempfile.TemporaryDirectory(prefix="emoengine-device-check-") as models:
        env = child_env(Path(models), golden)
        tests = run_tests(env, out, min(args.tests_s, left() - 60.0))
        shown = ("returncode", "tests", "failures", "errors", "skipped", "wall_s", "timed_out")
        print(f"GPU tests: {json.dumps({k: tests.get(k) for k in shown})}", flush=True)
        bench = run_bench(env, json_path, left())
    return finish(json_path, facts, golden, tests, bench, time.monotonic() - started)


def finish(json_path: Path, facts: dict, golden: Path | None, tests: dict, bench: dict, wall_s: float) -> int:
    """The bench's JSON with the device_check section added (the bench's alone, or this alone, where one is
    missing); exit 0 only when the tests passed and every bench row measured and passed parity."""
    from emoengine.engine.outputs.writers import write_json

    report = json.loads(json_path.read_text()) if json_path.is_file() else {}
    facts["nvidia_smi_after"] = nvidia_smi()
    rows = report.get("results", [])
    ok = [r for r in rows if r.get("status") == "ok"]
    report["device_check"] = {"machine": facts, "golden": str(golden) if golden else None, "tests": tests,
                              "bench": bench, "wall_s": round(wall_s, 1),
                              "rows": {"ok": len(ok), "not_ok": len(rows) - len(ok),
                                       "parity_failed": [f"{r['backend']} b{r['batch']}" for r in ok
                                                         if r.get("parity", {}).get("pass") is not True]}}
    write_json(json_path, report)
    for label, best in report.get("summary", {}).items():
        print(f"{label:<45} best b{best['best_batch']:<4} {best['faces_per_s']:>10.1f} faces/s  "
              f"x{best['speedup_vs_torch_b1']} vs torch-cuda b1, x{best['speedup_vs_torch_same_batch']} same batch, "
              f"parity {'pass' if best['parity_pass_every_batch'] else 'FAIL'}")
    print(f"wrote {json_path} in {wall_s:.0f} s")
    passed = tests.get("returncode") == 0 and not bench["timed_out"] and ok and len(ok) == len(rows) and \
        not report["device_check"]["rows"]["parity_failed"]
    return 0 if passed else 1
