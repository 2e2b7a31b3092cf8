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

from emoengine.benchmarks import device_plan, gpu_check

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


def test_device_check_is_an_executable_script_and_docs_give_its_one_command():
    assert os.access(DEVICE_CHECK, os.X_OK) and DEVICE_CHECK.read_text().startswith("#!/usr/bin/env python3")
    doc = (REPO / "docs" / "gpu.md").read_text()
    assert gpu_check.RUN_COMMAND in doc and len(gpu_check.RUN_COMMAND) < 2000
    for step in device_plan.STEPS:   # the doc's plan is the plan
        assert f"| {step.name} | {step.limit_s:.0f} s |" in doc, step.name


# -- the budget plan ---------------------------------------------------------------------------------------------
def test_the_plan_fits_7_minutes_and_the_reduced_bench_fits_its_step():
    from emoengine.benchmarks import gpu_bench

    assert device_plan.worst_case_s() <= device_plan.BUDGET_S == 420.0
    assert [s.name for s in device_plan.STEPS] == ["wheels", "machine", "tests", "bench", "e2e", "write-up"]
    reduced = gpu_bench.PLANS["reduced"]
    compiled = [(spec, batches) for spec, batches in reduced if "compile" in spec]
    assert compiled == [("torch-cuda:fp16+channels_last+compile", (1, 256))] and reduced.index(compiled[0]) == 1
    # shapes x the stated per-shape cost: 2 compiles x 55 s + 16 eager/graph rows x 3-4 s + 5 openings + reference
    expected = gpu_bench.expected_s(reduced)
    assert expected == 12 + 5 * 4 + 2 * 55 + 12 * 3 + 4 * 4
    assert expected + 15 <= device_plan.STEP["bench"].limit_s   # 15 s: interpreter, torch and CUDA starting
    assert 90 <= device_plan.STEP["e2e"].limit_s <= 120


# -- stopped steps keep their evidence ------------------------------------------------------------------------------
def test_a_pytest_stopped_at_its_limit_still_leaves_its_junit_xml(tmp_path):
    (tmp_path / "test_sleepy.py").write_text("import time\n\ndef test_quick():\n    pass\n\n"
                                            "def test_sleeps():\n    time.sleep(120)\n")
    xml = tmp_path / "r.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", f"--junitxml={xml}",
           "test_sleepy.py"]
    step = device_plan.run_step(cmd, dict(os.environ), 3.0, tmp_path / "step.log", grace_s=20.0, cwd=tmp_path)
    assert step["state"] == "stopped" and step["wall_s"] < 23, step   # SIGINT was enough: no SIGKILL
    counts = gpu_check.junit_counts(xml)
    assert counts["tests"] >= 1 and counts["failures"] == 0, counts   # test_quick is in it
    assert "test_quick" in xml.read_text()


def test_a_step_that_ignores_sigint_is_killed_after_the_grace(tmp_path):
    log = tmp_path / "step.log"
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('started', flush=True); time.sleep(60)"
    step = device_plan.run_step([sys.executable, "-c", code], dict(os.environ), 2.0, log, grace_s=1.0)
    assert step["state"] == "killed" and step["timed_out"] and step["wall_s"] < 30 and "started" in log.read_text()
    done = device_plan.run_step([sys.executable, "-c", "print('ok')"], dict(os.environ), 30.0, log)
    assert (done["returncode"], done["state"]) == (0, "finished")


def test_the_bench_json_holds_every_planned_row_in_its_state_after_every_row(tmp_path, monkeypatch):
    """A stand-in for the GPU rows: the torch CPU backend, with measure_batch failing at batch 2 and SIGINT
    (KeyboardInterrupt) arriving in batch 3, which is then `cut`; and a deadline that cuts a row before it begins."""
    from emoengine.benchmarks import measure
    from emoengine.benchmarks.bench import bench_report, write_results
    from emoengine.export.emonet import synthetic_crops

    out = tmp_path / "bench.json"
    written = []

    def fake_measure(runner, crops, parity_crops, reference, batch, precision, settings):
        if batch == 2:
            raise RuntimeError("kernel exploded")
        if batch == 3:
            raise KeyboardInterrupt
        return {"faces_per_s": 1.0, "parity": {"pass": True}}

    def on_row(report):
        write_results(report, out)
        written.append([r["status"] for r in json.loads(out.read_text())["results"]])

    monkeypatch.setattr(measure, "measure_batch", fake_measure)
    crops = synthetic_crops(2, seed=2)
    settings = measure.BenchSettings(runs=1, min_time_s=0.0, warmup=0)
    plan = [("torch", (1, 2)), ("torch", (3,))]
    with pytest.raises(KeyboardInterrupt):
        bench_report("random", plan, settings, crops, crops, on_row=on_row)
    assert written[0] == ["pending", "pending", "pending"]
    assert written[1] == ["measured", "pending", "pending"]
    assert written[2] == ["measured", "failed", "pending"]
    assert written[-1] == ["measured", "failed", "cut"]
    rows = json.loads(out.read_text())["results"]
    assert "kernel exploded" in rows[1]["traceback"] and "Traceback" in rows[1]["traceback"]
    assert "SIGINT" in rows[2]["reason"]
    cut = measure.run_plan("random", [("torch", (1,))], measure.BenchSettings(deadline_s=1.0, row_cost=lambda *a: 5.0),
                           crops, crops, None)
    assert [(r["status"], r["reason"][:4]) for r in cut.rows] == [("cut", "cut:")]


# -- the write-up ------------------------------------------------------------------------------------------------
def bench_json(path: Path, parity_pass: bool = True) -> Path:
    rows = [{"backend": "torch-cuda", "batch": b, "status": "measured", "parity": {"pass": parity_pass}}
            for b in (1, 8)]
    rows.append({"backend": "torch-cuda:fp16+compile", "batch": 1, "status": "cut", "reason": "cut: deadline"})
    summary = {"torch-cuda": {"best_batch": 8, "faces_per_s": 100.0, "speedup_vs_torch_b1": 2.0,
                              "speedup_vs_torch_same_batch": 1.0, "parity_pass_every_batch": parity_pass}}
    path.write_text(json.dumps({"results": rows, "summary": summary}))
    return path


def section(tests_rc: int = 0) -> dict:
    return {"plan": device_plan.plan_table(), "steps": {"tests": {"returncode": tests_rc, "tests": 10},
                                                         "e2e": {"state": "not_built"}}}


def test_the_json_gets_a_device_check_section_and_the_exit_status_says_what_did_not_run(tmp_path, capsys):
    path = bench_json(tmp_path / "gpu-bench-x.json")
    assert gpu_check.finish(path, section(), 12.0) == 1   # a cut row: not all ran
    written = json.loads(path.read_text())["device_check"]
    assert written["rows"] == {"states": {"measured": 2, "cut": 1}, "parity_failed": []}
    assert "nvidia_smi_after" in written["machine"] and "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "device-check.json").read_text())["rows"] == written["rows"]
    path = bench_json(tmp_path / "gpu-bench-y.json", parity_pass=False)
    gpu_check.finish(path, section(), 12.0)
    assert json.loads(path.read_text())["device_check"]["rows"]["parity_failed"] == ["torch-cuda b1", "torch-cuda b8"]
    missing = tmp_path / "gpu-bench-z.json"   # the bench never wrote: the section alone
    assert gpu_check.finish(missing, section(), 12.0) == 1
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


def test_the_end_to_end_step_is_not_built_where_its_script_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "E2E_SCRIPT", Path("benchmarks") / "no_such_script.py")
    assert gpu_check.run_e2e(dict(os.environ), tmp_path)["state"] == "not_built"
    assert gpu_check.install_wheels(dict(os.environ), tmp_path)["state"] in ("not_carried", "finished")


# -- fair parity -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_checks_default_weights_use_under_half_of_every_tolerance_in_half_and_bfloat16_on_the_cpu():
    """The weights and crops the check judges the GPU on without the golden data, run in real half and bfloat16
    arithmetic on the CPU: a correct fp16/bf16 GPU path has 2x headroom (the previous random weights used 89 %
    of the fp16 valence tolerance). CPU half convolutions are slow: about half a minute here."""
    import copy

    import torch

    from emoengine.compare import relative_diff, tolerance
    from emoengine.export.emonet import EmoNetGraph, calibrated_emonet, parity_crops

    graph = EmoNetGraph(calibrated_emonet(8)).eval()
    crops = torch.from_numpy(parity_crops())
    with torch.inference_mode():
        ref = [o.numpy() for o in graph(crops)]
        for dtype, precision in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
            outs = copy.deepcopy(graph).to(dtype)(crops)
            used = {name: relative_diff(o.float().numpy(), r) / tolerance(precision).limit(name)
                    for name, o, r in zip(graph.output_names, outs, ref, strict=True)}
            assert max(used.values()) < 0.5, (precision, used)
