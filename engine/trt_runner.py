"""TensorRT backend (TensorRT 10/11 Python API): strongly typed networks parsed from our ONNX export.

Precision follows the ONNX graph's own types (strong typing; TensorRT 11 has no FP16/INT8 builder flags and
always types strongly, the STRONGLY_TYPED creation flag is accepted and ignored there): fp32 from the plain
export, fp16 from `export.fp16` (fp16 graph with the measured fp32 islands), int8 from a QDQ model (explicit
quantization). TF32 is switched off so fp32 layers agree with PyTorch to 1e-3 like every other backend.

Engines are cached in models/ under a name keyed by precision, max batch, GPU, TensorRT version and the ONNX's
sha256, with a JSON sidecar carrying the ONNX metadata (engines have no metadata_props), the build keys and the
engine file's own sha256. `check_cached_engine` compares sidecar and file with what this machine would build
*before* anything is deserialized: a stale or foreign engine is rebuilt, never run (deserializing an engine from
another TensorRT or GPU is undefined behaviour, not an error). A timing cache per GPU and TensorRT version makes
rebuilds fast. Device buffers come from PyTorch's CUDA allocator, allocated once for the max batch; all work runs
on one CUDA stream per runner; an optional CUDA graph per batch size replays the engine's launches.
Nothing here pretends: without `tensorrt` (or CUDA) every entry point raises a one-line UserInputError.
This file has been written against the documented API but has not run on a GPU yet (no TensorRT where it was
written): its GPU tests in tests/test_trt.py are the first check.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from emoengine.engine.backends import Runner
from emoengine.engine.cuda_io import ALLOWED, in_chunks, require_cuda_backend
from emoengine.engine.writers import write_bytes_atomic
from emoengine.errors import RunFailure, UserInputError
from emoengine.paths import models_dir, sha256_file

# TensorRT DataType member names -> torch dtype names. Not trt.nptype(): numpy has no bfloat16 or fp8, so
# nptype raises for BF16/FP8 I/O tensors; torch has them all and allocates the buffers anyway.
TRT_TO_TORCH = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn",
}

SIDECAR_FORMAT = "emoengine-trt-1"
TRT_PRECISIONS = ALLOWED["trt"]["precision"]


def require_tensorrt():
    """(tensorrt, torch) where TensorRT 10+ and a CUDA GPU are usable (the check `info` reports); else one
    UserInputError line."""
    require_cuda_backend("trt")
    import tensorrt as trt
    import torch

    return trt, torch


def torch_dtype(trt_dtype, torch):
    """The torch dtype of a TensorRT DataType (by member name, so BF16/FP8 work where trt.nptype fails)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    torch_name = TRT_TO_TORCH.get(name)
    if torch_name is None or not hasattr(torch, torch_name):
        raise RunFailure(f"TensorRT tensor type {name} has no PyTorch equivalent here")
    return getattr(torch, torch_name)


# --- the engine cache: pure functions, testable without TensorRT ------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


def engine_build_keys(onnx_sha256: str, tensorrt_version: str, device: str, precision: str,
                      max_batch: int, tf32: bool = False) -> dict[str, str]:
    """What an engine is built from and for; the sidecar holds these, and a cached engine must match all."""
    return {
        "engine_format": SIDECAR_FORMAT,
        "engine_tensorrt": str(tensorrt_version),
        "engine_device": str(device),
        "engine_source_sha256": onnx_sha256,
        "engine_max_batch": str(int(max_batch)),
        "engine_precision": precision,
        "engine_tf32": "true" if tf32 else "false",
    }


def engine_cache_path(onnx_path: str | os.PathLike, keys: dict[str, str], folder: Path | None = None) -> Path:
    """models/<onnx stem>-<precision>-b<N>-<gpu>-trt<version>-<onnx sha12>.engine: a different GPU, TensorRT or
    model gets a different file, so engines for several machines can share one models/ folder."""
    stem = Path(onnx_path).stem
    name = (f"{stem}-{keys['engine_precision']}-b{keys['engine_max_batch']}-{slug(keys['engine_device'])}"
            f"-trt{slug(keys['engine_tensorrt'])}-{keys['engine_source_sha256'][:12]}.engine")
    return (folder if folder is not None else models_dir()) / name


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_sidecar(engine_path: str | os.PathLike) -> dict | None:
    """An engine's sidecar as a dict (None when missing or unreadable)."""
    return _read_json(sidecar_path(engine_path))


def check_cached_engine(engine_path: str | os.PathLike, expected: dict[str, str]) -> str | None:
    """None when `engine_path` may be deserialized here; else why not (one line). Reads only the sidecar and the
    file's bytes (sha256): nothing is handed to TensorRT before this says yes."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return f"no engine at {engine_path}"
    sidecar = sidecar_path(engine_path)
    if not sidecar.is_file():
        return f"{engine_path.name} has no sidecar {sidecar.name}: cannot tell what it was built from and for"
    meta = _read_json(sidecar)
    if meta is None:
        return f"{sidecar.name} is not a JSON object"
    for key, want in expected.items():
        have = meta.get(key)
        if have != want:
            what = key.removeprefix("engine_").replace("_", " ")
            return f"{engine_path.name} was built for {what} {have!r}, here it is {want!r}"
    if meta.get("engine_sha256") != sha256_file(engine_path):
        return f"{engine_path.name} does not match the sha256 in its sidecar (replaced or truncated)"
    return None


def write_sidecar(engine_path: Path, metadata: dict[str, str], keys: dict[str, str]) -> dict[str, str]:
    """The sidecar of a freshly built engine: ONNX metadata + build keys + the engine file's sha256."""
    data = {**{str(k): str(v) for k, v in metadata.items()}, **keys, "engine_sha256": sha256_file(engine_path)}
    write_bytes_atomic(sidecar_path(engine_path), json.dumps(data, indent=1).encode())
    return data


def onnx_precision(onnx_path: str | os.PathLike) -> str:
    """fp32 / fp16 / int8, read off the graph: QuantizeLinear nodes = QDQ int8, fp16 initializers = fp16."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
        raise UserInputError(f"not an ONNX model: {onnx_path} ({type(e).__name__})") from e
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def timing_cache_path(device: str, tensorrt_version: str, folder: Path | None = None) -> Path:
    return (folder if folder is not None else models_dir()) / f"trt-timing-{slug(device)}-trt{slug(tensorrt_version)}.cache"


# --- building ---------------------------------------------------------------------------------------------------


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, max_batch: int = 64,
                 opt_batch: int = 16, workspace_gib: float = 4.0, tf32: bool = False,
                 timing_cache: str | os.PathLike | None = None) -> Path:
    """Parse the ONNX file into a strongly typed network and serialize an engine (atomic write).

    One optimization profile over the batch dimension: 1 .. `max_batch`, tuned for `opt_batch`. With
    `timing_cache`, tactic timings are loaded from / saved to that file (per GPU and TensorRT version).
    """
    trt, _ = require_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if max_batch < 1:
        raise UserInputError(f"TensorRT max batch must be at least 1, not {max_batch}")
    if not onnx_path.is_file():
        raise UserInputError(f"no such ONNX model to build a TensorRT engine from: {onnx_path}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10: opt in to strong typing. TensorRT 11: always strongly typed; the flag is accepted and ignored.
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
    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)  # empty bytes: a new cache
        if cache is None or not config.set_timing_cache(cache, False):  # False: refuse a mismatched cache
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
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
    if cache is not None:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return engine_path


# --- running ----------------------------------------------------------------------------------------------------


class TrtRunner(Runner):
    """Runs a serialized engine; inputs/outputs by tensor name, dynamic batch (larger batches are split).

    Buffers for the profile's max batch are allocated once (device: PyTorch allocator; host: pinned) and every
    batch uses views of them, so tensor addresses are stable, which is what CUDA-graph replay needs.
    """

    def __init__(self, engine_path: str | os.PathLike, metadata: dict[str, str] | None = None,
                 cuda_graph: bool = False) -> None:
        trt, torch = require_tensorrt()
        from emoengine.engine.cuda_io import PinnedStaging

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
        if metadata is None:
            metadata = _read_json(sidecar_path(path))
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
        self.staging = PinnedStaging(torch, self.stream, self.max_batch, tail, self.dtypes[image])
        if not self.context.set_input_shape(image, (self.max_batch, *tail)):
            raise RunFailure(f"TensorRT refused the max-batch shape of {image}")
        self.outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RunFailure(f"TensorRT could not infer the shape of output {name}: {shape}")
            self.outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
        self.cuda_graph = bool(cuda_graph)
        self.graphs: dict[int, object] = {}
        self.bound_batch = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"TensorRT engine needs inputs {self.input_names}; missing {missing}")
        n = len(feeds[self.input_names[0]])
        if n <= self.max_batch:
            return self._infer_batch(feeds)
        return in_chunks(self._infer_batch, feeds, self.max_batch, self.output_names)

    def _bind(self, n: int) -> None:
        """Shapes and addresses for a batch of n: views of the max-batch buffers (stable addresses)."""
        image = self.input_names[0]
        if not self.context.set_input_shape(image, (n, *self.staging.device_in.shape[1:])):
            raise RunFailure(f"TensorRT refused a batch of {n} (this engine takes 1..{self.max_batch})")
        self.context.set_tensor_address(image, self.staging.device_in.data_ptr())
        for name, t in self.outputs.items():
            self.context.set_tensor_address(name, t.data_ptr())
        self.bound_batch = n

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RunFailure("TensorRT execution failed")

    def _infer_batch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        image = self.input_names[0]
        array = np.ascontiguousarray(feeds[image])
        n = len(array)
        self.staging.upload(array)                     # pinned host -> device, queued on self.stream
        if self.bound_batch != n:
            self._bind(n)
        if not self.cuda_graph:
            self._enqueue()
        else:
            graph = self.graphs.get(n)
            if graph is None:
                # TensorRT: run once after a shape change before capturing, so deferred updates are not captured
                self._enqueue()
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self._enqueue()
                self.graphs[n] = graph
            with torch.cuda.stream(self.stream):
                graph.replay()
        # outputs are batch-major: the first n rows of each max-batch buffer
        return self.staging.download({name: t[:n] for name, t in self.outputs.items()})

    def close(self) -> None:
        self.graphs = {}
        self.outputs = {}
        self.context = None
        self.engine = None
        self.runtime = None


# --- opening ----------------------------------------------------------------------------------------------------


def open_trt_runner(model: str | None, weights: str | None, classes: int | None, full_taps: bool,
                    max_batch: int = 64, precision: str = "fp32", cuda_graph: bool = False,
                    announce=None) -> TrtRunner:
    """`--model x.engine` runs it (after its sidecar check); `--model x.onnx` or `--weights` builds (and caches)
    the engine first. `precision` fp16 converts the fp32 ONNX first (export.fp16); int8 takes a QDQ `--model`."""
    trt, torch = require_tensorrt()
    if precision not in TRT_PRECISIONS:
        raise UserInputError(f"TensorRT precision {precision} is not one of {', '.join(TRT_PRECISIONS)}")
    device = torch.cuda.get_device_name()
    if model is not None and model.lower().endswith(".engine"):
        meta = _read_json(sidecar_path(model)) or {}
        expected = {"engine_format": SIDECAR_FORMAT, "engine_tensorrt": str(trt.__version__),
                    "engine_device": device}
        why = check_cached_engine(model, expected)
        if why:
            raise UserInputError(f"will not run {model}: {why}; rebuild it with `emoengine export --trt`")
        return TrtRunner(model, metadata=meta, cuda_graph=cuda_graph)
    if model is not None and not model.lower().endswith(".onnx"):
        raise UserInputError(f"backend trt runs an .engine or builds one from an .onnx, not {model}")
    from emoengine.engine.emonet_model import cached_onnx_for

    onnx_path = Path(model) if model else cached_onnx_for(weights, classes, full_taps)
    if not onnx_path.is_file():
        raise UserInputError(f"no such model file: {onnx_path}")
    source = onnx_precision(onnx_path)
    precision = engine_precision(source, precision, onnx_path)
    if precision == "fp16" and source == "fp32":
        onnx_path = cached_fp16_onnx(onnx_path, announce)
    return open_engine_for_onnx(onnx_path, precision, max_batch, cuda_graph=cuda_graph, announce=announce)


def engine_precision(source: str, asked: str, onnx_path: Path) -> str:
    """The precision of the engine built from an ONNX whose graph is `source` (onnx_precision) when `asked` was
    requested. Strong typing follows the graph: a QDQ model is int8 and an fp16 model fp16 whatever was asked;
    an fp32 model asked for fp16 is converted first (the caller's job); int8 needs a QDQ model."""
    if asked == "int8" and source != "int8":
        raise UserInputError(f"TensorRT int8 builds from a QDQ model (made by `emoengine export --precision "
                             f"int8`); {onnx_path} has no Q/DQ nodes")
    return asked if source == "fp32" else source


def cached_fp16_onnx(fp32_path: Path, announce=None) -> Path:
    """<stem>.fp16.onnx beside the fp32 model, converted once (and again when the fp32 model changes)."""
    from emoengine.export.fp16 import export_fp16

    out = fp32_path.with_name(f"{fp32_path.stem}.fp16.onnx")
    stamp = out.with_name(out.name + ".source-sha256")
    sha = sha256_file(fp32_path)
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == sha:
        return out
    (announce or _stderr)(f"converting {fp32_path.name} to fp16 (fp32 kept where measured necessary)...")
    export_fp16(fp32_path, out)
    try:
        write_bytes_atomic(stamp, sha.encode())
    except OSError as e:
        raise UserInputError(f"cannot write {stamp}: {e.strerror or e}") from e
    return out


def _stderr(message: str) -> None:
    print(f"emoengine: {message}", file=sys.stderr, flush=True)


def open_engine_for_onnx(onnx_path: Path, precision: str, max_batch: int, cuda_graph: bool = False,
                         announce=None, folder: Path | None = None) -> TrtRunner:
    """The cached engine for `onnx_path` on this GPU and TensorRT, built first when missing, stale or foreign."""
    engine_path = ensure_engine(onnx_path, precision, max_batch, announce=announce, folder=folder)
    return TrtRunner(engine_path, metadata=_read_json(sidecar_path(engine_path)), cuda_graph=cuda_graph)


def ensure_engine(onnx_path: Path, precision: str, max_batch: int, announce=None,
                  folder: Path | None = None) -> Path:
    """Path of a current engine for `onnx_path` (sidecar-checked), building it when needed."""
    trt, torch = require_tensorrt()
    device = torch.cuda.get_device_name()
    keys = engine_build_keys(sha256_file(onnx_path), str(trt.__version__), device, precision, max_batch)
    engine_path = engine_cache_path(onnx_path, keys, folder)
    why = check_cached_engine(engine_path, keys)
    if why is None:
        return engine_path
    import onnx

    try:  # the ONNX's metadata goes into the sidecar; parsed only when building, not on every cache hit
        meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
        raise UserInputError(f"not an ONNX model: {onnx_path} ({type(e).__name__})") from e
    say = announce or _stderr
    if engine_path.is_file():
        say(f"rebuilding the TensorRT engine: {why}")
    say(f"building a TensorRT {trt.__version__} {precision} engine for {device} (batch 1..{max_batch}) from "
        f"{onnx_path.name}; this takes minutes once, then {engine_path} is reused")
    try:
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        build_engine(onnx_path, engine_path, max_batch=max_batch, opt_batch=min(16, max_batch),
                     timing_cache=timing_cache_path(device, str(trt.__version__), folder or engine_path.parent))
        write_sidecar(engine_path, meta, keys)
    except OSError as e:
        raise UserInputError(f"cannot write the TensorRT engine cache {engine_path}: {e.strerror or e}") from e
    return engine_path
