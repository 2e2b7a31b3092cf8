"""`emoengine bench`: real timings and parity against PyTorch, written as JSON; a backend this machine lacks is a
reported result, not a crash."""

from __future__ import annotations

import importlib.util
import json

import pytest

from emoengine.benchmarks.bench import results_path, run_bench, short_device_slug
from emoengine.errors import UserInputError
from emoengine.export.emonet import output_names


def trt_usable() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def ort_bench(tmp_path_factory, cli):
    """The real command, once: random weights, ort at batch 1 and 2, one timed iteration."""
    cwd = tmp_path_factory.mktemp("bench")
    out = cwd / "results" / "ort.json"
    result = cli("bench", "--weights", "random", "--backends", "ort", "--batch", "1,2", "--iters", "1",
                 "--out", str(out), cwd=cwd)
    return result, out, cwd


def test_bench_ort_writes_timings_and_passing_parity(ort_bench):
    result, out, cwd = ort_bench
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert isinstance(report["device"], str) and report["device"]
    assert report["cpu"] and report["weights"] == "random" and report["iters"] == 1
    assert report["tolerance"] == 1e-3
    assert [r["backend"] for r in report["results"]] == ["ort"]
    ort = report["results"][0]
    assert ort["ok"] is True and ort["error"] is None
    assert sorted(ort["parity"]) == sorted(output_names(False))
    assert all(0 <= v <= 1e-3 for v in ort["parity"].values()), ort["parity"]
    assert ort["parity_pass"] is True
    assert sorted(ort["batch_timings"]) == ["1", "2"]
    for b, t in ort["batch_timings"].items():
        assert t["ms"] > 0 and t["images_per_s"] == pytest.approx(int(b) / (t["ms"] / 1000), rel=0.02)
    assert "parity PASS" in result.stdout and str(out) in result.stdout
    assert not (cwd / "benchmarks").exists()  # --out honoured: nothing under the default folder


def test_bench_exports_only_under_emoengine_models(ort_bench):
    _, _, cwd = ort_bench
    assert [p.name for p in (cwd / "models").glob("*.onnx")] == ["emonet8-random.onnx"]


@pytest.mark.skipif(trt_usable(), reason="TensorRT and a CUDA GPU are usable here")
def test_unavailable_backend_is_a_result_not_a_crash():
    report = run_bench("random", ["trt"], [1], iters=1)
    [trt] = report["results"]
    assert trt["backend"] == "trt" and trt["ok"] is False
    assert "TensorRT" in trt["error"] and "\n" not in trt["error"]
    assert trt["batch_timings"] == {} and trt["parity_pass"] is None


@pytest.mark.skipif(trt_usable(), reason="TensorRT and a CUDA GPU are usable here")
def test_cli_reports_unavailable_backend_and_exits_0(tmp_path, monkeypatch, capsys):
    from emoengine.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))
    with pytest.raises(SystemExit) as e:
        main(["bench", "--backends", "trt", "--batch", "1", "--iters", "1"])
    assert e.value.code == 0
    stdout = capsys.readouterr().out
    assert "trt: unavailable:" in stdout and "TensorRT" in stdout
    [written] = list((tmp_path / "benchmarks" / "results").glob("*.json"))  # the default place and name
    report = json.loads(written.read_text())
    assert written.name == results_path(report).name and report["results"][0]["ok"] is False


@pytest.mark.parametrize("args", [["--backends", "tpu"], ["--batch", "1,x"], ["--batch", "0"], ["--backends", ","]])
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


@pytest.mark.parametrize("report, slug", [
    ({"cpu": "Intel(R) Xeon(R) Processor (2 cpus)", "gpu": None}, "cpu-intel-xeon"),
    ({"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (16 cpus)", "gpu": None}, "cpu-intel-xeon-platinum-8481c"),
    ({"cpu": "AMD EPYC 7763 64-Core Processor (16 cpus)", "gpu": "NVIDIA H100 80GB HBM3"}, "gpu-nvidia-h100-80gb-hbm3"),
])
def test_result_file_names_are_short(report, slug):
    assert short_device_slug(report) == slug
    assert results_path({**report, "date": "2026-11-25T21:00:00+00:00"}).as_posix() == \
        f"benchmarks/results/{slug}-2026-11-25.json"
