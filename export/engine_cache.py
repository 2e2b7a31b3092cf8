"""The TensorRT engine cache, without TensorRT: names, build keys and sidecars.

Engines are cached in models/ under a name keyed by precision, max batch, GPU, TensorRT version and the ONNX's
sha256, with a JSON sidecar carrying the ONNX metadata (engines have no metadata_props), the build keys and the
engine file's own sha256. `check_cached_engine` compares sidecar and file with what this machine would build
*before* anything is deserialized. Apart from export.trt_engine (which builds) so that the TensorRT backend
(which runs) reads the cache without importing the build side, and tests read it without TensorRT.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from emoengine.engine.outputs.writers import write_bytes_atomic
from emoengine.paths import models_dir, sha256_file

SIDECAR_FORMAT = "emoengine-trt-1"


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
    from emoengine.export.artifacts import ENGINE, artifact_path

    tag = (f"{keys['engine_precision']}-b{keys['engine_max_batch']}-{slug(keys['engine_device'])}"
           f"-trt{slug(keys['engine_tensorrt'])}-{keys['engine_source_sha256'][:12]}")
    return artifact_path(ENGINE, Path(onnx_path).stem, folder, tag=tag)


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


def expected_here() -> dict[str, str]:
    """The sidecar keys an engine must carry to run on this machine (format, TensorRT version, GPU)."""
    from emoengine.engine.backends.cuda import require_tensorrt

    trt, torch = require_tensorrt()
    return {"engine_format": SIDECAR_FORMAT, "engine_tensorrt": str(trt.__version__),
            "engine_device": torch.cuda.get_device_name()}
