"""What the GPU runners share: why a CUDA backend is (un)available, backend options, and host<->device staging.

Availability is reported, never guessed: each check imports what the backend needs and says in one line what is
missing. Staging keeps crops uint8 all the way to the GPU (4x fewer bytes than float32; scaling happens inside
the model), through page-locked host buffers allocated once for the largest batch, on the runner's own CUDA
stream, so copies and kernels of one batch run while the pipeline's CPU threads decode and detect the next.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import numpy as np

from emoengine.errors import UserInputError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
FLAGS = ("compile", "cudagraph", "channels_last")


@dataclass(frozen=True)
class BackendOptions:
    """`torch-cuda:fp16+compile+cudagraph` -> name torch-cuda, precision fp16, compile and CUDA graphs on.

    One string per configuration keeps the Runner contract and lets `bench --backends` and `run --backend` name
    every GPU variant the same way ('+' joins options: `bench --backends` is already comma-separated).
    Unknown or inapplicable options are a UserInputError, not ignored.
    """

    name: str
    precision: str = "fp32"
    compile: bool = False
    cudagraph: bool = False
    channels_last: bool = False
    extra: dict[str, str] = field(default_factory=dict)   # key=value options (e.g. conv_search=DEFAULT)

    @property
    def label(self) -> str:
        flags = [self.precision] if self.precision != "fp32" else []
        flags += [f for f in FLAGS if getattr(self, f)]
        flags += [f"{k}={v}" for k, v in sorted(self.extra.items())]
        return self.name + (":" + "+".join(flags) if flags else "")


# which options each GPU backend understands
ALLOWED = {
    "torch-cuda": {"precision": ("fp32", "fp16", "bf16"), "flags": FLAGS, "extra": ("compile_mode",)},
    "ort-cuda": {"precision": ("fp32", "fp16"), "flags": ("cudagraph",), "extra": ("conv_search",)},
    "trt": {"precision": ("fp32", "fp16", "int8"), "flags": ("cudagraph",), "extra": ("max_batch",)},
}


def parse_backend(spec: str) -> BackendOptions:
    """Split `name[:opt,opt,key=value]`. Names without options (torch, ort...) pass through unchanged."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not rest.strip():
        return BackendOptions(name)
    allowed = ALLOWED.get(name)
    if allowed is None:
        raise UserInputError(f"backend {name} takes no options (got '{spec}'); options exist for "
                             f"{', '.join(ALLOWED)}")
    kwargs: dict[str, object] = {}
    extra: dict[str, str] = {}
    for opt in (o.strip() for o in rest.split("+") if o.strip()):
        key, eq, value = opt.partition("=")
        if eq:
            if key not in allowed["extra"]:
                raise UserInputError(f"backend {name}: unknown option {key}= (known: "
                                     f"{', '.join(allowed['extra']) or 'none'})")
            extra[key] = value
        elif opt in PRECISIONS:
            if opt not in allowed["precision"]:
                raise UserInputError(f"backend {name} runs {', '.join(allowed['precision'])}, not {opt}")
            kwargs["precision"] = opt
        elif opt in allowed["flags"]:
            kwargs[opt] = True
        else:
            raise UserInputError(f"backend {name}: unknown option '{opt}' (known: "
                                 f"{', '.join((*allowed['precision'], *allowed['flags']))})")
    return BackendOptions(name, extra=extra, **kwargs)


# --- availability ----------------------------------------------------------------------------------------------


def torch_cuda_missing() -> str | None:
    """None where PyTorch sees a CUDA GPU; else why not, in one line."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install torch, a CUDA build)"
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build (no CUDA)" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU visible"
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
    except Exception as e:  # noqa: BLE001 - the wheel without its CUDA libraries raises OSError
        return f"TensorRT is installed but cannot load: {(str(e).splitlines() or [type(e).__name__])[0]}"
    if int(str(trt.__version__).split(".")[0]) < 10:
        return f"TensorRT {trt.__version__} is too old (need 10+)"
    missing = torch_cuda_missing()
    return f"TensorRT {trt.__version__} needs a CUDA GPU through PyTorch: {missing}" if missing else None


def in_chunks(infer, feeds: dict[str, np.ndarray], max_batch: int, output_names) -> dict[str, np.ndarray]:
    """A batch larger than the GPU buffers allocated once for `max_batch`: run it in slices, concatenated."""
    n = len(next(iter(feeds.values())))
    parts = [infer({k: v[i:i + max_batch] for k, v in feeds.items()}) for i in range(0, n, max_batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in output_names}


# what each GPU backend needs, checked the same way by `info` (backend_availability) and by opening it
CUDA_BACKEND_CHECKS = {"torch-cuda": torch_cuda_missing, "ort-cuda": ort_cuda_missing, "trt": tensorrt_missing}


def require_cuda_backend(name: str) -> None:
    """One UserInputError line (exit 2) where GPU backend `name` cannot run here: the reason `info` gives."""
    why = CUDA_BACKEND_CHECKS[name]()
    if why is not None:
        raise UserInputError(f"backend {name}: {why}")


def backend_availability() -> dict[str, str | None]:
    """Every backend of the BACKENDS table -> None (available) or why not."""
    from emoengine.engine.emonet_model import BACKENDS

    torch_missing = None if importlib.util.find_spec("torch") else "PyTorch is not installed (pip install torch)"
    result = {}
    for name, spec in BACKENDS.items():
        if name in CUDA_BACKEND_CHECKS:
            result[name] = CUDA_BACKEND_CHECKS[name]()
        elif spec.device == "cuda":
            result[name] = torch_cuda_missing()
        else:
            result[name] = torch_missing if spec.needs_torch else None
    return result


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
