"""The `trt[:opts]` backend at run time: a TensorRT 10/11 engine (built by export.trt_engine) behind the runner
contract. `--model x.engine` runs that engine once its sidecar says it was built here; `--model x.onnx` or
`--weights` builds (and caches) the engine first, and says so on stderr. Options: `fp16` (the fp16 conversion
of the ONNX, export.fp16), `int8` (a QDQ `--model`, else the symmetric S8S8 QDQ model of `--weights`, made once
and cached apart from ort-int8's U8S8 one), `cudagraph` (one CUDA graph per batch size),
`max_batch=N` (the engine's profile; default the run's max batch).

Device buffers come from PyTorch's CUDA allocator, allocated once for the max batch; all work runs on one CUDA
stream per runner. Nothing here pretends: without `tensorrt` (or CUDA) every entry point raises a one-line
UserInputError. Written against the documented API but not run on a GPU yet (no TensorRT where it was
written): its GPU tests in tests/test_trt.py are the first check.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from emoengine.engine.backends.base import ModelRequest, Runner
from emoengine.engine.backends.cuda import (
    CAPTURE_ERROR_MODE,
    DeviceTimer,
    PinnedStaging,
    require_tensorrt,
    tensorrt_missing,
)
from emoengine.errors import RunFailure, UserInputError

# TensorRT DataType member names -> torch dtype names. Not trt.nptype(): numpy has no bfloat16 or fp8, so
# nptype raises for BF16/FP8 I/O tensors; torch has them all and allocates the buffers anyway.
TRT_TO_TORCH = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn",
}
SETTING_VALUES = {"max_batch": ("N",)}


def torch_dtype(trt_dtype, torch):
    """The torch dtype of a TensorRT DataType (by member name, so BF16/FP8 work where trt.nptype fails)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    torch_name = TRT_TO_TORCH.get(name)
    if torch_name is None or not hasattr(torch, torch_name):
        raise RunFailure(f"TensorRT tensor type {name} has no PyTorch equivalent here")
    return getattr(torch, torch_name)


class TrtRunner(Runner):
    """Runs a serialized engine; inputs/outputs by tensor name, dynamic batch (larger batches are split).

    Buffers for the profile's max batch are allocated once (device: PyTorch allocator; host: pinned) and every
    batch uses views of them, so tensor addresses are stable, which is what CUDA-graph replay needs.
    """

    def __init__(self, engine_path: str | os.PathLike, metadata: dict[str, str] | None = None,
                 cuda_graph: bool = False, label: str = "trt", device: str = "cuda", cuda=None) -> None:
        trt, torch = require_tensorrt()
        self.trt, self.torch = trt, torch
        self.cuda, self.device = cuda or torch.cuda, device   # a stand-in and "cpu" in tests without a GPU
        path = Path(engine_path)
        if not path.is_file():
            raise UserInputError(f"no such TensorRT engine: {path}")
        self.logger = trt.Logger(trt.Logger.WARNING)  # must outlive the runtime and engine
        self.runtime = trt.Runtime(self.logger)
        try:
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        except Exception:  # noqa: BLE001  some versions raise instead of returning None
            self.engine = None
        if self.engine is None:
            raise UserInputError(f"TensorRT cannot load {path} (not an engine, or built by another TensorRT "
                                 "version or for another GPU)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RunFailure(f"TensorRT could not create an execution context for {path} (out of GPU memory?)")
        self.stream = self.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n), torch) for n in names}
        # profile 0's batch range: [min, opt, max] shapes per input
        self.max_batch = min(int(self.engine.get_tensor_profile_shape(n, 0)[2][0]) for n in self.input_names)
        self.backend = label
        if metadata is None:
            from emoengine.export.engine_cache import read_sidecar

            metadata = read_sidecar(path)
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        if "num_classes" not in self.metadata and "expression" in self.output_names:
            classes = int(tuple(self.engine.get_tensor_shape("expression"))[-1])
            if classes in (5, 8):  # an engine without our sidecar: the logits' width says which EmoNet
                self.metadata["num_classes"] = str(classes)
        # allocate once for the max batch: the single input through pinned staging, outputs on the device
        if len(self.input_names) != 1:
            raise UserInputError(f"{path}: expected one input tensor, found {self.input_names}")
        image = self.input_names[0]
        tail = tuple(self.engine.get_tensor_profile_shape(image, 0)[2])[1:]
        self.staging = PinnedStaging(torch, self.stream, self.max_batch, tail, self.dtypes[image], device, self.cuda)
        if not self.context.set_input_shape(image, (self.max_batch, *tail)):
            raise RunFailure(f"TensorRT refused the max-batch shape of {image}")
        self.outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RunFailure(f"TensorRT could not infer the shape of output {name}: {shape}")
            self.outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=device)
        self.cuda_graph = bool(cuda_graph)
        self.graphs: dict[int, Any] = {}   # a CUDAGraph per batch size (self.cuda's: a stand-in in tests)
        self.bound_batch = None

    def _bind(self, n: int) -> None:
        """Shapes and addresses for a batch of n: views of the max-batch buffers (stable addresses)."""
        image, context = self.input_names[0], self._opened(self.context)
        if not context.set_input_shape(image, (n, *self.staging.device_in.shape[1:])):
            raise RunFailure(f"TensorRT refused a batch of {n} (this engine takes 1..{self.max_batch})")
        context.set_tensor_address(image, self.staging.device_in.data_ptr())
        for name, t in self.outputs.items():
            context.set_tensor_address(name, t.data_ptr())
        self.bound_batch = n

    def _enqueue(self) -> None:
        if not self._opened(self.context).execute_async_v3(stream_handle=self.stream.cuda_stream):
            raise RunFailure("TensorRT execution failed")


    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        image = self.input_names[0]
        if image not in feeds:
            raise ValueError(f"TensorRT engine needs inputs {self.input_names}; missing {[image]}")
        array = np.ascontiguousarray(feeds[image])
        n = len(array)
        self.staging.upload(array)                     # pinned host -> device, queued on self.stream
        if self.bound_batch != n:
            self._bind(n)
        timer = DeviceTimer(self.cuda, self.device_timing)
        timer.start(self.stream)
        if not self.cuda_graph:
            self._enqueue()
        else:
            self._replay(n)
        timer.stop(self.stream)
        # outputs are batch-major: the first n rows of each max-batch buffer
        result = self.staging.download({name: t[:n] for name, t in self.outputs.items()})
        self.last_device_ms = timer.elapsed_ms()
        return result

    def _replay(self, n: int) -> None:
        cuda = self.cuda
        graph = self.graphs.get(n)
        if graph is None:
            # TensorRT: run once after a shape change before capturing, so deferred updates are not captured
            self._enqueue()
            self.stream.synchronize()
            graph = cuda.CUDAGraph()
            with cuda.graph(graph, stream=self.stream, capture_error_mode=CAPTURE_ERROR_MODE):
                self._enqueue()
            self.graphs[n] = graph
        with cuda.stream(self.stream):
            graph.replay()

    def close(self) -> None:
        self.graphs = {}
        self.outputs = {}
        self.context = None
        self.engine = None
        self.runtime = None


# --- the row's hooks (engine.backends.BACKENDS: trt) ----------------------------------------------------------------


def missing(row) -> str | None:
    return tensorrt_missing()


def engine_max_batch(request: ModelRequest) -> int:
    text = request.backend.extra.get("max_batch")
    try:
        return int(text) if text is not None else max(request.max_batch, 1)
    except ValueError:
        raise UserInputError(f"trt:max_batch= takes a number, not {text}") from None


def _given_engine(request: ModelRequest) -> bool:
    return request.model is not None and request.model.lower().endswith(".engine")


def prepare(row, request: ModelRequest) -> Path:
    """The engine to run: an `.engine` given as it is; else the cached engine of `--model x.onnx` or of the export
    of `--weights` for this GPU and TensorRT, built first when missing or stale (fp16: from the fp16 ONNX; int8:
    from the export's symmetric QDQ model): the artifact table's chain to its engine row (export.artifacts)."""
    require_tensorrt()   # first: without TensorRT nothing is exported or converted for it
    if _given_engine(request) and request.model is not None:
        return Path(request.model)
    from emoengine.export.artifacts import ENGINE, onnx_precision
    from emoengine.export.prepare import prepare as prepare_artifact
    from emoengine.export.trt_engine import engine_precision

    precision, given = request.backend.precision, None
    if request.model is not None:   # strong typing: the graph's own precision decides
        given = onnx_precision(request.model)
        precision = engine_precision(given, precision, Path(request.model))
    return prepare_artifact(request, ENGINE, precision, given_precision=given)


def open_runner(row, request: ModelRequest) -> TrtRunner:
    from emoengine.export.engine_cache import check_cached_engine, expected_here, read_sidecar

    path = prepare(row, request)
    if _given_engine(request):   # checked against this machine before anything is deserialized
        why = check_cached_engine(path, expected_here())
        if why:
            raise UserInputError(f"will not run {path}: {why}; rebuild it with `emoengine export --trt`")
    return TrtRunner(path, metadata=read_sidecar(path) or {}, cuda_graph=request.backend.cudagraph,
                     label=request.backend.label)
