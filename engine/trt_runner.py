"""TensorRT backend (TensorRT 10/11 Python API): strongly typed networks parsed from our ONNX export.

Precision follows the ONNX graph's own types (strong typing; TensorRT 11 has no FP16 builder flag).
Engines are cached beside their ONNX as `<name>-b<max_batch>.engine` with a `.json` sidecar carrying the
ONNX metadata (engines have no metadata_props). Device buffers come from PyTorch's CUDA allocator.
Nothing here pretends: without `tensorrt` (or CUDA) every entry point raises a one-line UserInputError.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from emoengine.engine.backends import Runner
from emoengine.errors import RunFailure, UserInputError

TRT_MISSING = ("backend trt needs NVIDIA TensorRT 10+ and a CUDA GPU: pip install tensorrt "
               "(from NVIDIA's index), or use --backend ort-cuda")


def _import_trt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as e:
        raise UserInputError(TRT_MISSING) from e
    try:
        import torch
    except ImportError as e:
        raise UserInputError("backend trt allocates its buffers with PyTorch (CUDA build); install torch") from e
    if not torch.cuda.is_available():
        raise UserInputError("backend trt needs a CUDA GPU; none is visible here")
    return trt, torch


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, max_batch: int = 64,
                 opt_batch: int = 16, workspace_gib: float = 4.0) -> Path:
    """Parse the ONNX file into a strongly typed network and serialize an engine (atomic write)."""
    trt, _ = _import_trt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RunFailure(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        tail = tuple(inp.shape)[1:]
        profile.set_shape(inp.name, (1, *tail), (min(opt_batch, max_batch), *tail), (max_batch, *tail))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RunFailure(f"TensorRT failed to build an engine from {onnx_path}")
    tmp = engine_path.with_name(f".{engine_path.name}.partial-{os.getpid()}")
    try:
        tmp.write_bytes(bytes(serialized))
        os.replace(tmp, engine_path)
    finally:
        tmp.unlink(missing_ok=True)
    return engine_path


class TrtRunner(Runner):
    """Runs a serialized engine; inputs/outputs by tensor name, dynamic batch up to the profile's max."""

    def __init__(self, engine_path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        trt, torch = _import_trt()
        self.trt, self.torch = trt, torch
        path = Path(engine_path)
        if not path.is_file():
            raise UserInputError(f"no such TensorRT engine: {path}")
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserInputError(f"TensorRT cannot load {path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.backend = "trt"
        sidecar = path.with_name(path.name + ".json")
        self.metadata = dict(metadata or (json.loads(sidecar.read_text()) if sidecar.is_file() else {}))

    def _torch_dtype(self, name: str):
        return getattr(self.torch, np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name))).name)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        keep = []
        with torch.cuda.stream(self.stream):
            for name in self.input_names:
                t = torch.from_numpy(np.ascontiguousarray(feeds[name])).to("cuda", non_blocking=True)
                keep.append(t)
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            outs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RunFailure("TensorRT execution failed")
        self.stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outs.items()}

    def close(self) -> None:
        self.context = None
        self.engine = None


def open_trt_runner(model: str | None, weights: str | None, classes: int | None, full_taps: bool,
                    max_batch: int = 64) -> TrtRunner:
    """`--model x.engine` runs it; `--model x.onnx` or `--weights` builds (and caches) the engine first."""
    _import_trt()
    if model is not None and model.endswith(".engine"):
        return TrtRunner(model)
    if model is not None and not model.endswith(".onnx"):
        raise UserInputError(f"backend trt runs an .engine or builds one from an .onnx, not {model}")
    from emoengine.engine.emonet_model import cached_onnx_for

    onnx_path = Path(model) if model else cached_onnx_for(weights, classes, full_taps)
    engine_path = onnx_path.with_name(f"{onnx_path.stem}-b{max_batch}.engine")
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    if not engine_path.is_file():
        build_engine(onnx_path, engine_path, max_batch=max_batch)
        engine_path.with_name(engine_path.name + ".json").write_text(json.dumps(meta))
    return TrtRunner(engine_path, metadata=meta)
