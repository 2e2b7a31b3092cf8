"""The exported ONNX model: golden outputs under ONNX Runtime CPU, names, dynamic batch, metadata, one file."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest

from emoengine import __version__
from emoengine.compare import compare, within
from emoengine.engine.backends import OrtRunner
from emoengine.export.checkpoint import LoadedEmoNet
from emoengine.export.emonet import EmoNet, output_names, synthetic_crops
from emoengine.export.onnx_export import decode_metadata, export_onnx, read_metadata

BASE_KEYS = ("expression", "valence", "arousal", "heatmap", "conv1_mean", "emo_conv1_mean")


def assert_matches_golden(got: dict, golden: dict, rows: slice, keys) -> None:
    for key in keys:
        assert got[key].shape == golden[key][rows].shape, key
    verdict = compare({key: got[key] for key in keys}, {key: golden[key][rows] for key in keys}, "fp32")
    assert verdict, verdict.table()


@pytest.fixture(scope="module")
def runner_full_8(onnx_full_8):
    with OrtRunner(onnx_full_8[0]) as runner:
        yield runner


@pytest.mark.parametrize("rows", [slice(1, 2), slice(0, 4)], ids=["batch1", "batch4"])
def test_full_taps_onnx_reproduces_golden(runner_full_8, golden_outputs, rows):
    golden = golden_outputs(8)
    got = runner_full_8.infer(golden["images_rgb"][rows])
    assert list(got) == list(output_names(True))
    got["conv1_first8"], got["emo_conv1_first8"] = got["conv1"][:, :8], got["emo_conv1"][:, :8]
    assert_matches_golden(got, golden, rows, BASE_KEYS + ("conv1_first8", "emo_conv1_first8"))


@pytest.mark.parametrize("rows", [slice(3, 4), slice(0, 4)], ids=["batch1", "batch4"])
def test_plain_onnx_reproduces_golden(onnx_plain_5, golden_outputs, rows):
    with OrtRunner(onnx_plain_5.path) as runner:
        got = runner.infer(golden_outputs(5)["images_rgb"][rows])
    assert list(got) == list(output_names(False))
    assert_matches_golden(got, golden_outputs(5), rows, BASE_KEYS)


def test_plain_export_report_and_default_path(onnx_plain_5):
    report = onnx_plain_5
    assert report.path.name == "emonet5.onnx" and report.path.parent.name == "models"
    assert report.verify_batch == 2
    assert list(report.worst_rel_diff) == list(output_names(False))
    assert not within(report.worst_rel_diff, "fp32"), report.worst_rel_diff
    assert sorted(p.name for p in report.path.parent.iterdir()) == ["emonet5.onnx"]  # no temp, no .data


def test_graph_io_names_types_and_dynamic_batch(onnx_full_8):
    model = onnx.load(str(onnx_full_8[0]), load_external_data=False)
    (inp,) = model.graph.input
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims(inp) == ["batch", 256, 256, 3]
    assert [o.name for o in model.graph.output] == list(output_names(True))
    shapes = {o.name: dims(o) for o in model.graph.output}
    assert shapes["expression"] == ["batch", 8] and shapes["valence"] == ["batch"]
    assert shapes["conv1_mean"] == ["batch", 128, 128] and shapes["emo_conv1"] == ["batch", 128, 64, 64]
    assert all(isinstance(s[0], str) and s[0] for s in shapes.values())
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_metadata_round_trips(onnx_full_8, golden_pth_8):
    meta = read_metadata(onnx_full_8[0])
    assert meta["class_names"] == ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
    assert meta["num_classes"] == 8 and meta["full_taps"] is True
    assert meta["taps"] == ["conv1_mean", "emo_conv1_mean", "conv1", "emo_conv1"]
    assert meta["checkpoint_sha256"] == hashlib.sha256(golden_pth_8.read_bytes()).hexdigest()
    assert meta["checkpoint_source"] == golden_pth_8.name
    assert meta["emoengine_version"] == __version__
    assert meta["input_layout"] == "NHWC uint8 RGB 256x256"
    assert meta["producer"].startswith("emoengine")
    with OrtRunner(onnx_full_8[0]) as runner:
        assert decode_metadata(runner.metadata) == meta


def test_cli_reports_where_size_metadata_and_diffs(onnx_full_8):
    path, result = onnx_full_8
    assert str(path) in result.stdout.replace("\n", "")
    for text in ("MB", "Contempt", "emo_conv1_mean", "worst rel. diff"):
        assert text in result.stdout
    assert result.stderr == ""
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_random_weights_export_and_run(tmp_path, cli):
    out = tmp_path / "random5.onnx"
    result = cli("export", "--weights", "random", "--classes", "5", "--output", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "RANDOM" in result.stderr and "MEAN NOTHING" in result.stderr
    meta = read_metadata(out)
    assert meta["checkpoint_source"] == "random" and meta["checkpoint_sha256"] == "random-seed0"
    assert meta["num_classes"] == 5 and meta["full_taps"] is False
    with OrtRunner(out) as runner:
        got = runner.infer(synthetic_crops(2, seed=3))
    assert got["expression"].shape == (2, 5) and got["heatmap"].shape == (2, 68, 64, 64)
    assert all(np.isfinite(v).all() for v in got.values())


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    """Anything failing after the exporter wrote its temp file removes it; the final name never appears."""
    import emoengine.export.onnx_export as onnx_export

    def broken_export(graph, path, opset):
        path.write_bytes(b"half a model")

    monkeypatch.setattr(onnx_export, "_torch_export", broken_export)
    loaded = LoadedEmoNet(EmoNet(8), 8, ("x",) * 8, "0" * 64, "none", False)
    with pytest.raises(Exception):  # noqa: B017 - any failure at all: the point is what is left behind
        export_onnx(loaded, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_decode_metadata_leaves_foreign_values():
    assert decode_metadata({"taps": "not json", "num_classes": "8", "x": "1"}) == \
        {"taps": "not json", "num_classes": 8, "x": "1"}
    assert json.loads(json.dumps(decode_metadata({"class_names": '["A"]'}))) == {"class_names": ["A"]}
