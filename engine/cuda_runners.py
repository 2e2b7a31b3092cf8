"""The CUDA runners behind `torch-cuda[:opts]` and `ort-cuda[:opts]` (TensorRT lives in trt_runner.py).

Both keep the Runner contract (numpy uint8 crops in, float32 numpy outputs out) and differ from the CPU runners in
how tensors move: crops go up as uint8 through pinned buffers allocated once for the max batch, on the runner's
own copy stream; outputs stay on the GPU until one download per batch (torch-cuda computes on the thread's current
stream, ordered after the upload with wait_stream, because torch.compile's CUDA graphs expect that; ORT computes on
the runner's stream via user_compute_stream). Options come from `cuda_io.parse_backend`.

- torch-cuda: fp16 / bf16 (the model's weights cast, so the graph computes in that type end to end; the
  measured fp16 activation ranges of EmoNet stay below 400, far from fp16's 65504, see export/fp16.py),
  channels_last weights (the NHWC crops are channels-last already once permuted inside the graph),
  torch.compile (`compile_mode=`; default max-autotune-no-cudagraphs), CUDA graphs (compiled: mode
  reduce-overhead; eager: one torch.cuda.CUDAGraph per batch size). With compile or CUDA graphs batches are
  padded up to a power of two so at most log2(max_batch)+1 shapes are ever compiled or captured.
- ort-cuda: the CUDA execution provider with IO binding to torch CUDA tensors (no host round trip inside a
  run), `conv_search=EXHAUSTIVE|HEURISTIC|DEFAULT` (cudnn_conv_algo_search), optional CUDA graphs (one per batch
  size via the gpu_graph_id run option), fp16 through the converted fp16 ONNX.

Written against the documented PyTorch / ONNX Runtime APIs; not yet run on a GPU (none where it was written).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emoengine.contract import INPUT_SHAPE
from emoengine.engine.backends import Runner
from emoengine.engine.cuda_io import BackendOptions, PinnedStaging, in_chunks, require_cuda_backend
from emoengine.errors import RunFailure, UserInputError, first_line

CONV_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


def padded_batch(n: int, max_batch: int) -> int:
    """The power of two at or above n (capped at max_batch): the shapes compile/CUDA graphs specialise on."""
    p = 1
    while p < n:
        p *= 2
    return min(p, max_batch)


class TorchCudaRunner(Runner):
    """EmoNetGraph on a CUDA device with the chosen precision, layout, compilation and graph replay."""

    def __init__(self, graph, metadata: dict[str, str], options: BackendOptions, max_batch: int = 32) -> None:
        import torch

        require_cuda_backend("torch-cuda")
        self.torch = torch
        self.options = options
        self.max_batch = max(1, int(max_batch))
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[options.precision]
        if options.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserInputError(f"backend torch-cuda:bf16 needs a GPU with bfloat16 ({torch.cuda.get_device_name()} "
                                 "has none); use fp16")
        graph = graph.to("cuda").eval().to(dtype)
        if options.channels_last:
            graph = graph.to(memory_format=torch.channels_last)
        if dtype == torch.float32:
            torch.backends.cudnn.allow_tf32 = False   # fp32 means fp32: parity 1e-3 with the CPU reference
            torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True          # fixed shapes per batch size: pick the fastest conv once
        self.graph = graph
        self.forward = graph
        if options.compile:
            mode = options.extra.get("compile_mode") or ("reduce-overhead" if options.cudagraph
                                                         else "max-autotune-no-cudagraphs")
            limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
            # one compiled variant per padded batch size (<= 9 up to 256)
            setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 16))
            self.forward = torch.compile(graph, mode=mode, dynamic=False)
        self.pad = options.compile or options.cudagraph
        self.manual_graphs = options.cudagraph and not options.compile
        self.graphs: dict[int, tuple[object, tuple]] = {}
        self.stream = torch.cuda.Stream()
        self.staging = PinnedStaging(torch, self.stream, self.max_batch, INPUT_SHAPE, torch.uint8)
        self.backend = options.label
        self.input_names = ["image"]
        self.output_names = list(graph.output_names)
        self.metadata = {**metadata, "precision": options.precision}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops = np.ascontiguousarray(feeds["image"])
        n = len(crops)
        if n > self.max_batch:
            return in_chunks(self._infer, {"image": crops}, self.max_batch, self.output_names)
        size = padded_batch(n, self.max_batch) if self.pad else n
        torch = self.torch
        self.staging.upload(crops)                      # H2D on the copy stream
        if size > n:  # padding rows: their outputs are dropped
            with torch.cuda.stream(self.stream):
                self.staging.device_in[n:size].zero_()
        image = self.staging.device_in[:size]
        compute = torch.cuda.current_stream()         # the model runs where torch.compile/CUDA graphs expect
        compute.wait_stream(self.stream)
        with torch.inference_mode():
            if self.manual_graphs:
                outs = self._replay(size, image)
            else:
                if self.options.compile and self.options.cudagraph:
                    torch.compiler.cudagraph_mark_step_begin()  # a new step: earlier outputs were copied out
                outs = self.forward(image)
        self.stream.wait_stream(compute)              # D2H after the kernels, on the copy stream
        return self.staging.download({name: o[:n] for name, o in zip(self.output_names, outs)})

    def _replay(self, size: int, image):
        """One CUDA graph per batch size over the staging buffer's view (a stable address); PyTorch's documented
        pattern: warm up on a side stream, capture, replay on the current stream."""
        torch = self.torch
        entry = self.graphs.get(size)
        if entry is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # cuDNN autotuning and allocations happen here, not in the graph
                    self.graph(image)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.graph(image)
            entry = self.graphs[size] = (graph, static_out)
        graph, static_out = entry
        graph.replay()
        return static_out

    def close(self) -> None:
        self.graphs = {}
        self.graph = self.forward = None


class OrtCudaRunner(Runner):
    """ONNX Runtime CUDA EP with IO binding: inputs and outputs live in torch CUDA tensors allocated once."""

    def __init__(self, model: str | Path, options: BackendOptions, max_batch: int = 32,
                 threads: int | None = None) -> None:
        import onnxruntime as ort
        import torch

        from emoengine.engine.backends import _session_options

        require_cuda_backend("ort-cuda")   # the CUDA provider, and PyTorch's GPU for the IO-bound buffers
        self.torch, self.options = torch, options
        self.max_batch = max(1, int(max_batch))
        conv_search = options.extra.get("conv_search", "EXHAUSTIVE").upper()
        if conv_search not in CONV_SEARCH:
            raise UserInputError(f"conv_search={conv_search} is not one of {', '.join(CONV_SEARCH)}")
        self.stream = torch.cuda.Stream()
        cuda_options = {"device_id": str(torch.cuda.current_device()), "cudnn_conv_algo_search": conv_search}
        if options.cudagraph:
            cuda_options["enable_cuda_graph"] = "1"
        else:
            cuda_options["user_compute_stream"] = str(self.stream.cuda_stream)
        path = str(model)
        if not Path(path).is_file():
            raise UserInputError(f"no such model file: {path}")
        try:
            self.session = ort.InferenceSession(path, sess_options=_session_options(threads),
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
        crops = np.ascontiguousarray(feeds["image"])
        n = len(crops)
        if n > self.max_batch:
            return in_chunks(self._infer, {"image": crops}, self.max_batch, self.output_names)
        image = self.staging.upload(crops)
        self.stream.synchronize()  # the upload is complete before ORT's stream reads it
        if self.bound != n:
            b = self.binding
            b.clear_binding_inputs()
            b.clear_binding_outputs()
            b.bind_input("image", "cuda", self.torch.cuda.current_device(), np.uint8, (n, *INPUT_SHAPE),
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
        try:
            self.session.run_with_iobinding(self.binding, run_options)
        except Exception as e:  # noqa: BLE001 - ORT's own error types
            raise RunFailure(f"ONNX Runtime (CUDA) failed: {first_line(e)}") from e
        return self.staging.download({name: t[:n] for name, t in self.outputs.items()})

    def close(self) -> None:
        self.binding = None
        self.session = None
        self.outputs = {}


def open_cuda_runner(options: BackendOptions, weights: str | None, model: str | None, classes: int | None,
                     full_taps: bool, max_batch: int, threads: int | None = None, torch_runner=None) -> Runner:
    """The runner for a CUDA backend spec; `torch_runner` builds the plain torch runner (emonet_model's)."""
    if options.name == "torch-cuda":
        base = torch_runner(weights or model, classes, "cuda", full_taps)
        try:
            return TorchCudaRunner(base.graph, base.metadata, options, max_batch=max_batch)
        except Exception:
            base.close()
            raise
    if options.name == "ort-cuda":
        from emoengine.engine.emonet_model import cached_onnx_for

        path = Path(model) if model else cached_onnx_for(weights, classes, full_taps)
        if path.suffix.lower() != ".onnx":
            raise UserInputError(f"backend ort-cuda runs an .onnx model, not {path}")
        if options.precision == "fp16":
            from emoengine.engine.trt_runner import cached_fp16_onnx, onnx_precision

            if onnx_precision(path) == "fp32":
                path = cached_fp16_onnx(path)
        return OrtCudaRunner(path, options, max_batch=max_batch, threads=threads)
    if options.name == "trt":
        from emoengine.engine.trt_runner import open_trt_runner

        try:
            trt_max = int(options.extra.get("max_batch", max(max_batch, 1)))
        except ValueError as e:
            raise UserInputError(f"trt:max_batch= takes a number, not {options.extra['max_batch']}") from e
        return open_trt_runner(model=model, weights=weights, classes=classes, full_taps=full_taps,
                               max_batch=trt_max, precision=options.precision, cuda_graph=options.cudagraph)
    raise UserInputError(f"{options.name} is not a CUDA backend")
