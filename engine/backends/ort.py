"""The `ort` and `ort-int8` backends: ONNX Runtime on the CPU (also the runner the detectors use).

`ort` runs the fp32 export, `ort-int8` the static int8 QDQ model of `emoengine export --precision int8`; both
make their model from `--weights` once (export.prepare, through the artifact table) and reuse it. OrtRunner takes any ONNX file or bytes,
on any provider list, so the detectors and `info` use it too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np

from emoengine.engine.backends.base import ModelRequest, Runner
from emoengine.errors import UserInputError, first_line
from emoengine.paths import model_file


def check_ort_providers(providers: list[str]) -> None:
    """One UserInputError line when this ONNX Runtime build lacks any of `providers`."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise UserInputError(
            f"ONNX Runtime here lacks {', '.join(missing)} (available: {', '.join(available)}); "
            "for CUDA install onnxruntime-gpu"
        )


def session_options(threads: int | None, optimized_out: str | None = None, optimize: bool = True,
                    spinning: bool | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    # ENABLE_ALL: constant folding, Conv+BN/ReLU fusion, QDQ -> QLinearConv, and the NCHWc blocked layout
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_out:
        so.optimized_model_filepath = optimized_out
    if threads:
        so.intra_op_num_threads = threads
    if spinning is not None:  # idle worker threads spin for work by default; off frees the core for others
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    return so


def optimized_model_path(model: Path) -> Path:
    """Where ONNX Runtime's fully optimised graph of `model` is cached: specific to this ORT version and CPU."""
    import hashlib
    import platform

    import onnxruntime as ort

    st = model.stat()
    key = hashlib.sha256(f"{model.resolve()}|{st.st_size}|{st.st_mtime_ns}|{ort.__version__}|"
                         f"{platform.machine()}|{_cpu_flags()}".encode()).hexdigest()[:12]
    return model.parent / ".ort-optimized" / f"{model.stem}-{key}.onnx"


def _writable_folder(folder: Path) -> bool:
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


class OrtRunner(Runner):
    """ONNX Runtime session from a file path or serialized model bytes (CPU or CUDA)."""

    def __init__(self, model: str | os.PathLike | bytes, providers: list[str] | None = None,
                 threads: int | None = None, cache_optimized: bool = False, spinning: bool | None = None,
                 label: str | None = None) -> None:
        """cache_optimized: on CPU, keep ONNX Runtime's optimised graph next to the model (in `.ort-optimized/`,
        keyed by file, ORT version and CPU) and load that next time with the optimisers off: the same graph,
        without re-running the fusions and layout passes at every start."""
        import onnxruntime as ort

        providers = providers or ["CPUExecutionProvider"]
        check_ort_providers(providers)
        source = model if isinstance(model, bytes) else str(model_file(model))
        self.optimized_from_cache = False
        try:
            so = session_options(threads, spinning=spinning)
            if cache_optimized and isinstance(source, str) and providers == ["CPUExecutionProvider"]:
                cached = optimized_model_path(Path(source))
                if cached.is_file():
                    source, self.optimized_from_cache = str(cached), True
                    so = session_options(threads, optimize=False, spinning=spinning)
                elif _writable_folder(cached.parent):
                    written = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")  # renamed once complete
                    so = session_options(threads, optimized_out=str(written), spinning=spinning)
            self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
            if so.optimized_model_filepath:
                os.replace(so.optimized_model_filepath, cached)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise UserInputError(f"ONNX Runtime cannot load {source if isinstance(source, str) else 'model'}: "
                                 f"{first_line(e)}") from e
        self.backend = label or ("ort-cuda" if providers[0] == "CUDAExecutionProvider" else "ort")
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # tensors only (the stubs allow the sequences and maps ONNX can also return; our models have none)
        outs = cast("list[np.ndarray]", self._opened(self.session).run(self.output_names, feeds))
        return dict(zip(self.output_names, outs, strict=True))

    def close(self) -> None:
        self.session = None


# --- the rows' hooks (engine.backends.BACKENDS: ort, ort-int8) ---------------------------------------------------


def missing(row) -> str | None:
    return None   # onnxruntime is a core dependency


def prepare(row, request: ModelRequest) -> Path:
    """The ONNX file this row runs (the artifact table's row for it, export.artifacts): `--model` as given (its
    contract checked before a session is built on a foreign file), else the fp32 export of `--weights` or, for
    an int8 row, its int8 QDQ model, each made once."""
    from emoengine.export.artifacts import for_backend
    from emoengine.export.prepare import prepare as prepare_artifact

    if request.model is not None:
        from emoengine.engine.model.model_check import check_onnx_contract

        check_onnx_contract(request.model)
    precision = request.backend.precision
    return prepare_artifact(request, for_backend(row.name, precision).name, precision)


def open_runner(row, request: ModelRequest) -> OrtRunner:
    return OrtRunner(prepare(row, request), providers=["CPUExecutionProvider"], threads=request.threads,
                     cache_optimized=request.cache_optimized, spinning=request.spinning, label=request.backend.label)
