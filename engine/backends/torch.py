"""The `torch` and `torch-cuda[:opts]` backends: our PyTorch EmoNet (export.emonet) behind the exported graph's
exact inputs and outputs. `torch` (eager fp32 on the CPU) is the parity reference of every other backend.

torch-cuda keeps the Runner contract (numpy uint8 crops in, float32 numpy outputs out); crops go up as uint8
through pinned buffers allocated once for the max batch, on the runner's own copy stream, and the model computes
on the thread's current stream, ordered after the upload with wait_stream, because torch.compile's CUDA graphs
expect that. Options:
- fp16 / bf16: the model's weights cast, so the graph computes in that type end to end (the measured fp16
  activation ranges of EmoNet stay below 400, far from fp16's 65504, see export/fp16.py);
- channels_last weights (the NHWC crops are channels-last already once permuted inside the graph);
- compile: torch.compile, mode `default` (`compile_mode=max-autotune` etc. on request: it tunes every
  convolution for minutes); with cudagraph, mode `reduce-overhead`;
- cudagraph: with compile, torch.compile's CUDA graphs; eager, one torch.cuda.CUDAGraph per batch size.
With compile or CUDA graphs batches are padded up to a power of two so at most log2(max_batch)+1 shapes are ever
compiled or captured.

Written against the documented PyTorch API; torch-cuda has not run on a GPU yet (none where it was written).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from emoengine.contract import INPUT_NAME, INPUT_SHAPE
from emoengine.engine.backends.base import BackendOptions, ModelRequest, Runner
from emoengine.engine.backends.cuda import (
    CAPTURE_ERROR_MODE,
    DeviceTimer,
    PinnedStaging,
    require,
    torch_cuda_missing,
)
from emoengine.errors import UserInputError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SETTING_VALUES = {"compile_mode": COMPILE_MODES}


def load_graph(request: ModelRequest):
    """(EmoNetGraph, metadata) for the checkpoint the request names (weights, or a .pth given as --model)."""
    try:
        from emoengine.export.checkpoint import load_emonet
        from emoengine.export.emonet import EmoNetGraph
    except ImportError as e:
        raise UserInputError("the torch backend needs PyTorch: pip install torch (then emoengine[export])") from e
    loaded = load_emonet(request.source, request.classes)
    meta = {
        "class_names": json.dumps(list(loaded.class_names)),
        "num_classes": str(loaded.num_classes),
        "checkpoint_sha256": loaded.sha256,
        "checkpoint_source": "random" if loaded.is_random else Path(str(loaded.source)).name,
        "is_random": "true" if loaded.is_random else "false",
    }
    return EmoNetGraph(loaded.model, full_taps=request.full_taps, taps=request.taps), meta


class TorchRunner(Runner):
    """Eager fp32 PyTorch on the CPU: the reference."""

    def __init__(self, graph, metadata: dict[str, str], label: str = "torch") -> None:
        import torch

        self.torch = torch
        self.graph = graph.eval()
        self.backend = label
        self.input_names = [INPUT_NAME]
        self.output_names = list(graph.output_names)
        self.metadata = dict(metadata)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, graph = self.torch, self._opened(self.graph)
        with torch.inference_mode():
            outs = graph(torch.from_numpy(np.ascontiguousarray(feeds[INPUT_NAME])))
        return {n: o.detach().float().numpy() for n, o in zip(self.output_names, outs, strict=True)}

    def close(self) -> None:
        self.graph = None


def padded_batch(n: int, max_batch: int) -> int:
    """The power of two at or above n (capped at max_batch): the shapes compile/CUDA graphs specialise on."""
    p = 1
    while p < n:
        p *= 2
    return min(p, max_batch)


def compile_mode(options: BackendOptions) -> str:
    """torch.compile's mode for these options: `default`, or `reduce-overhead` with CUDA graphs, unless asked."""
    mode = options.extra.get("compile_mode") or ("reduce-overhead" if options.cudagraph else "default")
    if mode not in COMPILE_MODES:
        raise UserInputError(f"compile_mode={mode} is not one of {', '.join(COMPILE_MODES)}")
    return mode


class TorchCudaRunner(Runner):
    """EmoNetGraph on a CUDA device with the chosen precision, layout, compilation and graph replay.

    `device`/`cuda`: "cuda" and torch.cuda; on a machine without a GPU the staging, padding, splitting and
    float32 return run with device "cpu" and a stand-in for torch.cuda's streams, events and graphs (tests)."""

    def __init__(self, graph, metadata: dict[str, str], options: BackendOptions, max_batch: int = 32,
                 device: str = "cuda", cuda=None) -> None:
        import torch

        if device == "cuda":
            require("torch-cuda", torch_cuda_missing)
        self.torch, self.cuda, self.device = torch, cuda or torch.cuda, device
        self.options = options
        self.max_batch: int = max(1, int(max_batch))   # always a number here: the staging buffers' size
        self.graph = self.forward = _on_device(torch, self.cuda, graph, options, device)
        if options.compile:
            limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
            # one compiled variant per padded batch size (<= 9 up to 256)
            setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 16))
            self.forward = torch.compile(self.graph, mode=compile_mode(options), dynamic=False)
        self.pad = options.compile or options.cudagraph
        self.manual_graphs = options.cudagraph and not options.compile
        self.graphs: dict[int, tuple[Any, tuple]] = {}   # (CUDAGraph: self.cuda's, a stand-in in tests), outputs
        self.stream = self.cuda.Stream()
        self.staging = PinnedStaging(torch, self.stream, self.max_batch, INPUT_SHAPE, torch.uint8, device, self.cuda)
        self.backend = options.label
        self.input_names = [INPUT_NAME]
        self.output_names = list(graph.output_names)
        self.metadata = {**metadata, "precision": options.precision}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        graph, forward = self._opened(self.graph), self._opened(self.forward)
        crops = np.ascontiguousarray(feeds[INPUT_NAME])
        n = len(crops)
        size = padded_batch(n, self.max_batch) if self.pad else n
        cuda = self.cuda
        self.staging.upload(crops)                      # H2D on the copy stream
        if size > n:  # padding rows: their outputs are dropped
            with cuda.stream(self.stream):
                self.staging.device_in[n:size].zero_()
        image = self.staging.device_in[:size]
        compute = cuda.current_stream()               # the model runs where torch.compile/CUDA graphs expect
        compute.wait_stream(self.stream)
        timer = DeviceTimer(cuda, self.device_timing)
        timer.start(compute)
        with self.torch.inference_mode():
            if self.manual_graphs:
                outs = self._replay(graph, size, image)
            else:
                if self.options.compile and self.options.cudagraph:
                    self.torch.compiler.cudagraph_mark_step_begin()  # a new step: earlier outputs were copied out
                outs = forward(image)
        timer.stop(compute)
        self.stream.wait_stream(compute)              # D2H after the kernels, on the copy stream
        result = self.staging.download({name: o[:n] for name, o in zip(self.output_names, outs, strict=True)})
        self.last_device_ms = timer.elapsed_ms()
        return result

    def _replay(self, model, size: int, image):
        """One CUDA graph per batch size over the staging buffer's view (a stable address); PyTorch's documented
        pattern: warm up on a side stream, capture, replay on the current stream."""
        cuda = self.cuda
        entry = self.graphs.get(size)
        if entry is None:
            side = cuda.Stream()
            side.wait_stream(cuda.current_stream())
            with cuda.stream(side):
                for _ in range(2):  # cuDNN autotuning and allocations happen here, not in the graph
                    model(image)
            cuda.current_stream().wait_stream(side)
            graph = cuda.CUDAGraph()
            with cuda.graph(graph, capture_error_mode=CAPTURE_ERROR_MODE):
                static_out = model(image)
            entry = self.graphs[size] = (graph, static_out)
        graph, static_out = entry
        graph.replay()
        return static_out

    def close(self) -> None:
        self.graphs = {}
        self.graph = self.forward = None


def _on_device(torch, cuda, graph, options: BackendOptions, device: str):
    """The graph on the device in the precision and layout asked for; fp32 means fp32 (TF32 off)."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[options.precision]
    if options.precision == "bf16" and not cuda.is_bf16_supported():
        raise UserInputError(f"backend torch-cuda:bf16 needs a GPU with bfloat16 ({cuda.get_device_name()} "
                             "has none); use fp16")
    graph = graph.to(device).eval().to(dtype)
    if options.channels_last:
        graph = graph.to(memory_format=torch.channels_last)
    if dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = False   # fp32 means fp32: parity 1e-3 with the CPU reference
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True          # fixed shapes per batch size: pick the fastest conv once
    return graph


# --- the rows' hooks (engine.backends.BACKENDS: torch, torch-cuda) -----------------------------------------------


def missing(row) -> str | None:
    if row.device == "cuda":
        return torch_cuda_missing()
    return None if importlib.util.find_spec("torch") else "PyTorch is not installed (pip install torch)"


def prepare(row, request: ModelRequest) -> Path | None:
    """Nothing to make: the checkpoint is the artifact."""
    return None if request.weights == "random" else Path(request.source)


def open_runner(row, request: ModelRequest) -> Runner:
    if row.device == "cuda" and request.backend.compile:
        compile_mode(request.backend)   # a bad mode is refused before the checkpoint is loaded
    graph, meta = load_graph(request)
    if row.device == "cuda":
        return TorchCudaRunner(graph, meta, request.backend, max_batch=request.max_batch)
    return TorchRunner(graph, meta, label=request.backend.label)
