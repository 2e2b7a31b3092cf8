"""The TensorRT backend.

Where TensorRT (or a CUDA GPU) is missing — as on CI's CPU machines — every way in (`run --backend trt`,
`--model x.engine`, the Python entry points) must fail with one line that names TensorRT, exit 2, and leave no
engine or export behind. Where TensorRT 10/11 and a GPU are present, the real tests build an engine from our
exported ONNX and hold it to PyTorch's outputs within 1e-3 at batch 1 and 4 (dynamic batch), and check the
engine cache. Nothing here pretends an engine was built."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from emoengine.errors import RunFailure, UserInputError

HAS_TRT_MODULE = importlib.util.find_spec("tensorrt") is not None


def trt_usable() -> bool:
    if not HAS_TRT_MODULE:
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


TRT_USABLE = trt_usable()
needs_no_trt = pytest.mark.skipif(TRT_USABLE, reason="TensorRT and a CUDA GPU are usable here: the refusal path "
                                                     "cannot be exercised")


def tree(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --- without TensorRT: one line, exit 2, nothing built ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory):
    """A small image and a 3-frame clip to hand to `run`."""
    import cv2

    from emoengine.engine.demo import write_clip

    folder = tmp_path_factory.mktemp("trt-inputs")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    image = folder / "face.png"
    cv2.imwrite(str(image), frame)
    clip = write_clip(folder / "clip.mp4", [frame] * 3, fps=10)
    engine = folder / "x.engine"
    engine.write_bytes(b"not really an engine")
    return {"image": image, "clip": clip, "engine": engine, "missing": folder / "missing.engine"}


@needs_no_trt
@pytest.mark.parametrize("args", [
    ("image", "--backend", "trt", "--weights", "random"),
    ("clip", "--backend", "trt", "--weights", "random"),
    ("image", "--model", "engine"),                      # backend picked from the suffix
    ("clip", "--backend", "trt", "--model", "engine"),
    ("image", "--model", "missing"),                     # TensorRT is named first: it is what is missing here
], ids=["image-weights", "clip-weights", "image-engine-by-suffix", "clip-engine", "missing-engine"])
def test_run_with_trt_where_tensorrt_is_missing_exits_2_with_one_line(cli, tmp_path, small_inputs, args):
    resolved = [str(small_inputs[a]) if a in small_inputs else a for a in args]
    out = tmp_path / "out"
    result = cli("run", resolved[0], *resolved[1:], "--detector", "none", "--out", str(out), "--quiet",
                 cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "TensorRT" in lines[0] and lines[0].startswith("emoengine: error:")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert tree(tmp_path / "models") == []  # no ONNX export, no engine
    assert not list(tmp_path.rglob("*.engine")) and tree(out) == []


@needs_no_trt
def test_python_entry_points_refuse_without_tensorrt(tmp_path, small_inputs, capsys):
    from emoengine.engine.emonet_model import open_emonet
    from emoengine.engine.trt_runner import TrtRunner, build_engine, open_trt_runner

    calls = [
        lambda: open_emonet("trt", weights="random"),
        lambda: open_emonet("trt", model=str(small_inputs["engine"])),
        lambda: open_trt_runner(model=None, weights="random", classes=None, full_taps=False),
        lambda: build_engine(tmp_path / "m.onnx", tmp_path / "m.engine"),
        lambda: TrtRunner(small_inputs["engine"]),
    ]
    for call in calls:
        with pytest.raises(UserInputError) as e:
            call()
        assert "TensorRT" in str(e.value) and "\n" not in str(e.value)
    assert tree(tmp_path) == []
    assert "RANDOM" not in capsys.readouterr().err  # refused before any weights were made


def test_trt_dtypes_map_to_torch_by_name_including_bf16():
    """trt.nptype cannot express bfloat16/fp8 (numpy lacks them): the runner maps TensorRT types by name."""
    import torch

    from emoengine.engine.trt_runner import torch_dtype

    class FakeDataType:  # what a pybind11 enum member offers: .name
        def __init__(self, name):
            self.name = name

    expected = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "UINT8": torch.uint8,
                "INT8": torch.int8, "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}
    for name, dtype in expected.items():
        assert torch_dtype(FakeDataType(name), torch) is dtype
    with pytest.raises(RunFailure, match="INT4"):
        torch_dtype(FakeDataType("INT4"), torch)
    if HAS_TRT_MODULE:  # the real enum, where installed (no GPU needed)
        import tensorrt as trt

        assert torch_dtype(trt.DataType.FLOAT, torch) is torch.float32
        assert torch_dtype(trt.DataType.UINT8, torch) is torch.uint8
        if hasattr(trt.DataType, "BF16"):
            assert torch_dtype(trt.DataType.BF16, torch) is torch.bfloat16


# --- with TensorRT 10/11 and a GPU: real engines ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trt_env():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA GPU is visible (torch.cuda.is_available() is False)")
    if int(trt.__version__.split(".")[0]) < 10:
        pytest.skip(f"the trt backend targets TensorRT 10/11, not {trt.__version__}")
    return trt, torch


@pytest.fixture(scope="module")
def golden_onnx(trt_env, golden_pth_8, tmp_path_factory):
    """The golden 8-class model exported once (plain taps) for the engine tests."""
    from emoengine.export.checkpoint import load_emonet
    from emoengine.export.onnx_export import export_onnx

    return export_onnx(load_emonet(golden_pth_8), tmp_path_factory.mktemp("trt") / "emonet8.onnx").path


@pytest.fixture(scope="module")
def engine_b8(golden_onnx):
    from emoengine.engine.trt_runner import build_engine

    return build_engine(golden_onnx, golden_onnx.with_name("emonet8-b8.engine"), max_batch=8, opt_batch=4)


@pytest.fixture(scope="module")
def trt_runner(engine_b8):
    from emoengine.engine.trt_runner import TrtRunner

    runner = TrtRunner(engine_b8)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def torch_reference(golden_pth_8, golden_outputs):
    from emoengine.engine.emonet_model import open_emonet

    model = open_emonet("torch", weights=str(golden_pth_8))
    try:
        return model.runner.infer(golden_outputs(8)["images_rgb"])
    finally:
        model.close()


def test_engine_has_the_contract_tensors(trt_runner):
    import torch

    from emoengine.export.emonet import output_names

    assert trt_runner.input_names == ["image"]
    assert trt_runner.output_names == list(output_names(False))
    assert trt_runner.dtypes["image"] is torch.uint8
    assert trt_runner.max_batch == 8
    assert trt_runner.metadata.get("num_classes") == "8"  # no sidecar: read off the logits' width


@pytest.mark.parametrize("rows", [slice(2, 3), slice(0, 4)], ids=["batch1", "batch4"])
def test_engine_matches_torch_within_1e3(trt_runner, torch_reference, golden_outputs, rows):
    crops = golden_outputs(8)["images_rgb"][rows]
    got = trt_runner.infer(crops)
    for name, ref in torch_reference.items():
        ref = ref[rows]
        assert got[name].shape == ref.shape, name
        rel = np.abs(got[name].astype(np.float64) - ref).max() / np.abs(ref).max()
        assert rel <= 1e-3, f"{name}: worst diff {rel:.2e} of its magnitude"


def test_batches_beyond_the_profile_are_split(trt_runner, torch_reference, golden_outputs):
    crops = np.concatenate([golden_outputs(8)["images_rgb"]] * 3)  # 12 > max batch 8
    got = trt_runner.infer(crops)
    assert got["expression"].shape == (12, 8)
    ref = np.concatenate([torch_reference["expression"]] * 3)
    assert np.abs(got["expression"] - ref).max() <= 1e-3 * np.abs(ref).max()


def test_emonet_model_on_an_engine(engine_b8, golden_outputs, torch_reference):
    from emoengine import CLASS_NAMES_8
    from emoengine.engine.emonet_model import open_emonet

    model = open_emonet("trt", model=str(engine_b8))
    try:
        out = model.predict(golden_outputs(8)["images_rgb"])
        assert model.backend == "trt" and model.class_names == CLASS_NAMES_8
        np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
        assert (out.landmarks >= 0).all() and (out.landmarks <= 256).all()
    finally:
        model.close()


def test_open_trt_runner_builds_once_then_reuses_and_rebuilds_when_stale(golden_onnx, tmp_path):
    from emoengine.engine.trt_runner import open_trt_runner

    onnx_copy = tmp_path / "emonet8.onnx"
    shutil.copyfile(golden_onnx, onnx_copy)
    runner = open_trt_runner(model=str(onnx_copy), weights=None, classes=None, full_taps=False, max_batch=4)
    runner.close()
    engine = tmp_path / "emonet8-b4.engine"
    sidecar = tmp_path / "emonet8-b4.engine.json"
    assert engine.is_file() and sidecar.is_file()
    meta = json.loads(sidecar.read_text())
    assert json.loads(meta["class_names"])[1] == "Happy" and meta["engine_max_batch"] == "4"
    built = engine.stat().st_mtime_ns

    runner = open_trt_runner(model=str(onnx_copy), weights=None, classes=None, full_taps=False, max_batch=4)
    assert runner.metadata["class_names"] == meta["class_names"]
    runner.close()
    assert engine.stat().st_mtime_ns == built  # reused, not rebuilt

    meta["engine_source_sha256"] = "0" * 64  # as if the ONNX changed since the engine was built
    sidecar.write_text(json.dumps(meta))
    os.utime(engine, ns=(built - 10**9, built - 10**9))
    open_trt_runner(model=str(onnx_copy), weights=None, classes=None, full_taps=False, max_batch=4).close()
    assert engine.stat().st_mtime_ns != built - 10**9
    assert json.loads(sidecar.read_text())["engine_source_sha256"] != "0" * 64


def test_weights_build_their_engine_under_emoengine_models(trt_env, golden_pth_8, tmp_path, monkeypatch):
    from emoengine.engine.emonet_model import open_emonet

    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))
    model = open_emonet("trt", weights=str(golden_pth_8))
    model.close()
    names = tree(tmp_path / "models")
    assert len([n for n in names if n.endswith(".onnx")]) == 1
    assert len([n for n in names if n.endswith(".engine")]) == 1
