"""`emoengine.engine.backends`: every backend EmoNet runs on, one row each, and the runner contract they share.

A row (`Backend`) gives a backend's name, device, precisions, the options it accepts, why it cannot run here
(`missing()`), how its artifact is made or found once (`prepare(request)`) and how it opens (`open(request)`).
Its implementation is one file of this package (`module`), imported only when the row is used, so that listing
the backends imports neither torch nor TensorRT. `info`, `bench`, `batch`, `run` and the CLI help read the rows;
no other module branches on backend names. Adding a backend: one file here and one row below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from emoengine.engine.backends.base import BackendOptions, ModelRequest, Runner
from emoengine.engine.backends.cuda import require
from emoengine.engine.backends.ort import OrtRunner
from emoengine.errors import UserInputError
from emoengine.paths import model_file

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "ENGINE_TARGET", "EXPORT_TARGETS", "Backend", "BackendOptions", "ModelRequest", "OrtRunner", "Runner",
           "availability", "backend_for_artifact", "backend_row", "open_runner", "options_help", "parse_backend",
           "request_for"]

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Backend:
    """One backend: what it is, what it accepts, and the hooks of its implementation file."""

    name: str
    device: str                         # cpu | cuda: where EmoNet runs (the detector follows a CUDA backend)
    module: str                         # its implementation: engine/backends/<module>.py
    summary: str                        # one line for `info` and the CLI help
    precisions: tuple[str, ...] = ("fp32",)   # the first is the default
    flags: tuple[str, ...] = ()         # on/off options (`+compile`): BackendOptions' booleans, base.FLAGS
    settings: tuple[str, ...] = ()      # key=value options (`+conv_search=HEURISTIC`)
    suffixes: tuple[str, ...] = (".onnx",)    # what `--model` may end with
    runs: str = "an .onnx model"        # the same, in words, for the refusal
    default_for: str | None = None      # the `--model` suffix that picks this backend when none is named
    reference: bool = False             # eager PyTorch: the parity reference and speed baseline on its device

    def implementation(self):
        return importlib.import_module(f"emoengine.engine.backends.{self.module}")

    def missing(self) -> str | None:
        """None when this backend can run here; else why not, in one line."""
        return self.implementation().missing(self)

    def prepare(self, request: ModelRequest) -> Path | None:
        """Make or find the artifact this backend runs for `request`, once (cached ONNX, fp16 or int8 ONNX,
        TensorRT engine); a later call finds it."""
        require(self.name, self.missing)
        return self.implementation().prepare(self, request)

    def open(self, request: ModelRequest) -> Runner:
        """The runner for `request` (its artifact prepared first), labelled with the request's backend spec."""
        require(self.name, self.missing)
        return self.implementation().open_runner(self, request)

    @property
    def takes_options(self) -> bool:
        return len(self.precisions) > 1 or bool(self.flags or self.settings)


BACKENDS: dict[str, Backend] = {row.name: row for row in (
    Backend("torch", "cpu", "torch", "our PyTorch EmoNet, eager fp32 (the reference)", suffixes=(".pth",),
            runs="a .pth checkpoint (--weights)", default_for=".pth", reference=True),
    Backend("torch-cuda", "cuda", "torch", "our PyTorch EmoNet on CUDA", precisions=("fp32", "fp16", "bf16"),
            flags=("compile", "cudagraph", "channels_last"), settings=("compile_mode",), suffixes=(".pth",),
            runs="a .pth checkpoint (--weights)", reference=True),
    Backend("ort", "cpu", "ort", "ONNX Runtime CPU, fp32", default_for=".onnx"),
    Backend("ort-int8", "cpu", "ort", "ONNX Runtime CPU, static int8 QDQ (export --precision int8)",
            precisions=("int8",)),
    Backend("ort-cuda", "cuda", "ort_cuda", "ONNX Runtime CUDA EP with IO binding", precisions=("fp32", "fp16"),
            flags=("cudagraph",), settings=("conv_search",)),
    Backend("trt", "cuda", "tensorrt", "TensorRT 10/11 engine, built on first use",
            precisions=("fp32", "fp16", "int8"), flags=("cudagraph",), settings=("max_batch",),
            suffixes=(".engine", ".onnx"), runs="an .engine or builds one from an .onnx", default_for=".engine"),
)}


DEFAULT_BACKEND = "ort"   # what `run` uses when neither --backend nor a --model suffix says otherwise

# `export --target`: the runtime an exported ONNX is made for -> the int8 QDQ flavour that runtime's int8 backend
# runs (export.quantize.INT8_FORMATS: ONNX Runtime's U8S8 fast path; TensorRT's symmetric S8S8, zero points 0).
# The runtimes' names are backend names, so they live here; ENGINE_TARGET is the one `export --trt` builds for.
EXPORT_TARGETS: dict[str, str] = {"ort": "u8s8", "trt": "s8s8"}
ENGINE_TARGET = "trt"


def backend_row(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UserInputError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})") from None


def parse_backend(spec: str) -> BackendOptions:
    """`name[:opt+opt+key=value]` checked against the backend's row. Unknown or inapplicable options are a
    UserInputError, not ignored."""
    name, _, rest = spec.partition(":")
    row = backend_row(name.strip())
    default = row.precisions[0]
    if not rest.strip():
        return BackendOptions(row.name, precision=default, default_precision=default)
    if not row.takes_options:
        raise UserInputError(f"backend {row.name} takes no options (got '{spec}'); options exist for "
                             f"{', '.join(r.name for r in BACKENDS.values() if r.takes_options)}")
    precision, flags = default, set()
    extra: dict[str, str] = {}
    for opt in (o.strip() for o in rest.split("+") if o.strip()):
        key, eq, value = opt.partition("=")
        if eq:
            if key not in row.settings:
                raise UserInputError(f"backend {row.name}: unknown option {key}= (known: "
                                     f"{', '.join(row.settings) or 'none'})")
            extra[key] = value
        elif opt in PRECISIONS:
            if opt not in row.precisions:
                raise UserInputError(f"backend {row.name} runs {', '.join(row.precisions)}, not {opt}")
            precision = opt
        elif opt in row.flags:
            flags.add(opt)
        else:
            raise UserInputError(f"backend {row.name}: unknown option '{opt}' (known: "
                                 f"{', '.join((*row.precisions, *row.flags))})")
    return BackendOptions(row.name, precision, compile="compile" in flags, cudagraph="cudagraph" in flags,
                          channels_last="channels_last" in flags, extra=extra, default_precision=default)


def backend_for_artifact(path: str) -> str:
    """The default backend for an artifact, by suffix (Ultralytics-style)."""
    suffix = Path(path).suffix.lower()
    for row in BACKENDS.values():
        if row.default_for == suffix:
            return row.name
    known = ", ".join(r.default_for for r in BACKENDS.values() if r.default_for)
    raise UserInputError(f"unknown model artifact type '{suffix}' (expected {known}): {path}")


def request_for(backend: str, weights: str | None = None, model: str | None = None, **fields) -> ModelRequest:
    """A checked ModelRequest: the backend spec parsed against its row, exactly one of weights and model, the
    other ModelRequest fields as given."""
    options = parse_backend(backend)
    if (weights is None) == (model is None):
        raise UserInputError("give exactly one of weights (a .pth checkpoint or 'random') and model "
                             "(an exported artifact)", options=("weights", "model"))
    return ModelRequest(options, weights=weights, model=model, **fields)


def open_runner(request: ModelRequest) -> Runner:
    """The runner of a request, refused in one line where its backend cannot run here (first: without the GPU
    stack nothing else about the request matters), its model file is missing or of a kind the backend lacks."""
    row = BACKENDS[request.backend.name]
    require(row.name, row.missing)
    if request.model is not None:
        model_file(request.model)
        if Path(request.model).suffix.lower() not in row.suffixes:
            raise UserInputError(f"backend {row.name} runs {row.runs}, not {request.model}")
    return row.open(request)


def options_help() -> str:
    """The backend specs the rows accept, for `info` and the CLI help: `torch-cuda:fp16|bf16+compile+...`."""
    parts = []
    for row in BACKENDS.values():
        if not row.takes_options:
            parts.append(row.name)
            continue
        opts = ["|".join(p for p in row.precisions[1:])] if len(row.precisions) > 1 else []
        values = getattr(row.implementation(), "SETTING_VALUES", {})   # the backend file knows its values
        opts += list(row.flags) + [f"{k}={'|'.join(values.get(k, ('...',)))}" for k in row.settings]
        parts.append(f"{row.name}[:{'+'.join(opts)}]")
    return "  ".join(parts)


def availability() -> dict[str, str | None]:
    """Every backend -> None (available here) or why not."""
    return {name: row.missing() for name, row in BACKENDS.items()}

