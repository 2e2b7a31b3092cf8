"""`emoengine bench` and `export --precision int8`: real timings and parity against PyTorch written as JSON, a
backend this machine lacks reported as skipped, and a real (tiny-calibration) int8 QDQ model."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from emoengine.benchmarks.bench import results_path, run_bench, short_device_slug
from emoengine.compare import FP32_TOLERANCE
from emoengine.errors import UserInputError
from emoengine.export.emonet import output_names

ROW_FIELDS = {"backend", "precision", "batch", "status", "faces_per_s", "latency_ms", "peak_rss_mb", "parity",
              "speedup_vs_torch_b1", "session_open_s"}
PARITY_FIELDS = {"outputs", "worst_rel", "top1_agreement", "valence_mae", "arousal_mae", "expression_mae",
                 "flipped_reference_margins", "inputs", "pass"}


def trt_usable() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory, cli):
    """The real command, once, in its tiny mode: random weights, torch + ort (+ trt) at batch 1 and 2."""
    cwd = tmp_path_factory.mktemp("bench")
    out, md = cwd / "results" / "bench.json", cwd / "results" / "bench.md"
    result = cli("bench", "--weights", "random", "--backends", "torch,ort,trt", "--batch", "1,2", "--runs", "1",
                 "--warmup", "0", "--parity-inputs", "4", "--json", str(out), "--markdown", str(md), cwd=cwd)
    return result, out, md, cwd


@pytest.mark.slow
def test_bench_json_has_every_field(tiny_bench):
    result, out, md, cwd = tiny_bench
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and "onnxruntime" in machine["versions"]
    assert "gpu" in machine and isinstance(machine["cpu_features"], list)
    assert report["config"]["weights"] == "random" and report["config"]["batches"] == [1, 2]
    assert report["config"]["inputs"]["parity_inputs"] == 4
    ok = [r for r in report["results"] if r["status"] == "measured"]
    assert [(r["backend"], r["batch"]) for r in ok] == [("torch", 1), ("torch", 2), ("ort", 1), ("ort", 2)]
    for r in ok:
        assert set(r) >= ROW_FIELDS, ROW_FIELDS - set(r)
        assert r["precision"] == "fp32" and r["faces_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert {"p50", "p95"} <= set(r["latency_ms"])
        assert r["faces_per_s"] == pytest.approx(r["batch"] / (r["latency_ms"]["p50"] / 1000), rel=0.02)
        assert set(r["parity"]) >= PARITY_FIELDS, PARITY_FIELDS - set(r["parity"])
        assert sorted(r["parity"]["outputs"]) == sorted(output_names(False))
        assert r["parity"]["inputs"] == 4
    assert [r["speedup_vs_torch_b1"] for r in ok][0] == 1.0
    assert "| ort | fp32 | 1 |" in md.read_text() and "Machine:" in md.read_text()
    assert "parity PASS" in result.stdout and str(out) in result.stdout
    assert not (cwd / "benchmarks").exists()  # --json honoured: nothing under the default folder


@pytest.mark.slow
def test_ort_fp32_parity_below_1e3(tiny_bench):
    report = json.loads(tiny_bench[1].read_text())
    for r in (r for r in report["results"] if r["backend"] == "ort"):
        par = r["parity"]
        assert all(0 <= v["max_rel"] < FP32_TOLERANCE for v in par["outputs"].values()), par["outputs"]
        assert par["top1_agreement"] == 1.0 and par["pass"] is True
        # an absolute bound (the fp32 tolerance's number) on a mean error of values of order 1
        assert par["valence_mae"] < FP32_TOLERANCE and par["arousal_mae"] < FP32_TOLERANCE


@pytest.mark.slow
@pytest.mark.skipif(trt_usable(), reason="TensorRT and a CUDA GPU are usable here")
def test_unavailable_backend_is_skipped_with_reason(tiny_bench):
    result, out, _, _ = tiny_bench
    trt = [r for r in json.loads(out.read_text())["results"] if r["backend"] == "trt"]
    assert [r["batch"] for r in trt] == [1, 2]
    for r in trt:
        assert r["status"] == "skipped" and "TensorRT" in r["reason"] and "\n" not in r["reason"]
        assert "faces_per_s" not in r
    assert "trt: skipped:" in result.stdout


@pytest.mark.slow
def test_bench_caches_models_only_under_emoengine_models(tiny_bench):
    cwd = tiny_bench[3]
    assert [p.name for p in (cwd / "models").glob("*.onnx")] == ["emonet8-random.onnx"]
    assert len(list((cwd / "models" / ".ort-optimized").glob("*.onnx"))) == 1  # ORT's optimised graph, reused


@pytest.mark.parametrize("args", [["--backends", "tpu"], ["--batch", "1,x"], ["--batch", "0"], ["--backends", ","],
                                  ["--runs", "0"]])
def test_bad_bench_options_exit_2_with_one_line(args, tmp_path, monkeypatch, capsys):
    from emoengine.cli.main import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["bench", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emoengine: error:")
    assert list(tmp_path.iterdir()) == []


def test_run_bench_rejects_unknown_backends_before_any_work():
    with pytest.raises(UserInputError, match="unknown backend"):
        run_bench("random", ["ort", "onnx"], [1])


@pytest.mark.parametrize("machine, slug", [
    ({"cpu": "Intel(R) Xeon(R) Processor (2 cpus)", "gpu": None}, "cpu-intel-xeon"),
    ({"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (16 cpus)", "gpu": None}, "cpu-intel-xeon-platinum-8481c"),
    ({"cpu": "AMD EPYC 7763 64-Core Processor (16 cpus)", "gpu": "NVIDIA H100 80GB HBM3"}, "gpu-nvidia-h100-80gb-hbm3"),
])
def test_result_file_names_are_short(machine, slug):
    assert short_device_slug(machine) == slug
    assert results_path({"machine": machine, "date": "2026-11-25T21:00:00+00:00"}).as_posix() == \
        f"benchmarks/results/{slug}-2026-11-25.json"


# -- int8 --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, cli):
    """`export --precision int8` of random weights, calibrated on 4 face crops (the default is 64)."""
    cwd = tmp_path_factory.mktemp("int8")
    out = cwd / "q" / "emonet8-int8.onnx"
    result = cli("export", "--weights", "random", "--precision", "int8", "--calibration-crops", "4", "--no-verify",
                 "--keep-float", "fc", "-o", str(out), cwd=cwd)
    return result, out, cwd


@pytest.mark.slow
def test_int8_export_writes_a_qdq_model_and_caches_calibration(int8_export):
    import onnx

    from emoengine.export.onnx_export import read_metadata

    result, out, _ = int8_export
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    # kept float: no DequantizeLinear feeds the fc layers' weights
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert gemms and not any(i in dq_outputs for g in gemms for i in g.input[1:])
    meta = read_metadata(out)
    assert meta["precision"] == "int8" and json.loads(meta["int8_recipe"])["keep_float"] == ["fc"]
    assert meta["class_names"] and meta["checkpoint_source"] == "random"
    caches = list(out.parent.glob("*.calib-*.json"))
    assert [c.name for c in caches] == ["emonet8-int8.calib-conv-minmax4.json"]
    assert "kept float (fc)" in result.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["emonet8-int8.calib-conv-minmax4.json",
                                                            "emonet8-int8.onnx"]  # no temporary files left


@pytest.mark.slow
def test_int8_model_runs_as_ort_int8_with_reported_parity(int8_export):
    from emoengine.benchmarks.measure import parity
    from emoengine.engine.model.emonet_model import open_emonet
    from emoengine.export.face_crops import face_crops

    _, out, _ = int8_export
    crops = face_crops(3)
    model = open_emonet("ort-int8", model=str(out))
    try:
        assert model.backend == "ort-int8"
        got = model.runner.infer({"image": crops})
    finally:
        model.close()
    torch_model = open_emonet("torch", weights="random")
    try:
        reference = torch_model.runner.infer({"image": crops})
    finally:
        torch_model.close()
    par = parity(got, reference)
    assert sorted(par["outputs"]) == sorted(output_names(False))
    assert 0 <= par["top1_agreement"] <= 1 and par["inputs"] == 3
    assert np.isfinite(par["worst_rel"]) and par["worst_rel"] < 1  # int8: close, not equal


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp16", "--keep-float", "stem"], "int8"),
    (["--precision", "int4"], "--precision must be"),
    (["--precision", "int8", "--keep-float", "head"], "unknown layer group"),
    (["--precision", "int8", "--calibration-method", "mse"], "calibration method"),
    (["--precision", "int8", "--min-agreement", "1.5"], "between 0 and 1"),
    (["--precision", "int8", "--min-agreement", "-0.1"], "between 0 and 1"),
    (["--precision", "int8", "--min-agreement", "x"], "min-agreement"),
    (["--precision", "fp16", "--min-agreement", "0.9"], "add --precision int8"),
    (["--precision", "int8", "--min-agreement", "0.9", "--keep-float", "fc"], "not both"),
    (["--precision", "int8", "--target", "tpu"], "--target must be ort or trt"),
    (["--precision", "int8", "--target", "ort", "--trt"], "drop --target ort"),
])
def test_bad_precision_options_exit_2(args, message, tmp_path, monkeypatch, capsys):
    from emoengine.cli.main import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["export", "--weights", "random", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []
