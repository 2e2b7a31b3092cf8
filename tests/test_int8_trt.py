"""`export --precision int8 --target trt`: the QDQ model TensorRT builds (signed int8, every zero point 0, float
biases), checked with `onnx` on the CPU and run by ONNX Runtime CPU; `--min-agreement` and its recorded recipe;
the greedy search itself on made-up agreements. Random weights, 4 calibration crops (the default is 64). Bad
--target and --min-agreement values: tests/test_bench.py's table of bad export options."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emoengine.export.int8_search import search_keep_float


@pytest.fixture(scope="module")
def trt_int8(tmp_path_factory, cli, requires):
    """The real command once: everything int8 is acceptable at --min-agreement 0, so the search tries one recipe."""
    requires("mtcnn", "insightface")   # calibration crops: MTCNN's faces in the shipped photos
    cwd = tmp_path_factory.mktemp("int8trt")
    out = cwd / "q" / "emonet8-trt.onnx"
    result = cli("export", "--weights", "random", "--precision", "int8", "--target", "trt", "--calibration-crops",
                 "4", "--min-agreement", "0", "-o", str(out), cwd=cwd, timeout=1200)   # minutes on a busy machine
    assert result.returncode == 0, result.stderr
    return result, out


def qdq_facts(path):
    """(Q/DQ nodes, their zero points as arrays (None where absent), int32 DequantizeLinear inputs, Conv/Gemm bias
    inputs made by a DequantizeLinear, the graph's initializers)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [init.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None for n in qdq]
    int32_dq = [n.input[0] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in init
                and init[n.input[0]].dtype == np.int32]
    dq_out = {o for n in qdq if n.op_type == "DequantizeLinear" for o in n.output}
    dq_bias = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2
               and n.input[2] in dq_out]
    return qdq, zero_points, int32_dq, dq_bias, init, model


@pytest.mark.slow
def test_trt_int8_has_only_signed_int8_qdq_with_zero_points_0_and_float_biases(trt_int8):
    _, out = trt_int8
    qdq, zero_points, int32_dq, dq_bias, init, model = qdq_facts(out)
    assert len(qdq) > 100
    # an absent zero point means uint8 in ONNX: every Q/DQ states an int8 one, and it is 0
    assert all(zp is not None for zp in zero_points)
    assert {zp.dtype for zp in zero_points} == {np.dtype(np.int8)}
    assert all(not zp.any() for zp in zero_points)
    assert int32_dq == [] and dq_bias == []
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert convs and all(init[n.input[2]].dtype == np.float32 for n in convs if n.input[2] in init)


@pytest.mark.slow
def test_ort_int8_keeps_u8s8_with_zero_points(tmp_path, requires):
    """The ONNX Runtime flavour of the same fp32 model stays U8S8 (its fast path): uint8 activations."""
    requires("mtcnn", "insightface")
    from emoengine.export.checkpoint import load_emonet
    from emoengine.export.onnx_export import export_onnx
    from emoengine.export.quantize import quantize_int8

    fp32 = export_onnx(load_emonet("random", 8), tmp_path / "m.onnx", verify=False).path
    report = quantize_int8(fp32, tmp_path / "m-int8.onnx", calibration_crops=2, keep_float=("emotion",))
    _, zero_points, int32_dq, _, _, _ = qdq_facts(report.path)
    assert np.dtype(np.uint8) in {zp.dtype for zp in zero_points if zp is not None} and int32_dq
    assert json.loads(report.metadata["int8_recipe"])["flavour"] == "u8s8"


@pytest.mark.slow
def test_trt_int8_runs_on_ort_cpu_and_its_agreement_is_reported(trt_int8):
    from emoengine.engine.backends import OrtRunner
    from emoengine.export.emonet import output_names, synthetic_crops

    result, out = trt_int8
    with OrtRunner(out) as runner:
        got = runner.infer(synthetic_crops(2, seed=4))
    assert list(got) == list(output_names(False)) and got["expression"].shape == (2, 8)
    assert all(np.isfinite(v).all() for v in got.values())
    text = " ".join(result.stdout.split())
    assert "QDQ S8S8 symmetric" in text and "expression top-1 agreement with fp32 on 32 face crops:" in text


@pytest.mark.slow
def test_min_agreement_records_the_recipe_in_the_metadata(trt_int8):
    from emoengine.export.onnx_export import read_metadata

    result, out = trt_int8
    recipe = json.loads(read_metadata(out)["int8_recipe"])
    assert recipe["flavour"] == "s8s8" and recipe["keep_float"] == [] and recipe["calibration_crops"] == 4
    search = recipe["search"]
    assert search["min_agreement"] == 0 and search["met"] is True and search["agreement_crops"] == 4
    assert search["tried"] == [{"keep_float": [], "top1_agreement": search["top1_agreement"]}]
    assert "float layers chosen for top-1 agreement >= 0.0%" in " ".join(result.stdout.split())
    assert sorted(p.name for p in out.parent.iterdir()) == ["emonet8-trt.calib-conv-minmax4.json", out.name]


# -- the search on made-up agreements ----------------------------------------------------------------------------
GROUPS = {"stem": ("a", "b"), "body": ("c", "d", "e"), "head": ("f", "g"), "fc": ("g",)}


def run_search(score: dict[tuple[str, ...], float], target: float):
    made = []

    def make(keep):
        made.append(keep)
        return keep   # the "path" is the recipe itself

    best, trials = search_keep_float(make, lambda keep: score.get(keep, 0.5), target, GROUPS)
    return best, trials, made


def test_search_stops_at_everything_int8_when_it_agrees_enough():
    best, trials, made = run_search({(): 0.98}, 0.97)
    assert best.keep_float == () and made == [()] and len(trials) == 1


def test_search_keeps_the_best_group_float_then_adds_more_until_the_target():
    score = {(): 0.80, ("head",): 0.93, ("stem",): 0.85, ("body",): 0.90, ("fc",): 0.93,
             ("body", "fc"): 0.96, ("fc", "stem"): 0.97, ("fc", "head"): 0.93}
    best, trials, made = run_search(score, 0.97)
    # step 1: head and fc tie at 0.93; fc has fewer modules, so it is the one kept float
    assert made[:5] == [(), ("stem",), ("body",), ("head",), ("fc",)]
    assert best.keep_float == ("fc", "stem") and best.agreement == 0.97
    assert [t.keep_float for t in trials][5:] == [("fc", "stem"), ("body", "fc"), ("fc", "head")]


def test_search_skips_groups_already_float_and_says_when_the_target_is_out_of_reach():
    score = {(): 0.5, ("head",): 0.9}
    best, trials, made = run_search(score, 0.99)
    assert ("fc", "head") not in made   # fc's module is inside head: nothing new to keep float
    assert best.agreement < 0.99 and len(best.keep_float) == 3


def test_search_refuses_a_target_outside_0_1():
    from emoengine.errors import UserInputError

    with pytest.raises(UserInputError, match="between 0 and 1"):
        run_search({}, 1.2)
