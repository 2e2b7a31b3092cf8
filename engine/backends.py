"""One runner contract over every backend: open once, `infer(feeds) -> {name: array}`, close.

Modelled on Polygraphy's runners: a runner knows its input and output names and nothing about faces.
Pre/post-processing lives in the model classes that own a runner (engine.emonet_model, the detectors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from emoengine.errors import UserInputError


class Runner:
    """Base runner. Subclasses fill `input_names`, `output_names`, `metadata` and implement `_infer`."""

    backend: str = "?"
    input_names: list[str]
    output_names: list[str]
    metadata: dict[str, str]

    def infer(self, feeds: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Run once. A bare array feeds the only input."""
        if isinstance(feeds, np.ndarray):
            if len(self.input_names) != 1:
                raise TypeError(f"{self.backend} runner has inputs {self.input_names}; pass a dict")
            feeds = {self.input_names[0]: feeds}
        return self._infer(dict(feeds))

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def check_torch_device(device: str) -> None:
    """One UserInputError line when `device` is CUDA and this PyTorch has no usable GPU."""
    if device.startswith("cuda"):
        from emoengine.engine.cuda_io import require_cuda_backend

        require_cuda_backend("torch-cuda")


def _session_options(threads: int | None, optimized_out: str | None = None, optimize: bool = True,
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
                 threads: int | None = None, cache_optimized: bool = False, spinning: bool | None = None) -> None:
        """cache_optimized: on CPU, keep ONNX Runtime's optimised graph next to the model (in `.ort-optimized/`,
        keyed by file, ORT version and CPU) and load that next time with the optimisers off: the same graph,
        without re-running the fusions and layout passes at every start."""
        import onnxruntime as ort

        providers = providers or ["CPUExecutionProvider"]
        check_ort_providers(providers)
        source = model if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(source).is_file():
            raise UserInputError(f"no such model file: {source}")
        self.optimized_from_cache = False
        try:
            so = _session_options(threads, spinning=spinning)
            if cache_optimized and isinstance(source, str) and providers == ["CPUExecutionProvider"]:
                cached = optimized_model_path(Path(source))
                if cached.is_file():
                    source, self.optimized_from_cache = str(cached), True
                    so = _session_options(threads, optimize=False, spinning=spinning)
                elif _writable_folder(cached.parent):
                    written = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")  # renamed once complete
                    so = _session_options(threads, optimized_out=str(written), spinning=spinning)
            self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
            if so.optimized_model_filepath:
                os.replace(so.optimized_model_filepath, cached)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise UserInputError(f"ONNX Runtime cannot load {source if isinstance(source, str) else 'model'}: "
                                 f"{str(e).splitlines()[0]}") from e
        self.backend = "ort-cuda" if providers[0] == "CUDAExecutionProvider" else "ort"
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        self.session = None


class TorchRunner(Runner):
    """The PyTorch reference: our EmoNet behind the exported graph's exact inputs and outputs."""

    def __init__(self, graph, metadata: dict[str, str], device: str = "cpu") -> None:
        import torch

        check_torch_device(device)
        self.torch = torch
        self.device = torch.device(device)
        self.graph = graph.to(self.device).eval()
        self.backend = "torch-cuda" if self.device.type == "cuda" else "torch"
        self.input_names = ["image"]
        self.output_names = list(graph.output_names)
        self.metadata = dict(metadata)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            image = torch.from_numpy(np.ascontiguousarray(feeds["image"])).to(self.device, non_blocking=True)
            outs = self.graph(image)
        return {n: o.detach().float().cpu().numpy() for n, o in zip(self.output_names, outs)}

    def close(self) -> None:
        self.graph = None
