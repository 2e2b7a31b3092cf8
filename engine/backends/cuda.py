"""What the CUDA backends share: why one is (un)available, host<->device staging, and device timing.

Availability is reported, never guessed: each check imports what the backend needs and says in one line what is
missing. Staging keeps crops uint8 all the way to the GPU (4x fewer bytes than float32; scaling happens inside
the model), through page-locked host buffers allocated once for the largest batch, on the runner's own CUDA
stream, so copies and kernels of one batch run while the pipeline's CPU threads decode and detect the next.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from emoengine.errors import UserInputError

if TYPE_CHECKING:   # torch itself is imported by the caller, where a backend needs it
    from torch import Tensor

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
    # (where tensorrt is not installed, pyright resolves the name to our own engine/backends/tensorrt.py)
    version = str(trt.__version__)  # pyright: ignore[reportAttributeAccessIssue]
    if int(version.split(".")[0]) < 10:
        return f"TensorRT {version} is too old (need 10+)"
    missing = torch_cuda_missing()
    return f"TensorRT {version} needs a CUDA GPU through PyTorch: {missing}" if missing else None


def require(backend: str, missing: Callable[[], str | None]) -> None:
    """One UserInputError line (exit 2) where `backend` cannot run here: the reason `info` gives."""
    why = missing()
    if why is not None:
        raise UserInputError(f"backend {backend}: {why}")


def require_tensorrt():
    """(tensorrt, torch) where TensorRT 10+ and a CUDA GPU are usable (the check `info` reports); else one
    UserInputError line. Here, not in the TensorRT backend, so that export.trt_engine (the build side) and
    engine/backends/tensorrt.py (the run side) both import it without importing each other."""
    require("trt", tensorrt_missing)
    import tensorrt as trt
    import torch

    return trt, torch


# --- staging ---------------------------------------------------------------------------------------------------


class PinnedStaging:
    """Host buffers (page-locked where the device is CUDA) and device buffers for one input and named outputs,
    allocated once for `max_batch`.

    `upload(array)` copies a (n, ...) batch into the host buffer and queues the device copy on `stream`;
    `download(outputs)` queues each output's copy into its own preallocated host buffer, in the output's own
    precision (fp16 is half the bytes of fp32), waits for the stream once, and returns float32 numpy arrays made in
    one host pass (float32: one copy, since the buffer is reused by the next call; fp16/bf16: the conversion).
    `cuda` is torch.cuda, or on the CPU (device `cpu`, tests) a stand-in with the same streams and events.
    """

    def __init__(self, torch, stream, max_batch: int, input_shape: tuple[int, ...], input_dtype,
                 device: str = "cuda", cuda=None) -> None:
        self.torch, self.stream, self.max_batch = torch, stream, max_batch
        self.cuda = cuda or torch.cuda
        self.pinned = device == "cuda"
        self.host_in = torch.empty((max_batch, *input_shape), dtype=input_dtype, pin_memory=self.pinned)
        self.device_in = torch.empty((max_batch, *input_shape), dtype=input_dtype, device=device)
        self.host_out: dict[str, Tensor] = {}

    def upload(self, array: np.ndarray):
        n = len(array)
        if n > self.max_batch:
            raise ValueError(f"batch of {n} exceeds the staging buffers' {self.max_batch}")
        self.host_in[:n].numpy()[...] = array
        with self.cuda.stream(self.stream):
            self.device_in[:n].copy_(self.host_in[:n], non_blocking=self.pinned)
        return self.device_in[:n]

    def _host(self, name: str, t):
        """The preallocated host buffer of an output: its own shape and dtype, made on first use."""
        host = self.host_out.get(name)
        if host is None or tuple(host.shape[1:]) != tuple(t.shape[1:]) or host.dtype != t.dtype:
            host = self.host_out[name] = self.torch.empty((self.max_batch, *t.shape[1:]), dtype=t.dtype,
                                                          pin_memory=self.pinned)
        return host

    def download(self, device: dict[str, Tensor]) -> dict[str, np.ndarray]:
        views = {}
        with self.cuda.stream(self.stream):
            for name, t in device.items():
                view = self._host(name, t)[:len(t)]
                view.copy_(t, non_blocking=self.pinned)
                views[name] = view
        self.stream.synchronize()
        return {name: self._as_float32(v) for name, v in views.items()}

    def _as_float32(self, view) -> np.ndarray:
        """The contract's outputs are float32: one host pass out of the reused buffer."""
        torch = self.torch
        if view.dtype == torch.float16:
            return view.numpy().astype(np.float32)
        if view.dtype == torch.bfloat16:   # numpy has no bfloat16: torch converts
            return view.float().numpy()
        return view.numpy().copy()


class DeviceTimer:
    """CUDA events around the device work of one call: `start(stream)`, `stop(stream)`, then (once the stream has
    been synchronised, as every runner's download does) `elapsed_ms()`. Disabled, it records nothing. `cuda`:
    torch.cuda or its stand-in."""

    def __init__(self, cuda, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            self.begin = cuda.Event(enable_timing=True)
            self.end = cuda.Event(enable_timing=True)

    def start(self, stream) -> None:
        if self.enabled:
            self.begin.record(stream)

    def stop(self, stream) -> None:
        if self.enabled:
            self.end.record(stream)

    def elapsed_ms(self) -> float | None:
        return float(self.begin.elapsed_time(self.end)) if self.enabled else None


# CUDA graphs are captured with thread-local error checking: the pipeline's decode/detect threads may use CUDA
# (SCRFD on the ORT CUDA EP) while a graph is captured, which the default ("global") turns into a capture error
CAPTURE_ERROR_MODE = "thread_local"
