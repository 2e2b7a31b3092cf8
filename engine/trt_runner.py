"""TensorRT backend (TensorRT 10/11 Python API): strongly typed networks parsed from our ONNX export.

Precision follows the ONNX graph's own types (strong typing; TensorRT 11 has no FP16 builder flag and always
types strongly). TF32 is switched off for the fp32 graph so the engine agrees with PyTorch to 1e-3, like every
other backend. Engines are cached beside their ONNX as `<name>-b<max_batch>.engine` with a `.json` sidecar
carrying the ONNX metadata (engines have no metadata_props) and what the engine was built from and with
(TensorRT version, GPU, ONNX sha256): a cached engine that does not match is rebuilt, never run.
Device buffers come from PyTorch's CUDA allocator; all work runs on one CUDA stream per runner.
Nothing here pretends: without `tensorrt` (or CUDA) every entry point raises a one-line UserInputError.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from emoengine.engine.backends import Runner
from emoengine.engine.writers import write_bytes_atomic
from emoengine.errors import RunFailure, UserInputError
from emoengine.paths import sha256_file

TRT_MISSING = ("backend trt needs NVIDIA TensorRT 10+ and a CUDA GPU: pip install tensorrt "
               "(from NVIDIA's index), or use --backend ort-cuda")
TRT_NO_GPU = "backend trt (TensorRT) needs a CUDA GPU and a CUDA build of PyTorch; no CUDA device is visible here"

# TensorRT DataType member names -> torch dtype names. Not trt.nptype(): numpy has no bfloat16 or fp8, so
# nptype raises for BF16/FP8 I/O tensors; torch has them all and allocates the buffers anyway.
TRT_TO_TORCH = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn",
}

# What a cached engine must match to be reused (sidecar keys; values are strings like all metadata).
BUILD_KEYS = ("engine_tensorrt", "engine_device", "engine_source_sha256", "engine_max_batch", "engine_tf32")


def _import_trt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as e:
        raise UserInputError(TRT_MISSING) from e
    except Exception as e:  # noqa: BLE001 - e.g. OSError: the wheel is there but libnvinfer/CUDA libraries are not
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserInputError(f"TensorRT is installed but cannot load here: {detail}") from e
    try:
        import torch
    except ImportError as e:
        raise UserInputError("backend trt (TensorRT) allocates its buffers with PyTorch (CUDA build); "
                             "install torch") from e
    if not torch.cuda.is_available():
        raise UserInputError(TRT_NO_GPU)
    return trt, torch


def require_tensorrt():
    """(tensorrt, torch) where TensorRT and a CUDA GPU are usable; else one UserInputError line."""
    return _import_trt()


def torch_dtype(trt_dtype, torch):
    """The torch dtype of a TensorRT DataType (by member name, so BF16/FP8 work where trt.nptype fails)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    torch_name = TRT_TO_TORCH.get(name)
    if torch_name is None or not hasattr(torch, torch_name):
        raise RunFailure(f"TensorRT tensor type {name} has no PyTorch equivalent here")
    return getattr(torch, torch_name)


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, max_batch: int = 64,
                 opt_batch: int = 16, workspace_gib: float = 4.0, tf32: bool = False) -> Path:
    """Parse the ONNX file into a strongly typed network and serialize an engine (atomic write).

    One optimization profile over the batch dimension: 1 .. `max_batch`, tuned for `opt_batch`.
    """
    trt, _ = _import_trt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if max_batch < 1:
        raise UserInputError(f"TensorRT max batch must be at least 1, not {max_batch}")
    if not onnx_path.is_file():
        raise UserInputError(f"no such ONNX model to build a TensorRT engine from: {onnx_path}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10: opt in to strong typing. TensorRT 11: always strongly typed; the flag is deprecated/ignored.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: resolves external weights beside it too
        errors = "; ".join(str(parser.get_error(i)).replace("\n", " ") for i in range(parser.num_errors))
        raise RunFailure(f"TensorRT could not parse {onnx_path}: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; TF32 convs drift ~1e-3 from fp32 PyTorch
    profile = builder.create_optimization_profile()
    opt = max(1, min(opt_batch, max_batch))
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        tail = tuple(inp.shape)[1:]
        if any(d < 0 for d in tail):
            raise RunFailure(f"TensorRT input {inp.name} has dynamic dims besides the batch: {tuple(inp.shape)}")
        profile.set_shape(inp.name, (1, *tail), (opt, *tail), (max_batch, *tail))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RunFailure(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(engine_path, bytes(serialized))
    return engine_path


class TrtRunner(Runner):
    """Runs a serialized engine; inputs/outputs by tensor name, dynamic batch (larger batches are split)."""

    def __init__(self, engine_path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        trt, torch = _import_trt()
        self.trt, self.torch = trt, torch
        path = Path(engine_path)
        if not path.is_file():
            raise UserInputError(f"no such TensorRT engine: {path}")
        self.logger = trt.Logger(trt.Logger.WARNING)  # must outlive the runtime and engine
        self.runtime = trt.Runtime(self.logger)
        try:
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        except Exception:  # noqa: BLE001 - some versions raise instead of returning None
            self.engine = None
        if self.engine is None:
            raise UserInputError(f"TensorRT cannot load {path} (not an engine, or built by another TensorRT "
                                 "version or for another GPU)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RunFailure(f"TensorRT could not create an execution context for {path} (out of GPU memory?)")
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n), torch) for n in names}
        # profile 0's batch range: [min, opt, max] shapes per input
        self.max_batch = min(int(self.engine.get_tensor_profile_shape(n, 0)[2][0]) for n in self.input_names)
        self.backend = "trt"
        sidecar = path.with_name(path.name + ".json")
        if metadata is None and sidecar.is_file():
            try:
                metadata = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                metadata = None
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        if "num_classes" not in self.metadata and "expression" in self.output_names:
            classes = int(tuple(self.engine.get_tensor_shape("expression"))[-1])
            if classes in (5, 8):  # an engine without our sidecar: the logits' width says which EmoNet
                self.metadata["num_classes"] = str(classes)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"TensorRT engine needs inputs {self.input_names}; missing {missing}")
        n = len(feeds[self.input_names[0]])
        if n <= self.max_batch:
            return self._infer_batch(feeds)
        parts = [self._infer_batch({k: v[i:i + self.max_batch] for k, v in feeds.items()})
                 for i in range(0, n, self.max_batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}

    def _infer_batch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        keep = {}
        with torch.cuda.stream(self.stream):  # copies, allocations and the engine all on self.stream
            for name in self.input_names:
                t = torch.from_numpy(np.ascontiguousarray(feeds[name])).to("cuda", non_blocking=True)
                if t.dtype != self.dtypes[name]:
                    t = t.to(self.dtypes[name])
                keep[name] = t
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise RunFailure(f"TensorRT refused input {name} of shape {tuple(t.shape)} (this engine "
                                     f"takes batches of 1..{self.max_batch})")
                self.context.set_tensor_address(name, t.data_ptr())
            outs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RunFailure(f"TensorRT could not infer the shape of output {name}: {shape}")
                outs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RunFailure("TensorRT execution failed")
            # blocking copies on self.stream: they wait for the engine, so `keep` outlives its use
            host = {n: (t.float() if t.is_floating_point() else t).cpu().numpy() for n, t in outs.items()}
        self.stream.synchronize()
        return host

    def close(self) -> None:
        self.context = None
        self.engine = None
        self.runtime = None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def open_trt_runner(model: str | None, weights: str | None, classes: int | None, full_taps: bool,
                    max_batch: int = 64) -> TrtRunner:
    """`--model x.engine` runs it; `--model x.onnx` or `--weights` builds (and caches) the engine first."""
    trt, torch = _import_trt()
    if model is not None and model.lower().endswith(".engine"):
        return TrtRunner(model)
    if model is not None and not model.lower().endswith(".onnx"):
        raise UserInputError(f"backend trt runs an .engine or builds one from an .onnx, not {model}")
    from emoengine.engine.emonet_model import cached_onnx_for

    onnx_path = Path(model) if model else cached_onnx_for(weights, classes, full_taps)
    if not onnx_path.is_file():
        raise UserInputError(f"no such model file: {onnx_path}")
    import onnx

    try:
        meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
        raise UserInputError(f"not an ONNX model: {onnx_path} ({type(e).__name__})") from e
    build = {
        "engine_tensorrt": str(trt.__version__),
        "engine_device": torch.cuda.get_device_name(),
        "engine_source_sha256": sha256_file(onnx_path),
        "engine_max_batch": str(max_batch),
        "engine_tf32": "false",
    }
    engine_path = onnx_path.with_name(f"{onnx_path.stem}-b{max_batch}.engine")
    sidecar = engine_path.with_name(engine_path.name + ".json")
    cached = _read_json(sidecar) if engine_path.is_file() else None
    if cached is not None and all(cached.get(k) == v for k, v in build.items()):
        try:
            return TrtRunner(engine_path, metadata={**meta, **build})
        except UserInputError:
            pass  # unreadable here after all: rebuild below
    try:
        build_engine(onnx_path, engine_path, max_batch=max_batch)
        write_bytes_atomic(sidecar, json.dumps({**meta, **build}, indent=1).encode())
    except OSError as e:
        raise UserInputError(f"cannot write the TensorRT engine cache {engine_path}: {e.strerror or e}") from e
    return TrtRunner(engine_path, metadata={**meta, **build})
