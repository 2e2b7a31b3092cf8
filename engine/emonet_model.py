"""EmoNet as the engine sees it: uint8 face crops in, named predictions out, over any backend.

The model class owns pre/post-processing (softmax, class names, landmarks from heatmaps) the way
insightface's model_zoo classes do; the runner under it only moves tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emoengine.contract import CROP_SIZE, FULL_TAP_OUTPUTS, INPUT_NAME, INPUT_SHAPE, tap_outputs
from emoengine.contract import class_names as default_class_names
from emoengine.engine.backends import OrtRunner, Runner, TorchRunner, check_torch_device
from emoengine.engine.model_check import CONTRACT_OUTPUTS, check_onnx_contract
from emoengine.errors import UserInputError
from emoengine.paths import models_dir


@dataclass(frozen=True)
class BackendSpec:
    """One row of the format table: what a backend runs and what export must produce for it."""

    name: str
    artifact_suffix: str      # what `--model` must end with for this backend
    device: str               # cpu | cuda
    needs_torch: bool


BACKENDS: dict[str, BackendSpec] = {
    "torch": BackendSpec("torch", ".pth", "cpu", True),
    "torch-cuda": BackendSpec("torch-cuda", ".pth", "cuda", True),
    "ort": BackendSpec("ort", ".onnx", "cpu", False),
    "ort-int8": BackendSpec("ort-int8", ".onnx", "cpu", False),   # static int8 QDQ (export --precision int8)
    "ort-cuda": BackendSpec("ort-cuda", ".onnx", "cuda", False),
    "trt": BackendSpec("trt", ".engine", "cuda", False),
}


def backend_for_artifact(path: str) -> str:
    """The default backend for an artifact, by suffix (Ultralytics-style)."""
    suffix = Path(path).suffix.lower()
    for spec in BACKENDS.values():
        if spec.artifact_suffix == suffix:
            return spec.name
    raise UserInputError(f"unknown model artifact type '{suffix}' (expected .pth, .onnx or .engine): {path}")


@dataclass
class EmoNetBatch:
    """Predictions for N crops. Feature maps are None when the artifact lacks them."""

    logits: np.ndarray            # (N, C)
    probs: np.ndarray             # (N, C) softmax
    valence: np.ndarray           # (N,)
    arousal: np.ndarray           # (N,)
    landmarks: np.ndarray         # (N, 68, 2) in crop pixels (0..256)
    conv1_mean: np.ndarray | None
    emo_conv1_mean: np.ndarray | None
    conv1: np.ndarray | None = None
    emo_conv1: np.ndarray | None = None
    taps: dict[str, np.ndarray] = field(default_factory=dict)  # module path -> float32 (N, ...), as exported

    def __len__(self) -> int:
        return len(self.logits)

    def rows(self, a: int, b: int) -> EmoNetBatch:
        """Crops a..b of this batch: every array and every tap sliced alike."""
        arrays = {k: None if v is None else v[a:b] for k, v in self.__dict__.items() if k != "taps"}
        return EmoNetBatch(**arrays, taps={name: tap[a:b] for name, tap in self.taps.items()})


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def heatmap_landmarks(heatmap: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """(N, 68, H, W) heatmaps → (N, 68, 2) points in crop pixels.

    Arg-max with the usual quarter-pixel shift toward the higher neighbour (as face-alignment does; none on
    the border, where a neighbour is missing), then scaled from heatmap cells to crop pixels (cell centres):
    a peak at cell (x, y) lands at crop pixel ((x + 0.5) * s, (y + 0.5) * s) ± s/4, s = crop_size / W, so
    every point lies inside the crop.
    """
    n, k, h, w = heatmap.shape
    flat = heatmap.reshape(n, k, h * w)
    idx = flat.argmax(axis=-1)
    ys, xs = np.divmod(idx, w)
    pts = np.stack([xs, ys], axis=-1).astype(np.float32)
    hm = heatmap.reshape(n * k, h, w)
    xi, yi = xs.reshape(-1), ys.reshape(-1)
    rows = np.arange(n * k)
    xl, xr = np.clip(xi - 1, 0, w - 1), np.clip(xi + 1, 0, w - 1)
    yu, yd = np.clip(yi - 1, 0, h - 1), np.clip(yi + 1, 0, h - 1)
    dx = np.where((xi > 0) & (xi < w - 1), np.sign(hm[rows, yi, xr] - hm[rows, yi, xl]), 0)
    dy = np.where((yi > 0) & (yi < h - 1), np.sign(hm[rows, yd, xi] - hm[rows, yu, xi]), 0)
    pts += 0.25 * np.stack([dx, dy], axis=-1).reshape(n, k, 2).astype(np.float32)
    return (pts + 0.5) * (crop_size / w)


class EmoNetModel:
    """Runs EmoNet on uint8 RGB crops (N, 256, 256, 3) in chunks of at most `max_batch`."""

    REQUIRED_OUTPUTS = tuple(CONTRACT_OUTPUTS)   # the outputs model_check requires of a file, here of a runner

    def __init__(self, runner: Runner, max_batch: int = 32) -> None:
        missing = [n for n in self.REQUIRED_OUTPUTS if n not in runner.output_names]
        if runner.input_names != [INPUT_NAME] or missing:
            runner.close()
            raise UserInputError(
                f"not an emoengine EmoNet export (inputs {runner.input_names}, outputs {runner.output_names}); "
                "make one with `emoengine export`")
        self.runner = runner
        self.max_batch = max(1, int(max_batch))
        meta = runner.metadata
        names = meta.get("class_names")
        if names:
            self.class_names = tuple(json.loads(names))
        else:  # an artifact without our metadata: infer C from the output shape later
            self.class_names = tuple(default_class_names(int(meta.get("num_classes", 8))))
        self.is_random = meta.get("is_random") == "true" or meta.get("checkpoint_source") == "random"
        self.has_taps = "conv1_mean" in runner.output_names
        # both full maps: an export with `--taps conv1` alone has a `conv1` output but no `emo_conv1`
        self.has_full_taps = all(name in runner.output_names for name in FULL_TAP_OUTPUTS)
        self.taps = tap_outputs(runner.output_names)  # module paths this artifact outputs (export --taps)

    @property
    def backend(self) -> str:
        return self.runner.backend

    def predict(self, crops: np.ndarray) -> EmoNetBatch:
        if crops.ndim != 4 or crops.shape[1:] != INPUT_SHAPE or crops.dtype != np.uint8:
            raise ValueError(f"EmoNet takes uint8 (N,256,256,3) crops, got {crops.dtype} {crops.shape}")
        parts = [self.runner.infer({INPUT_NAME: crops[i:i + self.max_batch]})
                 for i in range(0, len(crops), self.max_batch)]
        out = {k: np.concatenate([p[k] for p in parts]) if parts else None for k in self.runner.output_names}
        if not parts:
            c = len(self.class_names)
            empty = np.zeros((0, c), np.float32)
            return EmoNetBatch(empty, empty, np.zeros(0, np.float32), np.zeros(0, np.float32),
                               np.zeros((0, 68, 2), np.float32), None, None)
        logits = out["expression"].astype(np.float32)
        return EmoNetBatch(
            logits=logits,
            probs=softmax(logits),
            valence=out["valence"].reshape(-1).astype(np.float32),
            arousal=out["arousal"].reshape(-1).astype(np.float32),
            landmarks=heatmap_landmarks(out["heatmap"]),
            conv1_mean=out.get("conv1_mean"),
            emo_conv1_mean=out.get("emo_conv1_mean"),
            conv1=out.get("conv1"),
            emo_conv1=out.get("emo_conv1"),
            taps={name: np.asarray(out[name], np.float32) for name in self.taps},
        )

    def close(self) -> None:
        self.runner.close()


def _torch_runner(weights: str, classes: int | None, device: str, full_taps: bool) -> Runner:
    try:
        from emoengine.export.checkpoint import load_emonet
        from emoengine.export.emonet import EmoNetGraph
    except ImportError as e:
        raise UserInputError("the torch backend needs PyTorch: pip install torch (then emoengine[export])") from e
    check_torch_device(device)  # before loading: no checkpoint work (or random-weights warning) for nothing
    loaded = load_emonet(weights, classes)
    meta = {
        "class_names": json.dumps(list(loaded.class_names)),
        "num_classes": str(loaded.num_classes),
        "checkpoint_sha256": loaded.sha256,
        "checkpoint_source": "random" if loaded.is_random else Path(str(loaded.source)).name,
        "is_random": "true" if loaded.is_random else "false",
    }
    return TorchRunner(EmoNetGraph(loaded.model, full_taps=full_taps), meta, device=device)


def cached_onnx_for(weights: str, classes: int | None, full_taps: bool, taps=()) -> Path:
    """Export `weights` to ONNX once and reuse it: models/emonet<C>-<sha12>[-fulltaps][-taps<n>-<hash>].onnx."""
    try:
        from emoengine.export.checkpoint import load_emonet
        from emoengine.export.onnx_export import export_onnx, read_metadata
        from emoengine.export.taps import taps_tag
    except ImportError as e:
        raise UserInputError("exporting weights to ONNX needs PyTorch: pip install torch, or pass --model "
                             "with an exported .onnx") from e
    loaded = load_emonet(weights, classes)
    tag = "random" if loaded.is_random else loaded.sha256[:12]
    taps = sorted(set(taps))  # one artifact per tap set, whatever order asked for it
    path = models_dir() / f"emonet{loaded.num_classes}-{tag}{'-fulltaps' if full_taps else ''}{taps_tag(taps)}.onnx"
    from emoengine import __version__

    stale = path.is_file() and read_metadata(path).get("emoengine_version") != __version__
    if stale or not path.is_file():   # a different exporter may have made a different graph
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(loaded, path, full_taps=full_taps, verify=False, taps=taps)
    return path


def open_emonet(backend: str, weights: str | None = None, model: str | None = None,
                classes: int | None = None, full_taps: bool = False, max_batch: int = 32,
                threads: int | None = None, cache_optimized: bool = False) -> EmoNetModel:
    """Pick and open the runner for `backend` from a checkpoint (`weights`) or an exported artifact (`model`).

    CUDA backends take options after a colon (`torch-cuda:fp16+compile`, `trt:fp16`; see engine.cuda_io).
    cache_optimized: ONNX Runtime CPU keeps its optimised graph on disk and reuses it (OrtRunner)."""
    from emoengine.engine.cuda_io import parse_backend

    options = parse_backend(backend)
    backend = options.name
    if backend not in BACKENDS:
        raise UserInputError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if (weights is None) == (model is None):
        raise UserInputError("give exactly one of --weights (a .pth checkpoint or 'random') and --model "
                             "(an exported artifact)")
    spec = BACKENDS[backend]
    if spec.device == "cuda":
        from emoengine.engine.cuda_io import require_cuda_backend

        require_cuda_backend(spec.name)  # first: without the GPU stack nothing else about the request matters
    if model is not None and not Path(model).is_file():
        raise UserInputError(f"no such model file: {model}")
    if spec.device == "cuda":  # torch-cuda, ort-cuda, trt: engine.cuda_runners / engine.trt_runner
        from emoengine.engine.cuda_runners import open_cuda_runner

        if spec.needs_torch and model is not None and not model.endswith(".pth"):
            raise UserInputError(f"backend {backend} runs a .pth checkpoint (--weights), not {model}")
        runner = open_cuda_runner(options, weights=weights, model=model, classes=classes, full_taps=full_taps,
                                  max_batch=max_batch, threads=threads, torch_runner=_torch_runner)
    elif spec.needs_torch:
        if model is not None and not model.endswith(".pth"):
            raise UserInputError(f"backend {backend} runs a .pth checkpoint (--weights), not {model}")
        runner = _torch_runner(weights or model, classes, spec.device, full_taps)
    else:  # ort, ort-int8 (CPU)
        if model:
            path = Path(model)
        elif spec.name == "ort-int8":
            from emoengine.export.quantize import cached_int8_onnx_for

            path = cached_int8_onnx_for(weights, classes, full_taps)
        else:
            path = cached_onnx_for(weights, classes, full_taps)
        if path.suffix.lower() != ".onnx":
            raise UserInputError(f"backend {backend} runs an .onnx model, not {path}")
        if model:
            check_onnx_contract(path)  # the contract's tensors, before a session is built on a foreign file
        runner = OrtRunner(path, providers=["CPUExecutionProvider"], threads=threads, cache_optimized=cache_optimized)
        if spec.name == "ort-int8":
            runner.backend = "ort-int8"
    emonet = EmoNetModel(runner, max_batch=max_batch)
    if full_taps and not emonet.has_full_taps:
        emonet.close()
        raise UserInputError(f"{model} was exported without --full-taps; re-export it with --full-taps or drop "
                             "--full-taps")
    if classes is not None and classes != len(emonet.class_names):
        emonet.close()
        raise UserInputError(f"--classes {classes} disagrees with {model or weights}, which has "
                             f"{len(emonet.class_names)} classes")
    return emonet
