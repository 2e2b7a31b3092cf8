"""torch-cuda and ort-cuda: option parsing and honest refusal everywhere; parity on a GPU where there is one.

Without a CUDA GPU (CI, this machine) the GPU tests skip with the reason `backend_availability` gives, and the
refusal tests check one line, exit 2, nothing written. With one, the runners are held to the CPU reference:
fp32 (TF32 off), fp16 and bf16 each within its row of emoengine.compare's tolerance table."""

from __future__ import annotations

import numpy as np
import pytest

from emoengine.compare import tolerance
from emoengine.engine.backends import availability, parse_backend
from emoengine.errors import UserInputError

AVAILABLE = availability()
needs = {name: pytest.mark.skipif(AVAILABLE[name] is not None, reason=f"{name}: {AVAILABLE[name]}")
         for name in ("torch-cuda", "ort-cuda")}


# --- everywhere ---------------------------------------------------------------------------------------------------


def test_backend_options_parse_into_one_label():
    o = parse_backend("torch-cuda:fp16+compile+cudagraph+channels_last")
    assert (o.name, o.precision, o.compile, o.cudagraph, o.channels_last) == ("torch-cuda", "fp16", True, True, True)
    assert o.label == "torch-cuda:fp16+compile+cudagraph+channels_last"
    assert parse_backend("ort").label == "ort" and parse_backend("torch-cuda").label == "torch-cuda"
    o = parse_backend("ort-cuda:cudagraph+conv_search=HEURISTIC")
    assert o.cudagraph and o.extra == {"conv_search": "HEURISTIC"}
    assert parse_backend("trt:int8+max_batch=128").extra == {"max_batch": "128"}


@pytest.mark.parametrize("spec, message", [
    ("ort:fp16", "takes no options"),
    ("torch-cuda:int8", "runs fp32, fp16, bf16"),
    ("ort-cuda:compile", "unknown option 'compile'"),
    ("trt:bf16", "runs fp32, fp16, int8"),
    ("torch-cuda:speed=11", "unknown option speed="),
])
def test_bad_backend_options_are_one_line_errors(spec, message):
    with pytest.raises(UserInputError, match=message) as e:
        parse_backend(spec)
    assert "\n" not in str(e.value)


def test_padded_batches_are_powers_of_two_up_to_the_max():
    from emoengine.engine.backends.torch import padded_batch

    assert [padded_batch(n, 48) for n in (1, 2, 3, 5, 16, 17, 33, 48)] == [1, 2, 4, 8, 16, 32, 48, 48]


def test_info_lists_every_backend_with_availability(cli, tmp_path):
    from emoengine.engine.backends import BACKENDS

    result = cli("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    lines = [line.strip() for line in out[out.index("backends:") + 1:]]
    for name in BACKENDS:
        (row,) = [line for line in lines if line.split(" ", 1)[0] == name]
        assert ("available" if AVAILABLE[name] is None else f"unavailable: {AVAILABLE[name]}") in row


def test_info_lists_cached_engines_with_what_they_were_built_for(cli, tmp_path):
    from emoengine.export.trt_engine import engine_build_keys, write_sidecar

    (tmp_path / "models").mkdir()
    engine = tmp_path / "models" / "emonet8-fp16-b64-x.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, {}, engine_build_keys("ab" * 32, "10.9.0", "NVIDIA H100", "fp16", 64))
    (tmp_path / "models" / "stray.engine").write_bytes(b"plan")
    result = cli("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "emonet8-fp16-b64-x.engine: fp16, batch 1..64, NVIDIA H100, TensorRT 10.9.0;" in result.stdout
    assert "stray.engine: no sidecar;" in result.stdout


@pytest.mark.skipif(AVAILABLE["torch-cuda"] is None, reason="a CUDA GPU is usable here: nothing to refuse")
@pytest.mark.parametrize("backend", ["torch-cuda", "torch-cuda:fp16+compile", "ort-cuda:cudagraph"])
def test_gpu_backends_without_a_gpu_exit_2_with_one_line(cli, tmp_path, backend, requires):
    requires("cv2")
    import cv2

    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    result = cli("run", str(image), "--backend", backend, "--weights", "random", "--detector", "none",
                 "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("emoengine: error:") and ("CUDA" in lines[0] or "GPU" in lines[0])
    assert not (tmp_path / "models").exists() and not (tmp_path / "out").exists()


def test_export_trt_without_tensorrt_exits_2_and_writes_nothing(cli, tmp_path):
    if AVAILABLE["trt"] is None:
        pytest.skip("TensorRT is usable here: nothing to refuse")
    result = cli("export", "--weights", "random", "--trt", "--precision", "fp16", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "TensorRT" in lines[0], result.stderr
    assert not (tmp_path / "models").exists()


# --- on a CUDA GPU ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_8(golden_pth_8, golden_crops_8):
    """The CPU reference of the GPU variants: eager fp32 PyTorch on the golden crops, or (where the golden data did
    not travel, e.g. to a lent GPU machine) on synthetic crops with seeded random weights."""
    from emoengine.engine.model.emonet_model import open_emonet

    crops = golden_crops_8
    model = open_emonet("torch", weights=str(golden_pth_8))
    try:
        return crops, model.runner.infer(crops)
    finally:
        model.close()


def assert_close(got, ref, precision: str):
    from emoengine.compare import relative_diff

    for name, r in ref.items():
        assert got[name].dtype == np.float32 and relative_diff(got[name], r) <= tolerance(precision).limit(name), name


@pytest.mark.gpu
@needs["torch-cuda"]
@pytest.mark.parametrize("spec", [
    "torch-cuda", "torch-cuda:fp16+channels_last", "torch-cuda:bf16", "torch-cuda:fp16+cudagraph",
    pytest.param("torch-cuda:fp16+compile", marks=pytest.mark.compile),   # cold compiles: the bench times them
])
def test_torch_cuda_variants_match_the_cpu_reference(golden_pth_8, reference_8, spec):
    from emoengine.engine.model.emonet_model import open_emonet

    crops, ref = reference_8
    model = open_emonet(spec, weights=str(golden_pth_8), max_batch=4)
    try:
        assert model.backend == parse_backend(spec).label
        precision = parse_backend(spec).precision
        for rows in (slice(0, 4), slice(1, 2), slice(0, 3)):  # batch 3 is padded to 4 with compile/graphs
            assert_close(model.runner.infer(crops[rows]), {k: v[rows] for k, v in ref.items()}, precision)
    finally:
        model.close()


@pytest.mark.gpu
@needs["ort-cuda"]
@pytest.mark.parametrize("spec", ["ort-cuda", "ort-cuda:cudagraph", "ort-cuda:conv_search=HEURISTIC"])
def test_ort_cuda_io_binding_matches_the_cpu_reference(golden_pth_8, reference_8, spec, tmp_path, monkeypatch):
    from emoengine.engine.model.emonet_model import open_emonet

    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))  # the cached ONNX export goes there
    crops, ref = reference_8
    model = open_emonet(spec, weights=str(golden_pth_8), max_batch=4)
    try:
        for rows in (slice(0, 4), slice(1, 2), slice(0, 4)):
            assert_close(model.runner.infer(crops[rows]), {k: v[rows] for k, v in ref.items()}, "fp32")
        big = np.concatenate([crops] * 3)  # 12 > max batch 4: split
        assert model.runner.infer(big)["expression"].shape == (12, 8)
    finally:
        model.close()


# --- benchmarks/gpu_bench.py: its CPU-side parts -------------------------------------------------------------------


def test_gpu_bench_plan_starts_with_the_baseline_and_drops_unavailable_backends():
    from emoengine.benchmarks.gpu_bench import BATCHES, COMPILE_BATCHES, plan

    assert BATCHES == (1, 8, 64, 256) and COMPILE_BATCHES == (1, 256)
    steps = plan({"torch-cuda": None, "ort-cuda": "no EP", "trt": "no TensorRT"})
    assert steps[0] == ("torch-cuda", BATCHES)   # eager fp32 first: the baselines of both speed-ups
    assert steps[1] == ("torch-cuda:fp16+channels_last+compile", COMPILE_BATCHES)   # two cold compiles, early
    for spec in ("torch-cuda:fp16+channels_last", "torch-cuda:bf16+channels_last",
                 "torch-cuda:fp16+channels_last+cudagraph"):
        assert (spec, BATCHES) in steps   # each eager variant at every batch of the device check
    assert all(not s.startswith(("ort-cuda", "trt")) for s, _ in steps)
    for spec, _ in plan({"torch-cuda": None, "ort-cuda": None, "trt": None}):
        parse_backend(spec)  # every planned spec is a valid backend string
    assert plan({"torch-cuda": "none", "ort-cuda": "none", "trt": "none"}) == []


def test_one_comparator_judges_gpu_rows_by_precision():
    from emoengine.benchmarks.gpu_bench import results_file
    from emoengine.compare import compare

    ref = {"expression": np.array([[1.0, -2.0]]), "heatmap": np.ones((1, 2, 2))}
    near = {"expression": np.array([[1.0 + 4e-3, -2.0]]), "heatmap": np.ones((1, 2, 2))}
    c = compare(near, ref, "fp16")
    assert c.passed and abs(c.outputs["expression"]["max_rel"] - 2e-3) < 1e-9
    assert not compare(near, ref, "fp32").passed
    assert results_file("NVIDIA H100 80GB HBM3").name.startswith("gpu-bench-nvidia-h100-80gb-hbm3-")


def test_gpu_bench_without_a_gpu_exits_2_and_dry_run_lists_the_reasons(capsys):
    from emoengine.benchmarks.gpu_bench import main

    assert main(["--dry-run"]) == 0
    if AVAILABLE["torch-cuda"] is not None:
        assert "skipped torch-cuda" in capsys.readouterr().out
        assert main([]) == 2
