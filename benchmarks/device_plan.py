"""The budget plan of benchmarks/device_check, as data, and the one way its steps are run and stopped.

A lent GPU machine gives one try, maybe two, in 15 minutes with start-up; so the check is a fixed list of steps,
each with its own limit, whose worst case (every step at its limit, plus the grace of each stoppable one) is at
most BUDGET_S on an H100/H200, start-up excluded. tests/test_device_check.py asserts that sum, and that the
reduced bench's stated cost (gpu_bench.expected_s: batches x per-shape cost) fits its step. A step at its limit
is asked to stop (SIGINT: pytest then writes its JUnit XML with the finished tests, the bench marks what is left
`cut` and writes its JSON), given GRACE_S, and only then killed (SIGKILL), it and every process it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BUDGET_S = 420.0    # 7 minutes: the whole check, start-up of the machine excluded
GRACE_S = 5.0       # between SIGINT and SIGKILL


@dataclass(frozen=True)
class Step:
    name: str
    limit_s: float
    what: str
    stoppable: bool = True   # a subprocess, stopped at its limit (SIGINT, GRACE_S, SIGKILL)


STEPS: tuple[Step, ...] = (
    Step("wheels", 15.0, "PyAV from carry/wheels (pip --no-index), only where carry/wheels was carried"),
    Step("machine", 10.0, "GPU, driver, clocks, versions (nvidia-smi before; after, in the write-up)", False),
    Step("tests", 60.0, "tests/test_gpu_backends.py and tests/test_trt.py without the compile cases "
                        "(-m 'not compile': the bench measures compile)"),
    Step("bench", 210.0, "the reduced GPU bench (gpu_bench --plan reduced): torch-cuda fp32 first, then compile "
                         "at batches 1 and 256, fp16, fp16 CUDA graphs, bf16"),
    Step("e2e", 95.0, "benchmarks/pipeline_capacity.py --device-check: `emoengine run` on a generated 720p clip, "
                      "torch-cuda fp16 CUDA graphs, a stand-in model, with and without video"),
    Step("write-up", 5.0, "the JSON with every step and row, and one line per step", False),
)
STEP = {s.name: s for s in STEPS}


def worst_case_s(steps: tuple[Step, ...] = STEPS) -> float:
    """Every step at its limit, each stoppable one also through its grace period."""
    return sum(s.limit_s + (GRACE_S if s.stoppable else 0.0) for s in steps)


def _default_sigint() -> None:
    """In the child: SIGINT raises KeyboardInterrupt again. A background job of a shell starts with SIGINT
    ignored, and Python keeps an ignored SIGINT ignored, which would leave only SIGKILL (and no XML)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_step(cmd: list[str], env: dict[str, str], limit_s: float, log: Path, grace_s: float = GRACE_S,
             cwd: Path | None = None) -> dict:
    """Run `cmd` with its output in `log`. At `limit_s`: SIGINT to its process group, `grace_s` to finish, then
    SIGKILL. `state`: finished (by itself), stopped (ended within the grace) or killed."""
    started = time.monotonic()
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_default_sigint)
        try:
            code, state = proc.wait(timeout=max(limit_s, 0.1)), "finished"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                code, state = proc.wait(timeout=grace_s), "stopped"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code, state = proc.wait(), "killed"
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)   # what it started and left behind (compile workers)
    return {"command": " ".join(str(c) for c in cmd[1:]), "returncode": code, "state": state,
            "timed_out": state != "finished", "limit_s": round(limit_s, 1), "wall_s": round(time.monotonic() - started, 1),
            "log": log.name}


def plan_table() -> list[dict]:
    """The plan as it goes into the JSON and docs/gpu.md."""
    return [{"step": s.name, "limit_s": s.limit_s, "grace_s": GRACE_S if s.stoppable else 0.0, "what": s.what}
            for s in STEPS]
