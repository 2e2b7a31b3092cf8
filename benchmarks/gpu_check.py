"""The work of benchmarks/device_check: one prepared command for a lent GPU machine (see that file and docs/gpu.md).

It needs only what the lent machine has (PyTorch with CUDA, numpy, onnx, onnxruntime CPU, typer, rich, pytest,
psutil) and runs from the source tree (benchmarks/pythonpath on PYTHONPATH). The steps and their limits are the
budget plan of benchmarks/device_plan.py (at most 7 minutes, start-up excluded): PyAV from carry/wheels where
carried; the machine; the GPU tests without compile cases; the reduced bench (compile at batches 1 and 256
first); the end-to-end `run` of benchmarks/pipeline_capacity.py where that script exists (else `not_built`);
the write-up. A step at its limit is stopped with SIGINT, a grace period, then SIGKILL, so its evidence stays: the
tests' JUnit XML, the bench's JSON with every planned row in its state. device-check.json is rewritten after
every step; at the end its section is added to gpu-bench-<device>-<date>.json, in $OUT (else
benchmarks/results). Without CUDA it exits 2 at once with one line ("no CUDA: ...").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emoengine.benchmarks.device_plan import STEP, plan_table, run_step

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / "benchmarks" / "pythonpath"
# the command docs/gpu.md gives for the lent machine's `run` (run from the repository root; carries nothing)
RUN_COMMAND = "PYTHONUNBUFFERED=1 PYTHONPATH=benchmarks/pythonpath python3 benchmarks/device_check"
GPU_TESTS = ("tests/test_gpu_backends.py", "tests/test_trt.py")
WHEELS = Path("carry") / "wheels"
E2E_SCRIPT = Path("benchmarks") / "pipeline_capacity.py"
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
                             capture_output=True, text=True, timeout=STEP["machine"].limit_s / 2)
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
    for pkg in ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "triton", "pytest", "av"):
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
    (the default weights are then made here, BatchNorm-calibrated, from a seed: gpu_bench.resolve_weights)."""
    candidates = [os.environ.get("EMOENGINE_GOLDEN"), REPO / "shared" / "golden", REPO / ".golden"]
    return next((Path(c) for c in candidates if c and (Path(c) / "emonet8.weights.npz").is_file()), None)


def child_env(models: Path, golden: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")])),
           "EMOENGINE_MODELS": str(models), "PYTHONUNBUFFERED": "1"}
    if golden is not None:
        env["EMOENGINE_GOLDEN"] = str(golden)
    return env


def junit_counts(path: Path) -> dict:
    """tests / failures / errors / skipped of a pytest JUnit file, and the ids of what did not pass."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return {"error": f"no JUnit results ({type(e).__name__})"}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {"error": "no testsuite in the JUnit results"}
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    bad = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
           if c.find("failure") is not None or c.find("error") is not None]
    return {**counts, "not_passed": bad}


# -- the steps ---------------------------------------------------------------------------------------------------
def install_wheels(env: dict[str, str], out: Path) -> dict:
    """Step 0: PyAV from the carried wheels, where carry/wheels exists (a lent machine has no PyAV)."""
    if not (REPO / WHEELS).is_dir():
        return {"state": "not_carried", "what": f"no {WHEELS}/: nothing installed"}
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(WHEELS), "av"]
    return run_step(cmd, env, STEP["wheels"].limit_s, out / "device-check-wheels.log", cwd=REPO)


def run_tests(env: dict[str, str], out: Path) -> dict:
    """The GPU tests without the compile cases (the bench measures compile); the JUnit XML survives a stop."""
    junit = out / "device-check-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-m", "not compile",
           f"--junitxml={junit}", *GPU_TESTS]
    return {**run_step(cmd, env, STEP["tests"].limit_s, out / "device-check-tests.log", cwd=REPO),
            **junit_counts(junit)}


def run_bench(env: dict[str, str], json_path: Path) -> dict:
    """The reduced bench; it begins no row whose stated cost no longer fits (those are `cut`), and is stopped
    at its limit; its JSON holds every planned row in its state after every row."""
    limit = STEP["bench"].limit_s
    cmd = [sys.executable, "-m", "emoengine.benchmarks.gpu_bench", "--plan", "reduced", "--out", str(json_path),
           "--deadline-s", str(limit - 15.0)]   # 15 s: the interpreter, torch and CUDA starting
    return run_step(cmd, env, limit, json_path.with_name("device-check-bench.log"), cwd=REPO)


def run_e2e(env: dict[str, str], out: Path) -> dict:
    """issue 20's end-to-end step, where its script exists; its JSON is folded in."""
    if not (REPO / E2E_SCRIPT).is_file():
        return {"state": "not_built", "what": f"{E2E_SCRIPT} is not in this tree"}
    result_json = out / "e2e.json"
    cmd = [sys.executable, str(E2E_SCRIPT), "--device-check", "--json", str(result_json)]
    step = run_step(cmd, env, STEP["e2e"].limit_s, out / "device-check-e2e.log", cwd=REPO)
    try:
        step["result"] = json.loads(result_json.read_text())
    except (OSError, ValueError) as e:
        step["result"] = {"error": f"no e2e JSON ({type(e).__name__})"}
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else "
                        "benchmarks/results)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    why = cuda_missing()
    if why:
        print(f"no CUDA: {why}; device_check needs a CUDA GPU, nothing was run", file=sys.stderr)
        return 2
    from emoengine.benchmarks.gpu_bench import results_file

    out = args.out or Path(os.environ.get("OUT") or REPO / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    golden = golden_folder()
    section = {"plan": plan_table(), "golden": str(golden) if golden else None, "steps": {}}

    def done(name: str, result: dict) -> None:
        section["steps"][name] = result
        section["wall_s"] = round(time.monotonic() - started, 1)
        write_section(out / "device-check.json", section)
        print(f"{name}: {one_line(result)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="emoengine-device-check-") as models:
        env = child_env(Path(models), golden)
        done("wheels", install_wheels(env, out))
        section["machine"] = facts = machine()
        json_path = results_file(facts["gpu"], folder=out)
        done("machine", {"state": "finished", "gpu": facts["gpu"], "golden": section["golden"] or
                         "none: BatchNorm-calibrated weights made here from a seed", "results": str(json_path)})
        done("tests", run_tests(env, out))
        done("bench", run_bench(env, json_path))
        done("e2e", run_e2e(env, out))
    return finish(json_path, section, time.monotonic() - started)


def one_line(result: dict) -> str:
    shown = ("state", "returncode", "tests", "failures", "errors", "skipped", "wall_s", "limit_s", "gpu", "what")
    return json.dumps({k: result[k] for k in shown if k in result})


def write_section(path: Path, section: dict) -> None:
    from emoengine.engine.outputs.writers import write_json

    write_json(path, section)


def finish(json_path: Path, section: dict, wall_s: float) -> int:
    """The bench's JSON with the device_check section added (the section alone where the bench wrote nothing);
    exit 0 only when the tests passed, every bench row was measured and passed parity, and the e2e step (where
    built) finished."""
    report = json.loads(json_path.read_text()) if json_path.is_file() else {}
    section.setdefault("machine", {})["nvidia_smi_after"] = nvidia_smi()
    rows = report.get("results", [])
    states: dict[str, int] = {}
    for r in rows:
        states[r.get("status", "?")] = states.get(r.get("status", "?"), 0) + 1
    measured = [r for r in rows if r.get("status") == "measured"]
    section["rows"] = {"states": states, "parity_failed": [f"{r['backend']} b{r['batch']}" for r in measured
                                                           if r.get("parity", {}).get("pass") is not True]}
    section["wall_s"] = round(wall_s, 1)
    report["device_check"] = section
    write_section(json_path, report)
    write_section(json_path.with_name("device-check.json"), section)
    for label, best in report.get("summary", {}).items():
        print(f"{label:<45} best b{best['best_batch']:<4} {best['faces_per_s']:>10.1f} faces/s  "
              f"x{best['speedup_vs_torch_b1']} vs torch-cuda b1, x{best['speedup_vs_torch_same_batch']} same batch, "
              f"parity {'pass' if best['parity_pass_every_batch'] else 'FAIL'}")
    print(f"write-up: {json.dumps(section['rows'])}; wrote {json_path} in {wall_s:.0f} s")
    steps = section["steps"]
    e2e = steps.get("e2e", {})
    passed = (steps.get("tests", {}).get("returncode") == 0 and rows and len(measured) == len(rows)
              and not section["rows"]["parity_failed"]
              and (e2e.get("state") == "not_built" or e2e.get("returncode") == 0))
    return 0 if passed else 1
