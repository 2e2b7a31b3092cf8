"""The bench machinery every row goes through, CPU and GPU rows alike (benchmarks/measure.py), checked on the CPU:
parity at every batch size, throughput and latency from the median, at least `runs` calls and `min_time_s`
seconds per row (no cap), device time apart from end-to-end time, warm-up before timing, both speed-ups
labelled, failed rows with their traceback in the JSON, torch.compile's default mode.

Real runners here are the `torch` CPU backend (eager fp32 PyTorch, random weights), labelled as such; the clock
is a fake one where a test checks how calls are counted, so nothing here asserts a measured time.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from emoengine.benchmarks import measure
from emoengine.benchmarks.measure import BenchSettings, add_speedups, parity_at_batch, time_calls
from emoengine.compare import FP32_TOLERANCE
from emoengine.engine.backends import parse_backend
from emoengine.export.emonet import synthetic_crops


@pytest.fixture(scope="module")
def torch_cpu():
    """The `torch` CPU backend (random weights) and its outputs on 4 crops: the reference of these tests."""
    from emoengine.engine.model.emonet_model import open_emonet

    model = open_emonet("torch", weights="random")
    crops = synthetic_crops(4, seed=5)
    yield model.runner, crops, model.runner.infer(crops)
    model.close()


class FakeClock:
    """perf_counter that advances only when the fake workload says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def scripted(clock: FakeClock, durations: list[float]):
    """An `infer` whose n-th call takes durations[n] seconds of fake time (the last one repeats)."""
    calls = []

    def infer(_crops):
        clock.now += durations[min(len(calls), len(durations) - 1)]
        calls.append(clock.now)

    return infer, calls


# -- timing ------------------------------------------------------------------------------------------------------
def test_throughput_and_latency_both_come_from_the_median_call(clock):
    infer, _ = scripted(clock, [0.0, 0.0, 0.1, 0.1, 0.1, 2.0, 2.0])   # 2 warm-up calls, then 5 timed
    out = time_calls(infer, np.zeros((8, 1)), BenchSettings(runs=5, min_time_s=0.0, warmup=2))
    assert out["calls"] == 5
    assert out["latency_ms"]["p50"] == pytest.approx(100.0)
    assert out["faces_per_s"] == pytest.approx(8 / 0.1)          # the mean (0.86 s) would say 9.3 faces/s
    assert out["latency_ms"]["runs"] == pytest.approx([100, 100, 100, 2000, 2000])


def test_every_row_gets_at_least_runs_calls_and_min_time_seconds_without_a_cap(clock):
    infer, calls = scripted(clock, [0.001])
    out = time_calls(infer, np.zeros((1, 1)), BenchSettings(runs=5, min_time_s=1.0, warmup=0))
    assert out["calls"] >= 1000 and out["timed_s"] >= 1.0        # the old 200-call cap would stop at 0.2 s
    assert "runs" not in out["latency_ms"]                        # long rows keep the summary, not every call
    infer, _ = scripted(clock, [3.0])
    assert time_calls(infer, np.zeros((1, 1)), BenchSettings(runs=5, min_time_s=1.0, warmup=0))["calls"] == 5


def test_warm_up_lasts_warmup_calls_and_warmup_seconds_before_the_first_timed_call(clock):
    infer, calls = scripted(clock, [0.1])
    out = time_calls(infer, np.zeros((1, 1)), BenchSettings(runs=5, min_time_s=0.0, warmup=2, warmup_s=1.0))
    assert len(calls) - out["calls"] >= 10   # 1 s of untimed 0.1 s calls, not just 2


def test_device_time_is_reported_apart_from_end_to_end_time(clock):
    infer, _ = scripted(clock, [0.010])
    settings = BenchSettings(runs=5, min_time_s=0.0, warmup=0)
    out = time_calls(infer, np.zeros((4, 1)), settings, device_ms=lambda: 2.5)   # a CUDA runner's events
    assert out["latency_ms"]["p50"] == pytest.approx(10.0) and out["device_ms"]["p50"] == pytest.approx(2.5)
    assert out["device_faces_per_s"] == pytest.approx(4 / 0.0025)
    cpu = time_calls(infer, np.zeros((4, 1)), settings)   # a CPU runner has no device time
    assert "device_ms" not in cpu and "device_faces_per_s" not in cpu


def test_rows_last_a_second_by_default_and_gpu_rows_are_warmed_up_for_a_second_first(monkeypatch):
    """Only a test that says so (BenchSettings(min_time_s=0.0)) shortens a row: `emoengine bench` and
    `run_bench` called without --min-time hand the rows >= 1 s, the GPU plan and device_check's reduced plan
    time >= 1 s per row and warm up >= 1 s before timing, so the baseline (the first row) is not measured on a
    cold GPU. The settings are caught where they reach the row machinery (bench_report), before any timing."""
    from emoengine.benchmarks import bench
    from emoengine.benchmarks.gpu_bench import GPU_SETTINGS, PLANS
    from emoengine.cli.main import main as cli_main

    reached = []

    class Caught(Exception):
        pass

    def catch(weights, plan, settings, *args, **kwargs):
        reached.append(settings)
        raise Caught("settings caught")

    monkeypatch.setattr(bench, "bench_report", catch)
    monkeypatch.setattr(bench, "bench_inputs", lambda n: synthetic_crops(n, seed=0))
    with pytest.raises(Caught):
        bench.run_bench("random", ["torch"], [1])
    with pytest.raises(SystemExit) as e:
        cli_main(["bench", "--backends", "torch", "--batch", "1"])
    assert e.value.code == 1 and len(reached) == 2
    assert all(s.min_time_s >= 1.0 for s in reached) and BenchSettings().min_time_s >= 1.0
    assert GPU_SETTINGS.min_time_s >= 1.0 and GPU_SETTINGS.warmup_s >= 1.0
    reduced = PLANS["reduced"]
    assert reduced[0] == ("torch-cuda", (1, 8, 64, 256))   # eager fp32 first: the baseline of both speed-ups
    assert {parse_backend(s).name for s, _ in reduced} == {"torch-cuda"}   # all the lent machine can run
    assert [s for s, _ in reduced if "compile" in s] and [s for s, _ in reduced if "cudagraph" in s]


# -- parity at every batch ---------------------------------------------------------------------------------------
def test_parity_runs_every_call_at_exactly_the_rows_batch(torch_cpu, monkeypatch):
    runner, crops, reference = torch_cpu
    sizes = []
    real = runner._infer
    monkeypatch.setattr(runner, "_infer", lambda feeds: sizes.append(len(feeds["image"])) or real(feeds))
    for batch, calls in ((1, [1, 1, 1, 1]), (3, [3, 3]), (8, [8])):
        sizes.clear()
        par = parity_at_batch(runner, crops, reference, batch, "fp32")
        assert sizes == calls, batch   # the 4 crops tiled up to a multiple of the batch
        assert par["rows"] == sum(calls) and par["inputs"] == 4
        assert par["pass"] is True and par["top1_agreement"] == 1.0 and par["worst_rel"] < FP32_TOLERANCE


@pytest.mark.slow   # over ~10 s on 2 cores (docs/development.md)
def test_a_variant_wrong_at_one_batch_size_fails_parity_at_that_batch_only(torch_cpu, monkeypatch):
    """As a compiled graph or a CUDA graph of one batch size could be: each batch is judged on its own."""
    runner, crops, reference = torch_cpu
    real = runner._infer

    def wrong_at_3(feeds):
        out = real(feeds)
        if len(feeds["image"]) == 3:
            out["heatmap"] = out["heatmap"] * 1.01
        return out

    monkeypatch.setattr(runner, "_infer", wrong_at_3)
    verdicts = {b: measure.measure_batch(runner, crops, crops, reference, b, "fp32",
                                         BenchSettings(runs=1, min_time_s=0.0, warmup=0))["parity"]["pass"]
                for b in (1, 2, 3, 4)}
    assert verdicts == {1: True, 2: True, 3: False, 4: True}


def test_every_row_of_a_plan_has_its_own_parity_and_first_call_time(torch_cpu):
    _, crops, reference = torch_cpu
    seen = []
    result = measure.run_plan("random", [("torch", (1, 3))], BenchSettings(runs=1, min_time_s=0.0, warmup=0),
                              crops, crops, reference, on_row=lambda rows: seen.append([r["status"] for r in rows]))
    # every planned row from the start, rewritten as each settles: a run killed in a compile keeps the others
    assert seen[:3] == [["pending", "pending"], ["measured", "pending"], ["measured", "measured"]]
    assert [(r["backend"], r["batch"], r["status"]) for r in result.rows] == [("torch", 1, "measured"), ("torch", 3, "measured")]
    assert [r["parity"]["rows"] for r in result.rows] == [4, 6]
    assert all(r["parity"]["pass"] and r["first_call_s"] > 0 and r["device"] == "cpu" for r in result.rows)
    assert all("device_ms" not in r for r in result.rows)   # torch on the CPU: no device time


# -- speed-ups ---------------------------------------------------------------------------------------------------
def row(backend: str, batch: int, faces_per_s: float, device: str = "cpu") -> dict:
    return {"backend": backend, "batch": batch, "faces_per_s": faces_per_s, "device": device, "status": "measured"}


def test_speedups_are_against_the_upstream_way_and_at_equal_batch_on_the_rows_device():
    rows = [row("torch", 1, 10.0), row("torch", 8, 20.0), row("ort", 1, 12.0), row("ort", 8, 30.0),
            row("ort", 32, 31.0),
            row("torch-cuda", 1, 100.0, "cuda"), row("torch-cuda", 64, 1000.0, "cuda"),
            row("torch-cuda:fp16+compile", 64, 2500.0, "cuda"), {**row("trt", 1, 0, "cuda"), "status": "skipped"}]
    add_speedups(rows)
    by = {(r["backend"], r["batch"]): r for r in rows}
    assert by[("torch", 1)]["speedup_vs_torch_b1"] == 1.0 and by[("torch", 8)]["speedup_vs_torch_same_batch"] == 1.0
    assert by[("ort", 8)]["speedup_vs_torch_b1"] == 3.0 and by[("ort", 8)]["speedup_vs_torch_same_batch"] == 1.5
    assert by[("ort", 32)]["speedup_vs_torch_same_batch"] is None    # no eager torch row at batch 32
    compiled = by[("torch-cuda:fp16+compile", 64)]
    assert compiled["speedup_vs_torch_b1"] == 25.0                   # vs torch-cuda b1, the upstream way on a GPU
    assert compiled["speedup_vs_torch_same_batch"] == 2.5            # the gain at equal batch
    assert "speedup_vs_torch_b1" not in by[("trt", 1)]


def test_report_json_and_markdown_label_both_speedups(tmp_path):
    from emoengine.benchmarks.bench import bench_report, markdown_table, write_results

    crops = synthetic_crops(2, seed=2)
    report = bench_report("random", [("torch", (1, 2))], BenchSettings(runs=1, min_time_s=0.0, warmup=0), crops,
                          crops)
    assert set(report["config"]["speedups"]) == {"speedup_vs_torch_b1", "speedup_vs_torch_same_batch"}
    assert "upstream way" in report["config"]["speedups"]["speedup_vs_torch_b1"]
    assert "equal batch" in report["config"]["speedups"]["speedup_vs_torch_same_batch"]
    table = markdown_table(report)
    assert "× torch b1 (upstream way)" in table and "× torch same batch" in table
    assert "`speedup_vs_torch_same_batch`:" in table
    out = write_results(report, tmp_path / "r.json")
    assert json.loads(out.read_text())["summary"]["torch"]["parity_pass_every_batch"] is True


def test_failed_rows_keep_one_line_and_their_traceback_in_the_json(tmp_path, monkeypatch):
    from emoengine.benchmarks.bench import bench_report, write_results

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr(measure, "measure_batch", broken)
    crops = synthetic_crops(2, seed=2)
    report = bench_report("random", [("torch", (1, 2))], BenchSettings(runs=1, min_time_s=0.0, warmup=0), crops,
                          crops)
    out = write_results(report, tmp_path / "r.json")
    saved = json.loads(out.read_text())
    assert [r["status"] for r in saved["results"]] == ["failed", "failed"]
    assert all(r["reason"] == "failed while running: RuntimeError: kernel exploded" for r in saved["results"])
    for r in saved["results"]:
        assert "Traceback" in r["traceback"] and "kernel exploded\nsecond line" in r["traceback"]
    assert not (tmp_path / "r.log").exists()


# -- torch.compile -----------------------------------------------------------------------------------------------
def test_compile_defaults_to_mode_default_and_max_autotune_is_asked_for():
    from emoengine.engine.backends.torch import compile_mode
    from emoengine.errors import UserInputError

    assert compile_mode(parse_backend("torch-cuda:fp16+compile")) == "default"
    assert compile_mode(parse_backend("torch-cuda:fp16+compile+cudagraph")) == "reduce-overhead"
    assert compile_mode(parse_backend("torch-cuda:compile+compile_mode=max-autotune")) == "max-autotune"
    with pytest.raises(UserInputError, match="compile_mode=fastest"):
        compile_mode(parse_backend("torch-cuda:compile+compile_mode=fastest"))


# -- the GPU entry point ----------------------------------------------------------------------------------------
LENT_MACHINE_LACKS = ("cv2", "av", "insightface", "matplotlib", "mtcnn", "ray", "pyarrow")


def test_the_gpu_plan_runs_on_what_the_lent_gpu_machine_has(tmp_path):
    """The lent GPU machine has torch, numpy, onnx, onnxruntime, typer, rich, psutil: no OpenCV, PyAV, insightface,
    matplotlib. The GPU entry point and the bench machinery under it (here one `torch` CPU row, labelled as the
    CPU stand-in for a GPU row) must import and write their results without those."""
    import subprocess
    import sys

    script = f"""
import importlib.abc, sys
class Lacks(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {LENT_MACHINE_LACKS!r}:
            raise ImportError("not on the lent machine: " + name)
sys.meta_path.insert(0, Lacks())
from pathlib import Path
from emoengine.benchmarks import gpu_bench
from emoengine.benchmarks.bench import bench_report, write_results
from emoengine.benchmarks.measure import BenchSettings
from emoengine.export.emonet import synthetic_crops
assert gpu_bench.main(["--dry-run"]) == 0
crops = synthetic_crops(2, seed=1)
report = bench_report("random", [("torch", (1,))], BenchSettings(runs=1, min_time_s=0.0, warmup=0), crops, crops)
assert report["results"][0]["status"] == "measured", report["results"]
write_results(report, Path({str(tmp_path / "gpu.json")!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "gpu.json").is_file()
