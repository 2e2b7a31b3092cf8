"""The artifact table (export/artifacts.py): its rows are complete, it names every file, `emoengine export` and
the backends' lazy preparation both walk it, a bad ONNX file is refused in one line, a run that must export
first says so (or, with no_implicit_export, refuses), and the TensorRT build and run sides import apart."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from emoengine.engine.backends import BACKENDS, ENGINE_TARGET, EXPORT_TARGETS, request_for
from emoengine.errors import UserInputError
from emoengine.export import artifacts, prepare, targets
from emoengine.export.artifacts import ARTIFACTS, PER_PRECISION, artifact_path, chain, given_steps, load_onnx

REPO = Path(__file__).resolve().parents[1]


def test_every_row_is_complete_and_names_real_things():
    for name, row in ARTIFACTS.items():
        assert row.what and row.precision and row.suffix.endswith((".onnx", ".engine")) and row.make and row.cache
        assert row.source is None or row.source == PER_PRECISION or row.source in ARTIFACTS, name
        assert set(row.backends) <= set(BACKENDS), name
        assert set(row.targets) <= set(EXPORT_TARGETS), name
        assert name in targets.STEPS and name in prepare.STEPS, f"{name} has no step in export or in prepare"
        # run as it is by a backend, or the source of a row that is
        assert row.backends or any(artifacts.source_of(n, row.precision) == name for n in ARTIFACTS), name
    assert ARTIFACTS[artifacts.ENGINE].backends == (ENGINE_TARGET,)


def test_every_onnx_backend_precision_has_its_artifact():
    for row in BACKENDS.values():
        if ".onnx" not in row.suffixes:   # the torch rows run a checkpoint
            continue
        for precision in row.precisions:
            assert artifacts.for_backend(row.name, precision).name in ARTIFACTS, (row.name, precision)


def test_chains_walk_from_the_weights():
    assert chain("onnx") == ("onnx",)
    assert chain("int8-u8s8") == ("onnx", "int8-u8s8")
    assert chain(artifacts.ENGINE, "fp32") == ("onnx", "engine")
    assert chain(artifacts.ENGINE, "fp16") == ("onnx", "fp16", "engine")
    assert chain(artifacts.ENGINE, "int8") == ("onnx", "int8-s8s8", "engine")
    # a given model: fp16 converted and built; a given int8 model stands for the QDQ model; nothing to do
    assert given_steps(chain(artifacts.ENGINE, "fp16"), "fp32") == ("fp16", "engine")
    assert given_steps(chain(artifacts.ENGINE, "int8"), "int8") == ("engine",)
    assert given_steps(chain("int8-u8s8"), "fp32") == ()
    assert given_steps(chain("fp16"), "int8") == ()


def test_the_export_table_is_the_one_it_always_was():
    """export.targets' chains, now derived from the artifact table, are those it spelled out before."""
    got = {k: (t.from_weights, t.from_onnx) for k, t in targets.TARGETS.items()}
    assert got == {
        ("fp32", "ort", False): (("onnx",), None),
        ("fp16", "ort", False): (("onnx", "fp16"), ("fp16",)),
        ("int8", "ort", False): (("onnx", "int8-u8s8"), None),
        ("fp32", "trt", False): (("onnx",), None),
        ("fp16", "trt", False): (("onnx", "fp16"), ("fp16",)),
        ("int8", "trt", False): (("onnx", "int8-s8s8"), None),
        ("fp32", "trt", True): (("onnx", "engine"), ("engine",)),
        ("fp16", "trt", True): (("onnx", "fp16", "engine"), ("fp16", "engine")),
        ("int8", "trt", True): (("onnx", "int8-s8s8", "engine"), ("engine",)),
    }
    assert targets.TARGETS[("int8", "ort", False)].no_onnx == targets.INT8_FROM_ONNX
    assert targets.TARGETS[("fp32", "ort", False)].no_weights == targets.FP32_FROM_WEIGHTS
    assert targets.INT8_STEPS == {"int8-u8s8": "u8s8", "int8-s8s8": "s8s8"}


def test_one_naming_function_names_every_file(tmp_path, monkeypatch):
    from emoengine.export.engine_cache import engine_build_keys, engine_cache_path

    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path))
    assert artifact_path("onnx", "emonet8") == tmp_path / "emonet8.onnx"
    assert artifact_path("fp16", "emonet8-random") == tmp_path / "emonet8-random.fp16.onnx"
    assert artifact_path("int8-u8s8", "emonet8").name == "emonet8-int8.onnx"
    assert artifact_path("int8-s8s8", "x", "/m").as_posix() == "/m/x-int8-s8s8.onnx"
    int8 = artifact_path("int8-u8s8", "emonet8-abc", tag="int8conv-minmax64")
    assert int8.name == "emonet8-abc-int8conv-minmax64.onnx"
    assert artifacts.cache_stem(8, "random", True, ()) == "emonet8-random-fulltaps"
    keys = engine_build_keys("ab" * 32, "10.9.0", "NVIDIA H100", "fp16", 64)
    engine = engine_cache_path("m/emonet8.onnx", keys)
    assert engine == tmp_path / "emonet8-fp16-b64-nvidia-h100-trt10.9.0-abababababab.engine"


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("damage", ["truncated", "not onnx", "missing"])
def test_the_loader_refuses_a_bad_file_in_one_line(tmp_path, damage):
    path = _tiny_onnx(tmp_path / "m.onnx")
    assert load_onnx(path).graph.node[0].op_type == "Identity"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "not onnx":
        path.write_bytes(b"\xff" * 64 + b"definitely not a protobuf")
    else:
        path.unlink()
    with pytest.raises(UserInputError) as caught:
        load_onnx(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert message.startswith("no such model file" if damage == "missing" else "not an ONNX model")


def test_no_such_model_file_is_said_once():
    """The words live in paths.model_file; every other module calls it."""
    folders = ("src", "engine", "export", "cli")
    saying = sorted(p.relative_to(REPO).as_posix() for f in folders for p in (REPO / f).rglob("*.py")
                    if "no such model file" in p.read_text())
    assert saying == ["src/emoengine/paths.py"]


def test_the_opset_default_is_written_once():
    import inspect

    from emoengine.export.onnx_export import export_onnx

    assert inspect.signature(export_onnx).parameters["opset"].default == artifacts.DEFAULT_OPSET
    assert targets.ExportRequest().opset == artifacts.DEFAULT_OPSET
    assert "Option(DEFAULT_OPSET" in (REPO / "cli" / "export_cmd.py").read_text()


def _face(tmp_path: Path) -> Path:
    import cv2

    path = tmp_path / "face.png"
    cv2.imwrite(str(path), (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8))
    return path


def test_no_implicit_export_refuses_with_the_export_command(tmp_path, cli_in_process):
    result = cli_in_process("run", str(_face(tmp_path)), "--weights", "random", "--detector", "none",
                            "--out", str(tmp_path / "out"), "--no-implicit-export", cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "`emoengine export --weights random`" in errors[0], result.stderr
    assert "--no-implicit-export" in errors[0] and "--model" in errors[0]
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_no_implicit_export_names_the_command_for_each_artifact(tmp_path):
    int8 = request_for("ort-int8", weights="random", no_implicit_export=True)
    with pytest.raises(UserInputError, match=r"`emoengine export --weights random --precision int8`") as caught:
        prepare.Notice(int8, "int8-u8s8", "int8").check()
    assert caught.value.options == ("no_implicit_export", "model")
    fp16 = request_for("ort-cuda:fp16", model=str(tmp_path / "m.onnx"), no_implicit_export=True)
    with pytest.raises(UserInputError, match=r"`emoengine export --onnx \S+m.onnx --precision fp16`"):
        prepare.Notice(fp16, "fp16", "fp16").check()
    engine = request_for("trt:int8+max_batch=8", weights="w.pth", classes=5, no_implicit_export=True)
    assert prepare.export_command(prepare.Notice(engine, artifacts.ENGINE, "int8")) == \
        "emoengine export --weights w.pth --classes 5 --precision int8 --trt --max-batch 8"
    prepare.Notice(request_for("ort", weights="random"), "onnx", "fp32").check()   # allowed: nothing raised


def test_a_run_that_must_export_first_says_so_in_one_line(tmp_path, monkeypatch, caplog):
    """Through the backend row's prepare(): the checkpoint and the export stubbed (their own tests run them)."""
    from emoengine.export import checkpoint, onnx_export

    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(checkpoint, "load_emonet", lambda weights, classes: SimpleNamespace(
        num_classes=8, is_random=True, sha256="0" * 64))
    made = []
    monkeypatch.setattr(onnx_export, "export_onnx", lambda loaded, path, **kw: made.append(path) or path)
    request = request_for("ort", weights="random")
    with caplog.at_level(logging.INFO, logger="emoengine"):
        path = BACKENDS["ort"].prepare(request)
    assert made == [path] and path.name == "emonet8-random.onnx"
    notices = [r for r in caplog.records if r.name == prepare.__name__]
    assert len(notices) == 1 and notices[0].levelno == logging.INFO
    assert notices[0].getMessage() == f"exporting random to {path} first (once; cached)"


def test_the_notice_refuses_before_any_work(tmp_path, monkeypatch):
    from emoengine.export import onnx_export

    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **kw: pytest.fail("exported anyway"))
    with pytest.raises(UserInputError, match="no_implicit_export is set"):
        BACKENDS["ort"].prepare(request_for("ort", weights="random", no_implicit_export=True))


def test_the_settings_carry_no_implicit_export_to_the_model_request(tmp_path):
    from emoengine.settings import RunSettings

    cfg = RunSettings(weights="random", no_implicit_export=True).resolve(tmp_path / "x.png", tmp_path / "out")
    assert request_for(**cfg.model_args).no_implicit_export is True
    assert "no_implicit_export" not in RunSettings(weights="random").resolve("x", tmp_path).model_args


@pytest.mark.parametrize("first", ["emoengine.export.trt_engine", "emoengine.engine.backends.tensorrt"])
def test_the_tensorrt_build_and_run_sides_import_apart(first):
    """No import cycle: either side imports without TensorRT, and without importing the other."""
    other = ({"emoengine.export.trt_engine", "emoengine.engine.backends.tensorrt"} - {first}).pop()
    code = f"import sys, {first}; assert {other!r} not in sys.modules, 'imported the other side'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks" / "pythonpath"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_fake_request_shape_is_enough_for_the_notice():
    """The lazy preparation takes anything with a ModelRequest's fields (e.g. a benchmark's namespace)."""
    request = SimpleNamespace(weights="random", model=None, classes=None, full_taps=True, taps=("m0",),
                              no_implicit_export=True)
    assert prepare.export_command(prepare.Notice(request, "onnx", "fp32")) == \
        "emoengine export --weights random --full-taps --taps m0"
