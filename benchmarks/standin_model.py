"""A stand-in for EmoNet: the export's inputs, outputs, taps and metadata, a few cheap ops instead of the network.

With the model nearly free (under a millisecond a face on a CPU, as EmoNet is on a GPU), a run measures what
surrounds it: decoding, detection, tracking, cropping, drawing, encoding, writing (benchmarks/pipeline_capacity.py).
Its metadata says `stand_in: true` (and `checkpoint_source: stand-in`), so `run` warns loudly, as it does for
random weights, and summary.json says `random_weights: true`: its predictions mean nothing.

    python -m emoengine.benchmarks.standin_model OUT.onnx
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from emoengine.contract import (
    BASE_OUTPUTS,
    CROP_SIZE,
    HEATMAP_SIZE,
    INPUT_NAME,
    MEAN_TAP_OUTPUTS,
    NUM_LANDMARKS,
    class_names,
)

OPSET = 17
STAND_IN_KEY = "stand_in"   # metadata key EmoNetModel reads (engine.model.emonet_model)


def _nodes(helper, num_classes: int) -> list:
    """image (N,256,256,3) uint8 -> grey mean -> 2x and 4x average pools: the two tap means, a heatmap made of
    the 64x64 map repeated per landmark, and expression/valence/arousal from the map's mean."""
    conv1_side, emo_side = MEAN_TAP_OUTPUTS["conv1_mean"][0], MEAN_TAP_OUTPUTS["emo_conv1_mean"][0]
    k1, k2 = CROP_SIZE // conv1_side, conv1_side // emo_side
    return [
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=1),
        helper.make_node("ReduceMean", ["x"], ["grey"], axes=[3], keepdims=1),      # (N,256,256,1)
        helper.make_node("Transpose", ["grey"], ["grey_nchw"], perm=[0, 3, 1, 2]),   # (N,1,256,256)
        helper.make_node("AveragePool", ["grey_nchw"], ["p1"], kernel_shape=[k1, k1], strides=[k1, k1]),
        helper.make_node("AveragePool", ["p1"], ["p2"], kernel_shape=[k2, k2], strides=[k2, k2]),
        helper.make_node("Squeeze", ["p1", "axis1"], ["conv1_mean"]),
        helper.make_node("Squeeze", ["p2", "axis1"], ["emo_conv1_mean"]),
        helper.make_node("Expand", ["p2", "heat_shape"], ["heatmap"]),                # (N,68,64,64)
        helper.make_node("ReduceMean", ["p2"], ["level"], axes=[1, 2, 3], keepdims=1),   # (N,1,1,1)
        helper.make_node("Reshape", ["level", "col"], ["level_n1"]),                  # (N,1)
        helper.make_node("Gemm", ["level_n1", "w", "b"], ["expression"]),              # (N,C)
        helper.make_node("Mul", ["level_n1", "inv255"], ["unit"]),
        helper.make_node("Sub", ["unit", "half"], ["centred"]),
        helper.make_node("Reshape", ["centred", "flat"], ["valence"]),
        helper.make_node("Neg", ["valence"], ["arousal"]),
    ]


def _initializers(numpy_helper, num_classes: int) -> list:
    rng = np.random.default_rng(0)
    values = {
        "axis1": np.array([1], np.int64), "heat_shape": np.array([1, NUM_LANDMARKS, 1, 1], np.int64),
        "col": np.array([-1, 1], np.int64), "flat": np.array([-1], np.int64), "w": rng.normal(0, 0.05, (1, num_classes)).astype(np.float32),
        "b": rng.normal(0, 1, num_classes).astype(np.float32), "inv255": np.array([1 / 255], np.float32),
        "half": np.array([0.5], np.float32),
    }
    return [numpy_helper.from_array(v, name) for name, v in values.items()]


def build_standin(num_classes: int = 8):
    """The stand-in as an onnx.ModelProto (checked)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shapes = {"expression": ["N", num_classes], "valence": ["N"], "arousal": ["N"],
              "heatmap": ["N", NUM_LANDMARKS, HEATMAP_SIZE, HEATMAP_SIZE],
              **{name: ["N", *dims] for name, dims in MEAN_TAP_OUTPUTS.items()}}
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in BASE_OUTPUTS]
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", CROP_SIZE, CROP_SIZE, 3])
    graph = helper.make_graph(_nodes(helper, num_classes), "emonet-stand-in", [image], outputs,
                              initializer=_initializers(numpy_helper, num_classes))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="emoengine")
    model.ir_version = min(model.ir_version, 9)   # readable by older ONNX Runtime builds too
    taps = [n for n in BASE_OUTPUTS if n in MEAN_TAP_OUTPUTS]
    for key, value in {"class_names": json.dumps(list(class_names(num_classes))),
                       "num_classes": json.dumps(num_classes), "taps": json.dumps(taps), "full_taps": "false",
                       "checkpoint_source": "stand-in", STAND_IN_KEY: "true",
                       "producer": "emoengine.benchmarks.standin_model (not EmoNet: cheap ops, "
                                   "the export's contract)"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def write_standin(path: str | Path, num_classes: int = 8) -> Path:
    """Write the stand-in to `path` (folders made) and return it."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_standin(num_classes), str(path))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m emoengine.benchmarks.standin_model OUT.onnx")
    print(write_standin(sys.argv[1]))
