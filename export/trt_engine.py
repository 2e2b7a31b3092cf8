"""TensorRT engines, built at export time (or on first use) from our ONNX export, and their cache.

Networks are strongly typed: precision follows the ONNX graph's own types (TensorRT 11 has no FP16/INT8 builder
flags and always types strongly; the STRONGLY_TYPED creation flag is accepted and ignored there): fp32 from the
plain export, fp16 from `export.fp16` (fp16 graph with the measured fp32 islands), int8 from a QDQ model
(explicit quantization). TF32 is switched off so fp32 layers agree with PyTorch to 1e-3 like every other backend.

Engines are cached in models/ under a name keyed by precision, max batch, GPU, TensorRT version and the ONNX's
sha256, with a JSON sidecar carrying the ONNX metadata (engines have no metadata_props), the build keys and the
engine file's own sha256. `check_cached_engine` compares sidecar and file with what this machine would build
*before* anything is deserialized: a stale or foreign engine is rebuilt, never run (deserializing an engine from
another TensorRT or GPU is undefined behaviour, not an error). A timing cache per GPU and TensorRT version makes
rebuilds fast ($EMOENGINE_TRT_TIMING_CACHE_DIR: one shared by every engine, as the TensorRT tests
of a session do). The runtime side (deserializing and running an engine) is engine/backends/tensorrt.py.
Written against the documented API; not yet run on a GPU (no TensorRT where it was written).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from emoengine.engine.backends.tensorrt import require_tensorrt
from emoengine.engine.outputs.writers import write_bytes_atomic
from emoengine.errors import RunFailure, UserInputError

log = logging.getLogger(__name__)
from emoengine.paths import models_dir, sha256_file

SIDECAR_FORMAT = "emoengine-trt-1"


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


TIMING_CACHE_DIR = "EMOENGINE_TRT_TIMING_CACHE_DIR"   # one folder's timing cache for every engine (a test session)


def timing_cache_path(device: str, tensorrt_version: str, folder: Path | None = None) -> Path:
    """The timing cache of a GPU and TensorRT version: in $EMOENGINE_TRT_TIMING_CACHE_DIR where set (so the
    engines of one test session share their tactic timings), else in `folder` (default models/)."""
    name = f"trt-timing-{slug(device)}-trt{slug(tensorrt_version)}.cache"
    shared = os.environ.get(TIMING_CACHE_DIR)
    return (Path(shared) if shared else folder if folder is not None else models_dir()) / name


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
                  folder: Path | None = None) -> Path:
    """Path of a current engine for `onnx_path` (sidecar-checked), building it when needed."""
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


def expected_here() -> dict[str, str]:
    """The sidecar keys an engine must carry to run on this machine (format, TensorRT version, GPU)."""
    trt, torch = require_tensorrt()
    return {"engine_format": SIDECAR_FORMAT, "engine_tensorrt": str(trt.__version__),
            "engine_device": torch.cuda.get_device_name()}
