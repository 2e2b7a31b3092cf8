"""The fp16 ONNX export: where fp32 is kept, what fp16 costs in accuracy, and that the file is a valid fp16 model.

Accuracy is judged on emulated fp16 storage (`emulate_fp16`): ONNX Runtime's CPU provider runs most fp16 ops by
casting back to fp32 and drops the rounding, so its result on the converted file is only a lower bound on the
error a GPU shows. Tolerances: emoengine.compare.FP16_TOLERANCE (measured worst on the golden weights, x2-3)."""

from __future__ import annotations

import numpy as np
import pytest

from emoengine.compare import FP16_TOLERANCE, relative_diff
from emoengine.export.fp16 import FP16_MAX, PRECAUTION_FP32

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fp16_full_8(onnx_full_8, golden_outputs, tmp_path_factory):
    """The golden 8-class full-taps export converted to fp16, measured on 2 golden crops."""
    from emoengine.export.fp16 import export_fp16

    crops = golden_outputs(8)["images_rgb"][:2]
    out = tmp_path_factory.mktemp("fp16") / "emonet8_full.fp16.onnx"
    return export_fp16(onnx_full_8[0], out, images=crops), crops


def test_golden_activations_stay_far_below_fp16_max_and_only_the_mask_ops_stay_fp32(fp16_full_8):
    report, _ = fp16_full_8
    assert report.max_abs < FP16_MAX / 50  # measured: ~380 on the golden crops
    assert sorted(report.kept_fp32) == sorted(PRECAUTION_FP32)


def test_emulated_fp16_is_within_tolerance_of_fp32(fp16_full_8):
    report, _ = fp16_full_8
    assert set(report.worst_rel_diff) == {"expression", "valence", "arousal", "heatmap", "conv1_mean",
                                          "emo_conv1_mean", "conv1", "emo_conv1"}
    for name, diff in report.worst_rel_diff.items():
        assert 0 < diff <= FP16_TOLERANCE[name], name  # > 0: the rounding really was emulated


def test_fp16_file_keeps_the_contract_types_and_runs_under_ort_cpu(fp16_full_8, onnx_full_8):
    import onnx

    from emoengine.engine.backends import OrtRunner

    report, crops = fp16_full_8
    model = onnx.load(str(report.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {onnx.TensorProto.FLOAT}
    weights = {t.name: t.data_type for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(weights[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)
    kept = {n.name: n for n in model.graph.node if n.name in PRECAUTION_FP32}
    assert set(kept) == set(PRECAUTION_FP32)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "fp16" and '"Happy"' in meta["class_names"]
    assert report.size_bytes < 0.6 * onnx_full_8[0].stat().st_size

    with OrtRunner(onnx_full_8[0]) as ref_runner, OrtRunner(report.path) as runner:
        ref, got = ref_runner.infer(crops), runner.infer(crops)
    for name in ref:
        assert got[name].dtype == np.float32
        assert relative_diff(got[name], ref[name]) <= FP16_TOLERANCE[name], name


def tiny_model(scale: float):
    """x (float32) -> times `scale` -> divided by `scale` -> y: the middle tensor can overflow fp16."""
    from onnx import TensorProto, helper, numpy_helper

    s = numpy_helper.from_array(np.array(scale, np.float32), "s")
    nodes = [helper.make_node("Mul", ["x", "s"], ["big"], name="grow"),
             helper.make_node("Div", ["big", "s"], ["y"], name="shrink")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [s])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_tiny(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def test_emulation_shows_fp16_overflow_and_keeping_the_node_fp32_removes_it():
    from emoengine.export.fp16 import convert_to_fp16, emulate_fp16

    model, x = tiny_model(1000.0), np.array([1.0, 80.0, -0.5], np.float32)  # 80 * 1000 > 65504
    plain = run_tiny(emulate_fp16(model), x)
    assert np.isinf(plain[1]) and abs(plain[0] - 1.0) < 1e-3
    kept = run_tiny(emulate_fp16(model, ["grow", "shrink"]), x)
    np.testing.assert_allclose(kept, x, rtol=1e-6)

    converted, names = convert_to_fp16(model, ["grow", "shrink"])
    assert names == ["grow", "shrink"]
    np.testing.assert_allclose(run_tiny(converted, x), x, rtol=1e-6)  # float32 in, float32 out, fp32 inside


def test_fp32_plan_keeps_nodes_near_the_fp16_range_and_non_finite_ones():
    from emoengine.export.fp16 import fp32_plan

    ranges = {"a": ("/net/a", "Conv", 12.0), "b": ("/net/b", "Add", 9000.0), "c": ("/net/c", "Mul", float("inf")),
              "d": ("/net/d", "Add", 8000.0)}
    assert fp32_plan(ranges) == sorted({"/net/b", "/net/c", *PRECAUTION_FP32})


def test_pytorch_half_arithmetic_within_the_fp16_tolerances(golden_pth_8, golden_outputs):
    """What torch-cuda:fp16 computes (the whole model cast to half), in real half arithmetic on the CPU.
    (bf16 is not held to a CPU test: its error, 5e-2..1.5e-1 of the magnitude, depends on the crops chosen.)"""
    import torch

    from emoengine.export.checkpoint import load_emonet
    from emoengine.export.emonet import EmoNetGraph

    golden = golden_outputs(8)
    crops = golden["images_rgb"][:2]
    graph = EmoNetGraph(load_emonet(golden_pth_8).model).eval().to(torch.float16)
    with torch.inference_mode():
        out = dict(zip(graph.output_names, graph(torch.from_numpy(crops)), strict=True))
    tolerance = FP16_TOLERANCE
    for name in ("expression", "valence", "arousal", "heatmap", "conv1_mean", "emo_conv1_mean"):
        diff = relative_diff(out[name].float().numpy(), golden[name][:2])
        assert 0 < diff <= tolerance[name], f"{name}: {diff:.2e}"
