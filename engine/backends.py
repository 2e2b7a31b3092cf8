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
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UserInputError("backend torch-cuda needs a CUDA build of PyTorch and a GPU; none found here")


def _session_options(threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return so


class OrtRunner(Runner):
    """ONNX Runtime session from a file path or serialized model bytes (CPU or CUDA)."""

    def __init__(self, model: str | os.PathLike | bytes, providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        providers = providers or ["CPUExecutionProvider"]
        check_ort_providers(providers)
        source = model if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(source).is_file():
            raise UserInputError(f"no such model file: {source}")
        try:
            self.session = ort.InferenceSession(source, sess_options=_session_options(threads),
                                                providers=providers)
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
