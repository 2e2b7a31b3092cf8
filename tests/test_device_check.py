"""benchmarks/device_check, the prepared command for a lent GPU machine, checked where there is no GPU: it runs
from the source tree without the editable install (a fresh interpreter that never reads the venv's .pth files),
exits 2 within 30 s with one "no CUDA" line, and its JSON and exit status come from what was measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from emoengine.benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]
DEVICE_CHECK = REPO / "benchmarks" / "device_check"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """site-packages as links, less emoengine: CI installs the project for real (`pip install .`), so its
    site-packages holds an `emoengine` folder that would hide whether the shim finds the tree."""
    folder = tmp_path_factory.mktemp("site")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("emoengine", "__editable__")):
            (folder / entry.name).symlink_to(entry)
    return folder


def uninstalled(site: Path, *pythonpath: Path) -> dict[str, str]:
    """An environment in which `python -S` sees the installed third-party packages (the `site` links on
    PYTHONPATH, whose .pth files are never run) but not emoengine, installed editable or not."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EMOENGINE_GOLDEN")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(site)])
    return env


def cuda_usable() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_the_source_tree_shim_imports_the_tree_without_the_editable_install(tmp_path, site):
    code = ("import sys, emoengine, emoengine.contract, emoengine.engine.backends, emoengine.benchmarks.gpu_bench\n"
            "print(emoengine.engine.backends.__file__, emoengine.benchmarks.gpu_bench.__file__)\n"
            "assert not [m for m in sys.modules if 'editable' in m]\n")
    plain = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=uninstalled(site),
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0 and "No module named 'emoengine'" in plain.stderr   # truly uninstalled
    shimmed = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path,
                             env=uninstalled(site, REPO / "benchmarks" / "pythonpath"), capture_output=True, text=True,
                             timeout=120)
    assert shimmed.returncode == 0, shimmed.stderr
    files = shimmed.stdout.split()
    assert files == [str(REPO / "engine" / "backends" / "__init__.py"), str(REPO / "benchmarks" / "gpu_bench.py")]


@pytest.mark.skipif(cuda_usable(), reason="a CUDA GPU is usable here: device_check would run")
@pytest.mark.parametrize("shim", [True, False], ids=["readme-pythonpath", "no-pythonpath"])
def test_device_check_without_cuda_exits_2_with_one_line_within_30_s(tmp_path, site, shim):
    env = uninstalled(site, *([REPO / "benchmarks" / "pythonpath"] if shim else []))
    env["OUT"] = str(tmp_path / "out")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-S", str(DEVICE_CHECK)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    elapsed = time.monotonic() - started
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("no CUDA"), lines
    assert elapsed < 30, elapsed
    assert not (tmp_path / "out").exists()   # nothing was run, nothing written


def test_device_check_is_an_executable_script_whose_command_fits_a_run_call():
    """RUN_COMMAND (docs/gpu-notes.md's command; the test above runs it, shim and all) fits the device tool's
    2,000 characters, and the script runs as a program."""
    assert os.access(DEVICE_CHECK, os.X_OK) and DEVICE_CHECK.read_text().startswith("#!/usr/bin/env python3")
    assert len(gpu_check.RUN_COMMAND) < 2000


def test_run_step_kills_a_step_at_its_limit_and_keeps_its_log(tmp_path):
    log = tmp_path / "step.log"
    step = gpu_check.run_step([sys.executable, "-c", "print('started', flush=True); import time; time.sleep(60)"],
                              dict(os.environ), 2.0, log)
    assert step["timed_out"] is True and step["wall_s"] < 30 and "started" in log.read_text()
    done = gpu_check.run_step([sys.executable, "-c", "print('ok')"], dict(os.environ), 30.0, log)
    assert (done["returncode"], done["timed_out"]) == (0, False)


def bench_json(path: Path, parity_pass: bool = True) -> Path:
    rows = [{"backend": "torch-cuda", "batch": b, "status": "ok", "parity": {"pass": parity_pass}} for b in (1, 8)]
    rows.append({"backend": "torch-cuda:fp16+compile", "batch": 1, "status": "skipped", "reason": "time budget"})
    summary = {"torch-cuda": {"best_batch": 8, "faces_per_s": 100.0, "speedup_vs_torch_b1": 2.0,
                              "speedup_vs_torch_same_batch": 1.0, "parity_pass_every_batch": parity_pass}}
    path.write_text(json.dumps({"results": rows, "summary": summary}))
    return path


def test_the_json_gets_a_device_check_section_and_the_exit_status_says_what_did_not_run(tmp_path, capsys):
    tests = {"returncode": 0, "tests": 10, "failures": 0}
    bench = {"returncode": 0, "timed_out": False}
    path = bench_json(tmp_path / "gpu-bench-x.json")
    assert gpu_check.finish(path, {"gpu": "X"}, None, tests, bench, 12.0) == 1   # a skipped row: not all ran
    section = json.loads(path.read_text())["device_check"]
    assert section["rows"] == {"ok": 2, "not_ok": 1, "parity_failed": []} and section["tests"] == tests
    assert "nvidia_smi_after" in section["machine"] and "wrote" in capsys.readouterr().out
    path = bench_json(tmp_path / "gpu-bench-y.json", parity_pass=False)
    gpu_check.finish(path, {"gpu": "X"}, None, tests, bench, 12.0)
    assert json.loads(path.read_text())["device_check"]["rows"]["parity_failed"] == ["torch-cuda b1", "torch-cuda b8"]
    missing = tmp_path / "gpu-bench-z.json"   # the bench never wrote: the section alone
    assert gpu_check.finish(missing, {"gpu": "X"}, None, tests, {"timed_out": True}, 12.0) == 1
    assert set(json.loads(missing.read_text())) == {"device_check"}


def test_junit_counts_name_what_did_not_pass(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                   '<testcase classname="tests.test_a" name="t1"/><testcase classname="tests.test_a" name="t2">'
                   '<failure message="x"/></testcase><testcase classname="tests.test_a" name="t3"><skipped/>'
                   '</testcase></testsuite></testsuites>')
    assert gpu_check.junit_counts(xml) == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1,
                                           "not_passed": ["tests.test_a::t2"]}
    assert "error" in gpu_check.junit_counts(tmp_path / "none.xml")
