"""The `ort-cuda[:opts]` backend: ONNX Runtime's CUDA execution provider with IO binding.

Keeps the Runner contract (numpy uint8 crops in, float32 numpy outputs out). Inputs and outputs live in torch
CUDA tensors allocated once for the max batch (no host round trip inside a run); crops go up as uint8 through
pinned buffers on the runner's own stream, which ORT computes on (user_compute_stream); one download per batch.
Options: `conv_search=EXHAUSTIVE|HEURISTIC|DEFAULT` (cudnn_conv_algo_search), `cudagraph` (one CUDA graph per
batch size via the gpu_graph_id run option), `fp16` (the converted fp16 ONNX, made once by export.prepare).

Written against the documented ONNX Runtime API; not yet run on a GPU (none where it was written).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emoengine.contract import INPUT_NAME, INPUT_SHAPE
from emoengine.engine.backends.base import BackendOptions, ModelRequest, Runner
from emoengine.engine.backends.cuda import DeviceTimer, PinnedStaging, ort_cuda_missing, require
from emoengine.errors import RunFailure, UserInputError, first_line
from emoengine.paths import model_file

CONV_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
SETTING_VALUES = {"conv_search": CONV_SEARCH}


def provider_options(options: BackendOptions, device_id: int, stream_handle: int) -> dict[str, str]:
    """The CUDA execution provider's options for a backend spec: the device, the convolution search, TF32 off for
    fp32 (ONNX Runtime's `use_tf32` is on by default), and either ORT's CUDA graphs or our compute stream."""
    conv_search = options.extra.get("conv_search", "EXHAUSTIVE").upper()
    if conv_search not in CONV_SEARCH:
        raise UserInputError(f"conv_search={conv_search} is not one of {', '.join(CONV_SEARCH)}")
    cuda_options = {"device_id": str(device_id), "cudnn_conv_algo_search": conv_search}
    if options.precision == "fp32":
        cuda_options["use_tf32"] = "0"   # fp32 means fp32: parity 1e-3 with the CPU reference
    if options.cudagraph:
        cuda_options["enable_cuda_graph"] = "1"
    else:
        cuda_options["user_compute_stream"] = str(stream_handle)
    return cuda_options


class OrtCudaRunner(Runner):
    """ONNX Runtime CUDA EP with IO binding: inputs and outputs live in torch CUDA tensors allocated once."""

    def __init__(self, model: str | Path, options: BackendOptions, max_batch: int = 32,
                 threads: int | None = None) -> None:
        import onnxruntime as ort
        import torch

        from emoengine.engine.backends.ort import session_options

        require("ort-cuda", ort_cuda_missing)   # the CUDA provider, and PyTorch's GPU for the IO-bound buffers
        self.torch, self.options = torch, options
        self.max_batch = max(1, int(max_batch))
        self.stream = torch.cuda.Stream()
        cuda_options = provider_options(options, torch.cuda.current_device(), self.stream.cuda_stream)
        path = str(model_file(model))
        try:
            self.session = ort.InferenceSession(path, sess_options=session_options(threads),
                                                providers=[("CUDAExecutionProvider", cuda_options),
                                                           "CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise UserInputError(f"ONNX Runtime (CUDA) cannot load {path}: {first_line(e)}") from e
        if self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise UserInputError(f"ONNX Runtime did not place {path} on CUDA (providers: "
                                 f"{self.session.get_providers()})")
        self.backend = options.label
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.staging = PinnedStaging(torch, self.stream, self.max_batch, INPUT_SHAPE, torch.uint8)
        types = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}
        self.outputs = {}
        for o in self.session.get_outputs():
            tail = tuple(o.shape[1:])
            if not all(isinstance(d, int) for d in tail) or o.type not in types:
                raise UserInputError(f"{path}: output {o.name} {o.type} {o.shape} is not an emoengine export")
            self.outputs[o.name] = torch.empty((self.max_batch, *tail), dtype=types[o.type], device="cuda")
        self.binding = self.session.io_binding()
        self.bound = None
        self.ort = ort

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops = np.ascontiguousarray(feeds[INPUT_NAME])
        n = len(crops)
        image = self.staging.upload(crops)
        self.stream.synchronize()  # the upload is complete before ORT's stream reads it
        session, b = self._opened(self.session), self._opened(self.binding)
        if self.bound != n:
            b.clear_binding_inputs()
            b.clear_binding_outputs()
            b.bind_input(INPUT_NAME, "cuda", self.torch.cuda.current_device(), np.uint8, (n, *INPUT_SHAPE),
                         image.data_ptr())
            for name, t in self.outputs.items():
                view = t[:n]
                dtype = np.float16 if t.dtype == self.torch.float16 else np.float32
                b.bind_output(name, "cuda", self.torch.cuda.current_device(), dtype, tuple(view.shape),
                              view.data_ptr())
            self.bound = n
        run_options = None
        if self.options.cudagraph:
            run_options = self.ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(n))  # one captured graph per batch size
        # with CUDA graphs ORT runs on a stream of its own: no device time is measured there
        timer = DeviceTimer(self.torch.cuda, self.device_timing and not self.options.cudagraph)
        timer.start(self.stream)
        try:
            session.run_with_iobinding(b, run_options)
        except Exception as e:  # ORT's own error types
            raise RunFailure(f"ONNX Runtime (CUDA) failed: {first_line(e)}") from e
        timer.stop(self.stream)
        result = self.staging.download({name: t[:n] for name, t in self.outputs.items()})
        self.last_device_ms = timer.elapsed_ms()
        return result

    def close(self) -> None:
        self.binding = None
        self.session = None
        self.outputs = {}


# --- the row's hooks (engine.backends.BACKENDS: ort-cuda) -----------------------------------------------------------


def missing(row) -> str | None:
    return ort_cuda_missing()   # the CUDA provider, and PyTorch's GPU for the IO-bound buffers


def prepare(row, request: ModelRequest) -> Path:
    """`--model` or the cached fp32 export of `--weights`; for fp16, its fp16 conversion (made once): the artifact
    table's row for this backend and precision (export.artifacts)."""
    from emoengine.export.artifacts import for_backend
    from emoengine.export.prepare import prepare as prepare_artifact

    precision = request.backend.precision
    return prepare_artifact(request, for_backend(row.name, precision).name, precision)


def open_runner(row, request: ModelRequest) -> OrtCudaRunner:
    return OrtCudaRunner(prepare(row, request), request.backend, max_batch=request.max_batch,
                         threads=request.threads)
