"""TensorRT engines, built at export time (or on first use) from our ONNX export, and their cache.

Networks are strongly typed: precision follows the ONNX graph's own types (TensorRT 11 has no FP16/INT8 builder
flags and always types strongly; the STRONGLY_TYPED creation flag is accepted and ignored there): fp32 from the
plain export, fp16 from `export.fp16` (fp16 graph with the measured fp32 islands), int8 from a QDQ model
(explicit quantization). TF32 is switched off so fp32 layers agree with PyTorch to 1e-3 like every other backend.

The cache (names, build keys, sidecars) is export.engine_cache: a stale or foreign engine is rebuilt, never run
(deserializing an engine from another TensorRT or GPU is undefined behaviour, not an error). The runtime side
(deserializing and running an engine) is engine/backends/tensorrt.py; neither imports the other at import time.
Written against the documented API; not yet run on a GPU (no TensorRT where it was written).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from emoengine.engine.backends.cuda import require_tensorrt
from emoengine.engine.outputs.writers import write_bytes_atomic
from emoengine.errors import RunFailure, UserInputError
from emoengine.export.engine_cache import (
    check_cached_engine,
    engine_build_keys,
    engine_cache_path,
    timing_cache_path,
    write_sidecar,
)
from emoengine.paths import model_file, sha256_file

log = logging.getLogger(__name__)

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
    model_file(onnx_path)
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
    if cache is not None and timing_cache is not None:   # (a cache only comes from a timing_cache)
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return engine_path


def engine_precision(source: str, asked: str, onnx_path: Path) -> str:
    """The precision of the engine built from an ONNX whose graph is `source` (onnx_precision) when `asked` was
    requested. Strong typing follows the graph: a QDQ model is int8 and an fp16 model fp16 whatever was asked;
    an fp32 model asked for fp16 is converted first (the caller's job); int8 needs a QDQ model."""
    if asked == "int8" and source != "int8":
        raise UserInputError(f"TensorRT int8 builds from a QDQ model (made by `emoengine export --precision "
                             f"int8`); {onnx_path} has no Q/DQ nodes")
    return asked if source == "fp32" else source


def ensure_engine(onnx_path: Path, precision: str, max_batch: int, announce=None,
                  folder: Path | None = None, before=None) -> Path:
    """Path of a current engine for `onnx_path` (sidecar-checked), building it when needed. `before(step,
    source, path, why)`: the lazy preparation's notice (export.prepare.Notice), which may refuse the build."""
    trt, torch = require_tensorrt()
    device = torch.cuda.get_device_name()
    keys = engine_build_keys(sha256_file(onnx_path), str(trt.__version__), device, precision, max_batch)
    engine_path = engine_cache_path(onnx_path, keys, folder)
    why = check_cached_engine(engine_path, keys)
    if why is None:
        return engine_path
    from emoengine.export.artifacts import load_onnx

    # the ONNX's metadata goes into the sidecar; parsed only when building, not on every cache hit
    meta = {p.key: p.value for p in load_onnx(onnx_path).metadata_props}
    if before is not None:
        before("engine", onnx_path.name, engine_path, f"TensorRT {trt.__version__} {precision} for {device}, "
               f"batch 1..{max_batch}, minutes" + (f"; rebuilt: {why}" if engine_path.is_file() else ""))
    else:
        say = announce or log.info
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
