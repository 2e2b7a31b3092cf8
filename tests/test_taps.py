"""Taps by upstream module name (issue 13): the torch graph and an ONNX export with `--taps` against upstream's
forward hooks on 13 layers (golden emonet8.taps.npz), the names, `emoengine layers`, and the export's metadata."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import onnx
import pytest
import torch

from emoengine.cli.main import main as cli_main
from emoengine.compare import FP32_TOLERANCE, GOLDEN_TORCH_TOLERANCE, TAP_TOLERANCE
from emoengine.contract import output_names, tap_outputs
from emoengine.engine.backends import OrtRunner
from emoengine.engine.model.emonet_model import EmoNetModel
from emoengine.errors import UserInputError
from emoengine.export.checkpoint import load_emonet
from emoengine.export.emonet import EmoNet, EmoNetGraph
from emoengine.export.onnx_export import read_metadata
from emoengine.export.taps import TapRecorder, emonet_module_paths, layer_table, module_paths, taps_tag

# the golden file's 13 layers, the three examples first (the export below asks for them in this order)
GOLDEN_LAYERS = ("m1.b2_plus_1", "emo_net_2.2.conv3", "avg_pool_2", "conv1", "conv2", "conv4", "m0", "top_m_1",
                 "l1", "conv1x1_input_emo_2", "emo_net_2.0.conv1", "emo_net_2.7", "emo_fc_2.1")


def golden_view(tap: np.ndarray) -> dict[str, np.ndarray]:
    """golden/README.md's three keys computed from a full tap (N, C, ...) or vector tap (N, F)."""
    c, spatial = tap.shape[1], tuple(range(2, tap.ndim))
    return {"mean": tap.mean(axis=1),
            "chanmean": tap.mean(axis=spatial) if spatial else tap,
            "slice": tap[0, [0, c // 3, 2 * c // 3, c - 1]] if spatial else tap[0]}


def tap_errors(taps: dict[str, np.ndarray], golden: dict[str, np.ndarray]) -> dict[str, float]:
    """Per layer: worst |ours - golden| over its three keys, over the layer's largest golden magnitude (the largest
    |value| among the layer's golden keys: the untouched slice, the channel means, the mean map)."""
    errors = {}
    for layer, tap in taps.items():
        ours = golden_view(np.asarray(tap, np.float64))
        scale = max(float(np.abs(golden[f"{layer}__{key}"]).max()) for key in ours)
        worst = 0.0
        for key, value in ours.items():
            ref = golden[f"{layer}__{key}"]
            assert value.shape == ref.shape, f"{layer}__{key}: {value.shape} vs golden {ref.shape}"
            worst = max(worst, float(np.abs(value - ref).max()))
        errors[layer] = worst / scale
    return errors


@pytest.fixture(scope="module")
def golden_taps(golden_dir) -> dict[str, np.ndarray]:
    with np.load(golden_dir / "emonet8.taps.npz") as z:
        golden = {k: z[k] for k in z.files}
    assert sorted({k.split("__")[0] for k in golden}) == sorted(GOLDEN_LAYERS)
    return golden


@pytest.fixture(scope="module")
def net8(golden_pth_8) -> EmoNet:
    return load_emonet(golden_pth_8).model


@pytest.fixture(scope="module")
def torch_taps(net8, golden_outputs) -> dict[str, np.ndarray]:
    """The torch graph's outputs on the golden crops with every golden layer tapped, and the in-place ReLU too."""
    graph = EmoNetGraph(net8, taps=(*GOLDEN_LAYERS, "emo_fc_2.2"))
    assert graph.output_names == output_names() + GOLDEN_LAYERS + ("emo_fc_2.2",)
    with torch.no_grad():
        outputs = graph(torch.from_numpy(golden_outputs(8)["images_rgb"]))
    return dict(zip(graph.output_names, (t.numpy() for t in outputs), strict=True))


@pytest.fixture(scope="module")
def onnx_taps_8(onnx_taps13_8):
    """The golden 8-class model exported through the CLI with `--taps` naming every golden layer (verified):
    conftest's session export, also run by tests/test_run_taps.py."""
    return onnx_taps13_8


def test_torch_graph_taps_match_upstream_hooks(torch_taps, golden_outputs, golden_taps):
    errors = tap_errors({name: torch_taps[name] for name in GOLDEN_LAYERS}, golden_taps)
    assert all(e <= TAP_TOLERANCE for e in errors.values()), errors
    golden = golden_outputs(8)
    for key in output_names():  # taps only observe: the contract outputs as test_emonet_reference has them
        assert np.abs(torch_taps[key] - golden[key]).max() <= GOLDEN_TORCH_TOLERANCE * np.abs(golden[key]).max(), key


def test_tap_after_in_place_relu_is_a_copy(net8, torch_taps, golden_taps):
    """emo_fc_2.2 is an in-place ReLU (as upstream's): the emo_fc_2.1 tap keeps the BatchNorm's negative values."""
    relu = dict(net8.named_modules())["emo_fc_2.2"]
    assert isinstance(relu, torch.nn.ReLU) and relu.inplace
    bn, after_relu = torch_taps["emo_fc_2.1"], torch_taps["emo_fc_2.2"]
    assert (bn < 0).any() and np.array_equal(after_relu, np.maximum(bn, 0))
    assert tap_errors({"emo_fc_2.1": bn}, golden_taps)["emo_fc_2.1"] <= TAP_TOLERANCE


@pytest.fixture(scope="module")
def ort_taps(onnx_taps_8, golden_outputs) -> dict[str, np.ndarray]:
    with OrtRunner(onnx_taps_8[0]) as runner:
        return runner.infer(golden_outputs(8)["images_rgb"])


def test_onnx_export_taps_match_upstream_hooks(ort_taps, golden_outputs, golden_taps):
    golden, got = golden_outputs(8), ort_taps
    assert list(got) == list(output_names()) + list(GOLDEN_LAYERS)
    assert all(got[name].dtype == np.float32 for name in GOLDEN_LAYERS)
    errors = tap_errors({name: got[name] for name in GOLDEN_LAYERS}, golden_taps)
    assert all(e <= TAP_TOLERANCE for e in errors.values()), errors
    for key in output_names():  # the contract outputs as without taps (test_export's tolerance)
        assert np.abs(got[key] - golden[key]).max() <= FP32_TOLERANCE * np.abs(golden[key]).max(), key


def test_export_with_taps_outputs_metadata_and_report(onnx_taps_8):
    path, result = onnx_taps_8
    model = onnx.load(str(path), load_external_data=False)
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert outputs["m1.b2_plus_1"] == ["batch", 256, 4, 4]
    assert outputs["emo_net_2.2.conv3"] == ["batch", 64, 32, 32]
    assert outputs["avg_pool_2"] == ["batch", 256, 1, 1]
    assert outputs["emo_fc_2.1"] == ["batch", 128]
    meta = read_metadata(path)
    assert meta["taps"] == ["conv1_mean", "emo_conv1_mean", *GOLDEN_LAYERS]
    assert tap_outputs(meta["taps"]) == list(GOLDEN_LAYERS)
    assert "m1.b2_plus_1" in result.stdout and "worst rel. diff" in result.stdout  # verified, taps included
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_emonet_model_returns_taps_by_name(onnx_taps_8, golden_outputs, ort_taps):
    crops = golden_outputs(8)["images_rgb"][2:]
    model = EmoNetModel(OrtRunner(onnx_taps_8[0]), max_batch=1)  # 2 crops: two chunks, concatenated
    try:
        assert model.taps == list(GOLDEN_LAYERS)
        assert not model.has_full_taps  # `conv1` is a tap here; without `emo_conv1` it is no --full-taps file
        batch = model.predict(crops)
    finally:
        model.close()
    assert list(batch.taps) == ["conv1_mean", "emo_conv1_mean", *GOLDEN_LAYERS]   # every tap output, by name
    assert batch.taps["avg_pool_2"].shape == (2, 256, 1, 1) and batch.taps["emo_fc_2.1"].shape == (2, 128)
    for name in GOLDEN_LAYERS:
        tap = batch.taps[name]
        ref = ort_taps[name][2:]
        assert tap.dtype == np.float32 and np.abs(tap - ref).max() <= TAP_TOLERANCE * np.abs(ref).max(), name
    second = batch.rows(1, 2)  # what the pipeline hands each frame
    assert len(second) == 1 and np.array_equal(second.taps["m0"], batch.taps["m0"][1:])


def test_fp16_conversion_keeps_tap_outputs_float32(onnx_taps_8):
    from emoengine.export.fp16 import convert_to_fp16

    converted, _ = convert_to_fp16(onnx.load(str(onnx_taps_8[0])))
    types = {o.name: o.type.tensor_type.elem_type for o in converted.graph.output}
    assert all(types[name] == onnx.TensorProto.FLOAT for name in GOLDEN_LAYERS)


@pytest.mark.slow
def test_int8_taps_stay_float_and_change_nothing_else(onnx_taps_8, onnx_full_8, golden_outputs, tmp_path):
    """Quantised with and without the 13 taps (same calibration): the taps come out float32 with their shapes,
    and the contract outputs are bit-identical, so a tap never changes what the int8 model computes."""
    from emoengine.export.quantize import quantize_int8

    crops = golden_outputs(8)["images_rgb"][:2]
    outputs = []
    for source in (onnx_taps_8[0], onnx_full_8[0]):
        report = quantize_int8(source, tmp_path / f"{source.stem}-int8.onnx", calibration_crops=2)
        with OrtRunner(report.path) as runner:
            outputs.append(runner.infer(crops))
    with_taps, without = outputs
    assert tap_outputs(with_taps) == list(GOLDEN_LAYERS)
    assert all(with_taps[name].dtype == np.float32 for name in GOLDEN_LAYERS)
    assert with_taps["m1.b2_plus_1"].shape == (2, 256, 4, 4) and with_taps["emo_fc_2.1"].shape == (2, 128)
    for key in output_names():
        assert np.array_equal(with_taps[key], without[key]), key


def test_unknown_tap_raises_with_closest_names():
    net = EmoNet(8)
    with pytest.raises(UserInputError, match=r"unknown tap 'm1\.b2_plus1'.*closest: m1\.b2_plus_1") as e:
        EmoNetGraph(net, taps=["conv1", "m1.b2_plus1"])
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_cli_unknown_tap_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))
    with pytest.raises(SystemExit) as e:
        cli_main(["export", "--weights", "random", "--taps", "avg_pool_2,emo_fc2.1", "--output",
                  str(tmp_path / "m.onnx")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "emo_fc2.1" in err and "emo_fc_2.1" in err
    assert list(tmp_path.iterdir()) == []


def test_layers_lists_modules_with_shape_and_bytes(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["layers", "--plain"])
    assert e.value.code == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["avg_pool_2"] == ["avg_pool_2", "AvgPool2d", "256x1x1", str(256 * 4), "vector"]
    assert rows["emo_net_2.1"][1:4] == ["MaxPool2d", "256x32x32", str(256 * 32 * 32 * 4)]
    assert rows["emo_fc_2.1"][2:] == ["128", "512", "vector"] and rows["m0"][4] == "map"
    assert set(GOLDEN_LAYERS) <= set(rows)


def test_module_names_are_upstreams():
    """Every state-dict prefix is a module; the parameterless upstream modules exist too; the table covers all."""
    net = EmoNet(8)
    names = module_paths(net)
    assert {key.rsplit(".", 1)[0] for key in net.state_dict()} <= set(names)
    assert {"avg_pool_2", "emo_net_2.1", "emo_net_2.3", "emo_net_2.5", "emo_net_2.7", "emo_fc_2.2",
            "conv2.downsample.1"} <= set(names)
    assert emonet_module_paths() == names == [layer.name for layer in layer_table(8)]
    assert [layer.shape for layer in layer_table(5) if layer.name == "emo_fc_2.3"] == [(7,)]


def test_output_names_and_tap_outputs():
    assert output_names(True, ["conv1", "m0", "m0"]) == output_names(True) + ("m0",)  # conv1 is already there
    assert output_names(False, ["conv1"]) == output_names(False) + ("conv1",)
    assert tap_outputs(output_names(True)) == ["conv1"]  # the full conv1 map is conv1's tap; emo_conv1 is renamed
    assert tap_outputs(output_names(False, ["avg_pool_2"])) == ["avg_pool_2"]
    assert taps_tag([]) == "" and taps_tag(["m0", "conv1"]) == taps_tag(["conv1", "m0", "m0"])
    assert taps_tag(["m0"]).startswith("-taps1-") and taps_tag(["m0"]) != taps_tag(["m1"])


def test_recorder_copies_deep_copies_and_keeps_to_itself():
    """A tap is a clone taken as the module returns; a recorder records only between its own start() and take(),
    so graphs sharing a net do not record for each other; a deep-copied net feeds the copy's recorder."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(inplace=True))
    first, second = TapRecorder(net, ["0"]), TapRecorder(net, ["1"], copy=False)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    first.start()
    with torch.no_grad():
        y = net(x)
    (tap,) = first.take()
    assert second.outputs == {} and (tap < 0).any() and torch.equal(tap.clamp(min=0), y)
    twin_net, twin = copy.deepcopy((net, first))
    twin.start()
    with torch.no_grad():
        twin_net(x)
    assert first.outputs == {} and torch.equal(twin.take()[0], tap)
    first.start()
    with pytest.raises(RuntimeError, match="did not run"):
        first.take()


def test_cached_onnx_is_keyed_by_the_tap_set(golden_pth_8, tmp_path, monkeypatch):
    """`cached_onnx_for` names the artifact after the tap set (order-free) and exports those taps."""
    import emoengine.export.onnx_export as onnx_export
    from emoengine.engine.backends import request_for
    from emoengine.export.prepare import cached_onnx_for

    exported = []

    def record_export(loaded, path, full_taps=False, verify=True, taps=()):
        exported.append(tuple(taps))
        path.write_bytes(b"")

    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path))
    monkeypatch.setattr(onnx_export, "export_onnx", record_export)
    monkeypatch.setattr(onnx_export, "read_metadata", lambda path: {})
    path = cached_onnx_for(request_for("ort", weights=str(golden_pth_8), classes=8, taps=("m0", "avg_pool_2")))
    sha12 = hashlib.sha256(golden_pth_8.read_bytes()).hexdigest()[:12]
    assert path.name == f"emonet8-{sha12}{taps_tag(['m0', 'avg_pool_2'])}.onnx"
    assert exported == [("avg_pool_2", "m0")]
    assert cached_onnx_for(request_for("ort", weights=str(golden_pth_8), classes=8)).name == f"emonet8-{sha12}.onnx"
