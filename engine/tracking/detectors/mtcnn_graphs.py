"""MTCNN's P-, R- and O-Net as ONNX graphs, built with onnx.helper from the weights the `mtcnn` wheel ships.

Why build them here: the wheel's own code needs TensorFlow; its weights are just lists of arrays (joblib + lz4),
so we write the three small graphs ourselves and run them on ONNX Runtime - no TensorFlow, no torch at run time.

Weight layout (Keras, read from the wheel's mtcnn/network/*.py): per layer in creation order, Conv2D kernel
HWIO + bias, PReLU alpha (1, 1, C) shared over H and W (dense PReLU: (C,)), Dense kernel (in, out) + bias.
The wheel feeds images untransposed (N, H, W, C), so the conv kernels apply as they are (HWIO -> OIHW); before
the first dense layer it permutes NHWC to (N, W, H, C) and flattens, which we reproduce with a Transpose.
Pooling is TensorFlow "same" (extra padding at the end, i.e. ONNX SAME_UPPER) or "valid".

Inputs are NHWC uint8 RGB pixels (P-Net any size; R/O-Net 24x24 / 48x48; batch dynamic); the graph
normalises (x - 127.5) / 128 as the wheel does. Outputs: `prob` = P(face) (softmax of the 2-way head, computed as
sigmoid(l1 - l0), the same number), `reg` box offsets, and for O-Net `landmarks` (x1..x5, y1..y5).
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from emoengine.engine.tracking.detectors.mtcnn import NET_NAMES
from emoengine.errors import UserInputError

OPSET = 17


def default_weights_dir() -> Path:
    """Where the `mtcnn` wheel keeps pnet/rnet/onet.lz4, found without importing it (it imports tensorflow)."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError("the mtcnn detector needs the weights of the `mtcnn` package: pip install mtcnn")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / "weights"


def load_weights(weights_dir: str | Path | None = None) -> dict[str, list[np.ndarray]]:
    """The three nets' weight lists, as the wheel stores them (Keras get_weights() order)."""
    folder = Path(weights_dir) if weights_dir else default_weights_dir()
    out = {}
    for name in NET_NAMES:
        path = folder / f"{name}.lz4"
        if not path.is_file():
            raise UserInputError(f"no MTCNN weights at {path} (expected pnet.lz4, rnet.lz4, onet.lz4 in {folder})")
        out[name] = safe_joblib_arrays(path)
    return out


# what a joblib file of plain numeric arrays needs; anything else in the pickle is refused before it is built
_JOBLIB_ALLOWED = {("joblib.numpy_pickle", "NumpyArrayWrapper"), ("numpy", "dtype"), ("numpy", "ndarray")}


def safe_joblib_arrays(path: Path) -> list[np.ndarray]:
    """A joblib file (pickle) holding a list of numeric arrays, loaded without running anything in it.

    `--detector-model` may name any folder, so its .lz4 files are user files: like `torch.load(weights_only=
    True)` for checkpoints, only numpy's array and dtype and joblib's array wrapper may be imported, and
    arrays of Python objects (which joblib would read with a plain pickle.load) are refused.
    """
    import joblib
    import joblib.numpy_pickle as npk

    refused: list[str] = []

    class NumericArrayWrapper(npk.NumpyArrayWrapper):
        def read(self, *args, **kwargs):
            if np.dtype(self.dtype).hasobject:
                refused.append("it holds an array of Python objects")
                raise pickle.UnpicklingError("object array")
            return super().read(*args, **kwargs)

    class WeightsOnlyUnpickler(npk.NumpyUnpickler):
        def find_class(self, module, name):
            if (module, name) not in _JOBLIB_ALLOWED:
                refused.append(f"it would import {module}.{name}")
                raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
            if name == "NumpyArrayWrapper":
                return NumericArrayWrapper
            return super().find_class(module, name)

    original = npk.NumpyUnpickler
    npk.NumpyUnpickler = WeightsOnlyUnpickler   # joblib builds its unpickler from this module name
    try:
        obj = joblib.load(path)
    except Exception as e:  # noqa: BLE001  joblib/pickle/lz4 raise many types for a bad file
        if refused:
            raise UserInputError(f"MTCNN weights {path} refused as unsafe: {refused[0]} "
                                 "(weights-only loading; nothing in it was run)") from None
        raise UserInputError(f"not MTCNN weights: {path} ({type(e).__name__}: {str(e)[:100]})") from None
    finally:
        npk.NumpyUnpickler = original
    if not isinstance(obj, list) or not all(isinstance(w, np.ndarray) and w.dtype.kind in "fiu" for w in obj):
        raise UserInputError(f"not MTCNN weights: {path} holds {type(obj).__name__}, not a list of arrays")
    return [np.asarray(w, np.float32) for w in obj]


class _GraphBuilder:
    """Appends ONNX nodes and initializers; each method returns the name of its output tensor."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output

    def normalise_nhwc(self, x: str) -> str:
        """uint8 NHWC pixels -> float NCHW (x - 127.5) / 128."""
        x = self.op("Cast", [x], to=TensorProto.FLOAT)
        x = self.op("Sub", [x, self.const(np.array(127.5, np.float32))])
        x = self.op("Mul", [x, self.const(np.array(1 / 128, np.float32))])
        return self.op("Transpose", [x], perm=[0, 3, 1, 2])

    def conv(self, x: str, kernel_hwio: np.ndarray, bias: np.ndarray) -> str:
        kernel = kernel_hwio.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        return self.op("Conv", [x, self.const(kernel), self.const(bias)], kernel_shape=list(kernel.shape[2:]))

    def prelu(self, x: str, alpha: np.ndarray) -> str:
        """PReLU written as x + (alpha - 1) * Min(x, 0): the same numbers, but ORT's PRelu with a per-channel
        slope is a slow broadcast kernel (it took about half of P-Net's and R-Net's CPU time); these ops aren't."""
        slope = alpha.reshape(-1, 1, 1) if alpha.ndim == 3 else alpha  # (1,1,C) -> (C,1,1) for NCHW
        negative = self.op("Min", [x, self.const(np.zeros(1, np.float32))])
        return self.op("Add", [x, self.op("Mul", [negative, self.const(slope - 1)])])

    def maxpool(self, x: str, size: int, stride: int, same: bool) -> str:
        return self.op("MaxPool", [x], kernel_shape=[size, size], strides=[stride, stride],
                       auto_pad="SAME_UPPER" if same else "VALID")

    def dense(self, x: str, kernel: np.ndarray, bias: np.ndarray) -> str:
        return self.op("Gemm", [x, self.const(kernel), self.const(bias)])

    def keras_flatten(self, x: str) -> str:
        """NCHW -> the wheel's Permute((2,1,3)) + Flatten of NHWC, i.e. (N, W, H, C) flattened."""
        return self.op("Flatten", [self.op("Transpose", [x], perm=[0, 3, 2, 1])], axis=1)

    def model(self, name: str, inputs: list, outputs: list) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="emoengine")
        model.ir_version = 8  # readable by any onnxruntime >= 1.14
        onnx.checker.check_model(model)
        return model


def _face_logit(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-way softmax head -> one logit whose sigmoid is P(face): softmax(l)[1] == sigmoid(l1 - l0)."""
    return w[..., 1:2] - w[..., 0:1], b[1:2] - b[0:1]


def build_pnet(w: list[np.ndarray]) -> onnx.ModelProto:
    """P-Net, fully convolutional: image (N, H, W, 3) uint8 -> prob (N, h, w), reg (N, h, w, 4)."""
    g = _GraphBuilder()
    x = g.normalise_nhwc("image")
    x = g.maxpool(g.prelu(g.conv(x, w[0], w[1]), w[2]), 2, 2, same=True)
    x = g.prelu(g.conv(x, w[3], w[4]), w[5])
    x = g.prelu(g.conv(x, w[6], w[7]), w[8])
    g.op("Transpose", [g.conv(x, w[9], w[10])], "reg", perm=[0, 2, 3, 1])
    logit = g.conv(x, *_face_logit(w[11], w[12]))
    g.op("Squeeze", [g.op("Sigmoid", [logit]), g.const(np.array([1], np.int64))], "prob")
    return g.model(
        "mtcnn_pnet",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", "h", "w"]),
         helper.make_tensor_value_info("reg", TensorProto.FLOAT, ["N", "h", "w", 4])],
    )


def _prob_output(g: _GraphBuilder, x: str, w: np.ndarray, b: np.ndarray) -> str:
    logit = g.dense(x, *_face_logit(w, b))
    return g.op("Reshape", [g.op("Sigmoid", [logit]), g.const(np.array([-1], np.int64))], "prob")


def build_rnet(w: list[np.ndarray]) -> onnx.ModelProto:
    """R-Net: image (N, 24, 24, 3) uint8 -> prob (N,), reg (N, 4)."""
    g = _GraphBuilder()
    x = g.normalise_nhwc("image")
    x = g.maxpool(g.prelu(g.conv(x, w[0], w[1]), w[2]), 3, 2, same=True)
    x = g.maxpool(g.prelu(g.conv(x, w[3], w[4]), w[5]), 3, 2, same=False)
    x = g.prelu(g.conv(x, w[6], w[7]), w[8])
    x = g.prelu(g.dense(g.keras_flatten(x), w[9], w[10]), w[11])
    g.op("Identity", [g.dense(x, w[12], w[13])], "reg")
    _prob_output(g, x, w[14], w[15])
    return g.model(
        "mtcnn_rnet",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 24, 24, 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("reg", TensorProto.FLOAT, ["N", 4])],
    )


def build_onet(w: list[np.ndarray]) -> onnx.ModelProto:
    """O-Net: image (N, 48, 48, 3) uint8 -> prob (N,), reg (N, 4), landmarks (N, 10)."""
    g = _GraphBuilder()
    x = g.normalise_nhwc("image")
    x = g.maxpool(g.prelu(g.conv(x, w[0], w[1]), w[2]), 3, 2, same=True)
    x = g.maxpool(g.prelu(g.conv(x, w[3], w[4]), w[5]), 3, 2, same=False)
    x = g.maxpool(g.prelu(g.conv(x, w[6], w[7]), w[8]), 2, 2, same=True)
    x = g.prelu(g.conv(x, w[9], w[10]), w[11])
    x = g.prelu(g.dense(g.keras_flatten(x), w[12], w[13]), w[14])
    g.op("Identity", [g.dense(x, w[15], w[16])], "reg")
    g.op("Identity", [g.dense(x, w[17], w[18])], "landmarks")
    _prob_output(g, x, w[19], w[20])
    return g.model(
        "mtcnn_onet",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 48, 48, 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("reg", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["N", 10])],
    )


_BUILDERS = {"pnet": build_pnet, "rnet": build_rnet, "onet": build_onet}


@functools.lru_cache(maxsize=4)
def mtcnn_models(weights_dir: str | None = None) -> dict[str, bytes]:
    """Serialized P/R/O-Net ONNX models (built once per process; a few ms), ready for OrtRunner."""
    weights = load_weights(weights_dir)
    return {name: _BUILDERS[name](weights[name]).SerializeToString() for name in NET_NAMES}
