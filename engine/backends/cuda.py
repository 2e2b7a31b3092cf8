"""What the CUDA backends share: why one is (un)available, host<->device staging, and device timing.

Availability is reported, never guessed: each check imports what the backend needs and says in one line what is
missing. Staging keeps crops uint8 all the way to the GPU (4x fewer bytes than float32; scaling happens inside
the model), through page-locked host buffers allocated once for the largest batch, on the runner's own CUDA
stream, so copies and kernels of one batch run while the pipeline's CPU threads decode and detect the next.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np

from emoengine.errors import UserInputError

# --- availability ----------------------------------------------------------------------------------------------


def torch_cuda_missing() -> str | None:
    """None where PyTorch sees a CUDA GPU; else why not, in one line."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install torch, a CUDA build)"
    import torch

    if not torch.cuda.is_available():
        build = ("a CPU-only build (no CUDA)" if torch.version.cuda is None
                 else f"CUDA {torch.version.cuda}, but no GPU visible")
        return f"PyTorch {torch.__version__} is {build}"
    return None


def ort_cuda_missing() -> str | None:
    """None where ONNX Runtime has the CUDA execution provider and PyTorch (which owns the IO-bound buffers)
    sees the GPU; else why not."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install emoengine[gpu]: "
                "onnxruntime-gpu, which replaces onnxruntime)")
    missing = torch_cuda_missing()
    return f"IO binding uses PyTorch CUDA buffers: {missing}" if missing else None


def tensorrt_missing() -> str | None:
    """None where TensorRT 10+ imports and a GPU is visible to PyTorch (which allocates its buffers)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install tensorrt, TensorRT 10 or 11)"
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001  the wheel without its CUDA libraries raises OSError
        return f"TensorRT is installed but cannot load: {(str(e).splitlines() or [type(e).__name__])[0]}"
    if int(str(trt.__version__).split(".")[0]) < 10:
        return f"TensorRT {trt.__version__} is too old (need 10+)"
    missing = torch_cuda_missing()
    return f"TensorRT {trt.__version__} needs a CUDA GPU through PyTorch: {missing}" if missing else None


def require(backend: str, missing: Callable[[], str | None]) -> None:
    """One UserInputError line (exit 2) where `backend` cannot run here: the reason `info` gives."""
    why = missing()
    if why is not None:
        raise UserInputError(f"backend {backend}: {why}")


# --- staging ---------------------------------------------------------------------------------------------------


class PinnedStaging:
    """Page-locked host buffers and device buffers for one input and named outputs, sized for `max_batch` once.

    `upload(array)` copies a (n, ...) uint8 batch into the pinned buffer and queues the device copy on `stream`;
    `download(views)` queues device->pinned copies and waits for the stream once, returning numpy copies.
    """

    def __init__(self, torch, stream, max_batch: int, input_shape: tuple[int, ...], input_dtype) -> None:
        self.torch, self.stream, self.max_batch = torch, stream, max_batch
        self.host_in = torch.empty((max_batch, *input_shape), dtype=input_dtype, pin_memory=True)
        self.device_in = torch.empty((max_batch, *input_shape), dtype=input_dtype, device="cuda")
        self.host_out: dict[str, object] = {}

    def upload(self, array: np.ndarray):
        n = len(array)
        if n > self.max_batch:
            raise ValueError(f"batch of {n} exceeds the staging buffers' {self.max_batch}")
        self.host_in[:n].numpy()[...] = array
        with self.torch.cuda.stream(self.stream):
            self.device_in[:n].copy_(self.host_in[:n], non_blocking=True)
        return self.device_in[:n]

    def download(self, device: dict[str, object]) -> dict[str, np.ndarray]:
        torch = self.torch
        views = {}
        with torch.cuda.stream(self.stream):
            for name, t in device.items():
                if t.is_floating_point() and t.dtype != torch.float32:
                    t = t.float()  # fp16/bf16 outputs: the contract's outputs are float32
                host = self.host_out.get(name)
                if host is None or tuple(host.shape[1:]) != tuple(t.shape[1:]) or host.dtype != t.dtype:
                    host = self.host_out[name] = torch.empty(
                        (self.max_batch, *t.shape[1:]), dtype=t.dtype, pin_memory=True)
                view = host[:len(t)]
                view.copy_(t, non_blocking=True)
                views[name] = view
        self.stream.synchronize()
        return {name: v.numpy().copy() for name, v in views.items()}


class DeviceTimer:
    """CUDA events around the device work of one call: `start(stream)`, `stop(stream)`, then (once the stream has
    been synchronised, as every runner's download does) `elapsed_ms()`. Disabled, it records nothing."""

    def __init__(self, torch, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            self.begin = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def start(self, stream) -> None:
        if self.enabled:
            self.begin.record(stream)

    def stop(self, stream) -> None:
        if self.enabled:
            self.end.record(stream)

    def elapsed_ms(self) -> float | None:
        return float(self.begin.elapsed_time(self.end)) if self.enabled else None
