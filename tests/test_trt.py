"""The TensorRT backend.

Where TensorRT (or a CUDA GPU) is missing — as on CI's CPU machines — every way in (`run --backend trt`,
`--model x.engine`, the Python entry points) must fail with one line that names TensorRT, exit 2, and leave no
engine or export behind. Where TensorRT 10/11 and a GPU are present, the real tests build an engine from our
exported ONNX and hold it to PyTorch's outputs within the fp32 tolerance (emoengine.compare) at batch 1 and 4
(dynamic batch), and check the engine cache. Nothing here pretends an engine was built."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from emoengine.compare import FP32_TOLERANCE, relative_diff
from emoengine.engine.backends import BACKENDS, request_for
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


def open_trt(spec: str = "trt", **request):
    """The trt row's runner for a request, as open_emonet gets it (without the model class around it)."""
    return BACKENDS["trt"].open(request_for(spec, **request))


# --- without TensorRT: one line, exit 2, nothing built ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory, requires):
    """A small image and a 3-frame clip to hand to `run`."""
    requires("cv2", "av")   # the lent GPU machine has neither
    import cv2

    from emoengine.engine.run.demo import write_clip

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
    from emoengine.engine.backends.tensorrt import TrtRunner
    from emoengine.engine.model.emonet_model import open_emonet
    from emoengine.export.trt_engine import build_engine

    calls = [
        lambda: open_emonet("trt", weights="random"),
        lambda: open_emonet("trt", model=str(small_inputs["engine"])),
        lambda: open_trt(weights="random"),
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

    from emoengine.engine.backends.tensorrt import torch_dtype

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


# --- the engine cache's sidecar check: runs without TensorRT ---------------------------------------------------


def write_engine_with_sidecar(path, data: bytes, keys: dict) -> None:
    from emoengine.export.trt_engine import write_sidecar

    path.write_bytes(data)
    write_sidecar(path, {"num_classes": "8"}, keys)


def test_sidecar_check_refuses_missing_foreign_stale_and_tampered_engines(tmp_path):
    from emoengine.export.trt_engine import check_cached_engine, engine_build_keys, engine_cache_path

    keys = engine_build_keys("ab" * 32, "10.9.0", "NVIDIA H100 80GB HBM3", "fp16", 64)
    engine = engine_cache_path(tmp_path / "emonet8.onnx", keys, folder=tmp_path)
    assert engine.name == "emonet8-fp16-b64-nvidia-h100-80gb-hbm3-trt10.9.0-abababababab.engine"
    assert "no engine" in check_cached_engine(engine, keys)

    engine.write_bytes(b"serialized plan")
    assert "no sidecar" in check_cached_engine(engine, keys)  # cannot tell what it was built for

    write_engine_with_sidecar(engine, b"serialized plan", keys)
    assert check_cached_engine(engine, keys) is None

    for key, other in [("engine_device", "NVIDIA A100-SXM4-40GB"), ("engine_tensorrt", "11.0.0"),
                       ("engine_source_sha256", "cd" * 32), ("engine_max_batch", "128"),
                       ("engine_precision", "fp32")]:
        why = check_cached_engine(engine, {**keys, key: other})
        assert why is not None and other in why and "\n" not in why, key

    engine.write_bytes(b"another plan")  # the file was swapped under its sidecar
    assert "sha256" in check_cached_engine(engine, keys)

    engine.with_name(engine.name + ".json").write_text("[1, 2]")
    assert "not a JSON object" in check_cached_engine(engine, keys)


def test_cache_names_differ_per_gpu_tensorrt_and_onnx():
    from emoengine.export.trt_engine import engine_build_keys, engine_cache_path

    base = engine_build_keys("ab" * 32, "10.9.0", "NVIDIA H100", "fp32", 64)
    names = {engine_cache_path("m/emonet8.onnx", k).name for k in [
        base, {**base, "engine_device": "NVIDIA H200"}, {**base, "engine_tensorrt": "11.0.1"},
        {**base, "engine_source_sha256": "cd" * 32}, {**base, "engine_precision": "fp16"}]}
    assert len(names) == 5


@pytest.fixture
def fake_tensorrt(monkeypatch, tmp_path):
    """A stand-in for TensorRT and a GPU (neither exists here): records builds and deserializations, so the order
    of check and deserialization can be tested. Everything below the sidecar check is the real code."""
    from types import SimpleNamespace

    from emoengine.engine.backends import cuda
    from emoengine.engine.backends import tensorrt as trt_backend
    from emoengine.export import trt_engine

    events = []
    device = {"name": "NVIDIA H100 80GB HBM3"}
    fake_trt = SimpleNamespace(__version__="10.9.0")
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(get_device_name=lambda *a: device["name"]))

    def fake_build(onnx_path, engine_path, **kw):
        events.append(("build", engine_path.name))
        engine_path.write_bytes(b"plan for " + device["name"].encode())
        return engine_path

    class FakeRunner:
        def __init__(self, path, metadata=None, cuda_graph=False, label="trt"):
            events.append(("deserialize", Path(path).name))
            self.metadata = metadata

    monkeypatch.setattr(trt_backend, "missing", lambda row: None)
    for module in (cuda, trt_backend, trt_engine):
        monkeypatch.setattr(module, "require_tensorrt", lambda: (fake_trt, fake_torch))
    monkeypatch.setattr(trt_engine, "build_engine", fake_build)
    monkeypatch.setattr(trt_backend, "TrtRunner", FakeRunner)
    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))
    return SimpleNamespace(events=events, device=device)


def test_with_a_fake_tensorrt_stale_engines_are_rebuilt_before_any_deserialization(fake_tensorrt, tmp_path,
                                                                                    golden_pth_8):
    from emoengine.export.checkpoint import load_emonet
    from emoengine.export.engine_cache import sidecar_path
    from emoengine.export.onnx_export import export_onnx

    onnx_path = export_onnx(load_emonet(golden_pth_8), tmp_path / "emonet8.onnx", verify=False).path
    events = fake_tensorrt.events
    runner = open_trt(model=str(onnx_path), max_batch=8)
    (engine,) = (tmp_path / "models").glob("*.engine")
    assert events == [("build", engine.name), ("deserialize", engine.name)]
    assert json.loads(sidecar_path(engine).read_text())["engine_device"] == "NVIDIA H100 80GB HBM3"
    assert runner.metadata["num_classes"] == "8"

    events.clear()
    open_trt(model=str(onnx_path), max_batch=8)
    assert events == [("deserialize", engine.name)]  # current: reused

    events.clear()
    engine.write_bytes(b"tampered")  # sha256 no longer matches the sidecar
    open_trt(model=str(onnx_path), max_batch=8)
    assert events == [("build", engine.name), ("deserialize", engine.name)]

    events.clear()
    sidecar_path(engine).unlink()  # no sidecar: rebuilt, never trusted
    open_trt(model=str(onnx_path), max_batch=8)
    assert events == [("build", engine.name), ("deserialize", engine.name)]

    events.clear()
    fake_tensorrt.device["name"] = "NVIDIA H200"  # another GPU: its own engine, built first
    open_trt(model=str(onnx_path), max_batch=8)
    assert [e[0] for e in events] == ["build", "deserialize"] and "h200" in events[0][1]

    events.clear()  # an .engine given directly: refused when foreign, never deserialized
    with pytest.raises(UserInputError, match="built for device") as e:
        open_trt(model=str(engine))
    assert "\n" not in str(e.value) and events == []
    with pytest.raises(UserInputError, match="int8 builds from a QDQ model"):
        open_trt("trt:int8", model=str(onnx_path))
    assert events == []


def test_with_a_fake_tensorrt_trt_int8_builds_from_the_symmetric_qdq_model_of_its_weights(fake_tensorrt, tmp_path,
                                                                                          monkeypatch, requires):
    """`trt:int8` with --weights quantises in TensorRT's flavour by itself (zero points 0), cached apart from
    ort-int8's U8S8 model, and builds its engine from that file."""
    requires("mtcnn", "insightface")   # calibration crops
    import onnx
    from onnx import numpy_helper

    from emoengine.export import quantize

    monkeypatch.setattr(quantize, "DEFAULT_CALIBRATION_CROPS", 2)   # the default is 64
    open_trt("trt:int8", weights="random", max_batch=4)
    models = tmp_path / "models"
    (qdq,) = [p for p in models.glob("*-int8*.onnx")]
    assert qdq.name.endswith("-int8conv-minmax2-float-emotion-s8s8.onnx")
    (engine,) = models.glob("*.engine")
    assert fake_tensorrt.events == [("build", engine.name), ("deserialize", engine.name)]
    assert engine.name.startswith(qdq.stem + "-int8-b4-")   # built from the symmetric QDQ model
    model = onnx.load(str(qdq))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [init[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


# --- with TensorRT 10/11 and a GPU: real engines ---------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_timing_cache(tmp_path_factory):
    """Every engine these tests build (in-process and through `emoengine run`) shares one TensorRT timing cache:
    the tactics of the same layers are timed once a session, not once per engine."""
    from emoengine.export.engine_cache import TIMING_CACHE_DIR

    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("trt-timing")
        mp.setenv(TIMING_CACHE_DIR, str(folder))
        yield folder


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
    """Built through the cache (sidecar included), beside the ONNX."""
    from emoengine.export.trt_engine import ensure_engine

    return ensure_engine(golden_onnx, "fp32", 8, folder=golden_onnx.parent)


@pytest.fixture(scope="module")
def trt_runner(engine_b8):
    from emoengine.engine.backends.tensorrt import TrtRunner

    runner = TrtRunner(engine_b8)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def torch_reference(golden_pth_8, golden_outputs):
    from emoengine.engine.model.emonet_model import open_emonet

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
    assert trt_runner.metadata.get("num_classes") == "8"  # from the sidecar (the ONNX's metadata)


@pytest.mark.parametrize("rows", [slice(2, 3), slice(0, 4)], ids=["batch1", "batch4"])
def test_engine_matches_torch_within_1e3(trt_runner, torch_reference, golden_outputs, rows):
    crops = golden_outputs(8)["images_rgb"][rows]
    got = trt_runner.infer(crops)
    for name, ref in torch_reference.items():
        ref = ref[rows]
        assert got[name].shape == ref.shape, name
        rel = relative_diff(got[name], ref)
        assert rel <= FP32_TOLERANCE, f"{name}: worst diff {rel:.2e} of its magnitude"


def test_batches_beyond_the_profile_are_split(trt_runner, torch_reference, golden_outputs):
    crops = np.concatenate([golden_outputs(8)["images_rgb"]] * 3)  # 12 > max batch 8
    got = trt_runner.infer(crops)
    assert got["expression"].shape == (12, 8)
    ref = np.concatenate([torch_reference["expression"]] * 3)
    assert relative_diff(got["expression"], ref) <= FP32_TOLERANCE


def test_emonet_model_on_an_engine(engine_b8, golden_outputs, torch_reference):
    from emoengine import CLASS_NAMES_8
    from emoengine.engine.model.emonet_model import open_emonet

    model = open_emonet("trt", model=str(engine_b8))
    try:
        out = model.predict(golden_outputs(8)["images_rgb"])
        assert model.backend == "trt" and model.class_names == CLASS_NAMES_8
        np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
        assert (out.landmarks >= 0).all() and (out.landmarks <= 256).all()
    finally:
        model.close()


def test_open_trt_runner_builds_once_then_reuses_and_rebuilds_when_stale(golden_onnx, tmp_path, monkeypatch,
                                                                         one_timing_cache):
    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))
    onnx_copy = tmp_path / "emonet8.onnx"
    shutil.copyfile(golden_onnx, onnx_copy)
    runner = open_trt(model=str(onnx_copy), max_batch=4)
    runner.close()
    (engine,) = (tmp_path / "models").glob("emonet8-fp32-b4-*.engine")
    sidecar = engine.with_name(engine.name + ".json")
    meta = json.loads(sidecar.read_text())
    assert json.loads(meta["class_names"])[1] == "Happy" and meta["engine_max_batch"] == "4"
    assert list(one_timing_cache.glob("trt-timing-*.cache"))  # the session's one timing cache was saved
    built = engine.stat().st_mtime_ns

    runner = open_trt(model=str(onnx_copy), max_batch=4)
    assert runner.metadata["class_names"] == meta["class_names"]
    runner.close()
    assert engine.stat().st_mtime_ns == built  # reused, not rebuilt

    meta["engine_sha256"] = "0" * 64  # as if the engine file had been replaced since
    sidecar.write_text(json.dumps(meta))
    os.utime(engine, ns=(built - 10**9, built - 10**9))
    open_trt(model=str(onnx_copy), max_batch=4).close()
    assert engine.stat().st_mtime_ns != built - 10**9
    assert json.loads(sidecar.read_text())["engine_sha256"] != "0" * 64


def test_fp16_engine_within_the_fp16_tolerances(golden_onnx, torch_reference, golden_outputs, tmp_path,
                                                monkeypatch):
    from emoengine.compare import FP16_TOLERANCE

    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))
    runner = open_trt("trt:fp16", model=str(golden_onnx), max_batch=4)
    try:
        assert runner.metadata.get("engine_precision") == "fp16"
        got = runner.infer(golden_outputs(8)["images_rgb"])
    finally:
        runner.close()
    for name, ref in torch_reference.items():
        rel = np.abs(got[name].astype(np.float64) - ref).max() / np.abs(ref).max()
        assert rel <= FP16_TOLERANCE[name], f"{name}: worst diff {rel:.2e} of its magnitude"


def test_cuda_graph_replay_matches_eager(engine_b8, golden_outputs):
    from emoengine.engine.backends.tensorrt import TrtRunner

    crops = golden_outputs(8)["images_rgb"]
    eager, graphed = TrtRunner(engine_b8), TrtRunner(engine_b8, cuda_graph=True)
    try:
        for rows in (slice(0, 3), slice(0, 1), slice(0, 3)):  # capture twice, replay once
            a, b = eager.infer(crops[rows]), graphed.infer(crops[rows])
            for name in a:
                np.testing.assert_array_equal(a[name], b[name])
    finally:
        eager.close()
        graphed.close()


def test_weights_build_their_engine_under_emoengine_models(trt_env, golden_pth_8, tmp_path, monkeypatch):
    from emoengine.engine.model.emonet_model import open_emonet

    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))
    model = open_emonet("trt", weights=str(golden_pth_8))
    model.close()
    names = tree(tmp_path / "models")
    assert len([n for n in names if n.endswith(".onnx")]) == 1
    assert len([n for n in names if n.endswith(".engine")]) == 1


def test_run_with_trt_builds_on_first_use_and_says_so(trt_env, golden_pth_8, cli, tmp_path, requires):
    requires("cv2")
    import cv2

    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    args = ("run", str(image), "--backend", "trt", "--weights", str(golden_pth_8), "--detector", "none", "--quiet")
    first = cli(*args, "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "building a TensorRT" in first.stderr
    second = cli(*args, "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert second.returncode == 0 and "building" not in second.stderr  # cached engine reused
