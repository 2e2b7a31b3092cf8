"""EmoNet as the engine sees it: uint8 face crops in, named predictions out, over any backend.

The model class owns pre/post-processing (softmax, class names, landmarks from heatmaps) the way
insightface's model_zoo classes do; the runner under it only moves tensors.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from emoengine.contract import (
    CROP_SIZE,
    INPUT_NAME,
    INPUT_SHAPE,
    NUM_LANDMARKS,
    REQUIRED_OUTPUTS,
    default_tap_specs,
    tap_outputs,
)
from emoengine.contract import class_names as default_class_names
from emoengine.engine.backends import Runner, open_runner, request_for
from emoengine.errors import UserInputError


@dataclass
class EmoNetBatch:
    """Predictions for N crops. `taps`: every tap output the artifact has, by its output name, float32 (N, ...):
    the defaults' `conv1_mean`, `emo_conv1` ... and each `export --taps` module path; a contract.TapSpec says
    which of them carry a tap's channel mean and its full tensor (engine.model.tapset reads them so)."""

    logits: np.ndarray            # (N, C)
    probs: np.ndarray             # (N, C) softmax
    valence: np.ndarray           # (N,)
    arousal: np.ndarray           # (N,)
    landmarks: np.ndarray         # (N, 68, 2) in crop pixels (0..256)
    taps: Mapping[str, np.ndarray] = field(default_factory=dict)
    heatmap: np.ndarray | None = None   # (N, 68, 64, 64), only when asked for (predict(heatmap=True))

    def __len__(self) -> int:
        return len(self.logits)

    def rows(self, a: int, b: int) -> EmoNetBatch:
        """Crops a..b of this batch: every array and every tap sliced alike."""
        arrays = {k: None if v is None else v[a:b] for k, v in self.__dict__.items() if k != "taps"}
        return replace(self, **arrays, taps={name: tap[a:b] for name, tap in self.taps.items()})


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
    """Runs EmoNet on uint8 RGB crops (N, 256, 256, 3) in chunks of at most `max_batch`. `predict` is safe to
    call from several threads (an Engine's `predict` beside its stream): one call runs at a time, since a torch
    runner records the taps of one forward pass."""

    REQUIRED_OUTPUTS = tuple(REQUIRED_OUTPUTS)   # the outputs model_check requires of a file, here of a runner

    def __init__(self, runner: Runner, max_batch: int = 32) -> None:
        missing = [n for n in self.REQUIRED_OUTPUTS if n not in runner.output_names]
        if runner.input_names != [INPUT_NAME] or missing:
            runner.close()
            raise UserInputError(
                f"not an emoengine EmoNet export (inputs {runner.input_names}, outputs {runner.output_names}); "
                "make one with `emoengine export`")
        self.runner = runner
        self.max_batch = max(1, int(max_batch))
        self._lock = threading.Lock()
        meta = runner.metadata
        names = meta.get("class_names")
        if names:
            self.class_names = tuple(json.loads(names))
        else:  # an artifact without our metadata: infer C from the output shape later
            self.class_names = tuple(default_class_names(int(meta.get("num_classes", 8))))
        # a stand-in (benchmarks/standin_model.py: the export's contract, cheap ops) means as little as random weights
        self.is_stand_in = meta.get("stand_in") == "true"
        self.is_random = (meta.get("is_random") == "true" or meta.get("checkpoint_source") == "random"
                          or self.is_stand_in)
        outputs = list(runner.output_names)
        defaults = default_tap_specs()
        self.tap_outputs = [n for n in outputs if n not in REQUIRED_OUTPUTS]   # what EmoNetBatch.taps holds
        self.has_taps = all(s.mean_output in outputs for s in defaults if s.mean_output)
        # every default in full: an export with `--taps conv1` alone has a `conv1` output but no `emo_conv1`
        self.has_full_taps = all(s.full_output in outputs for s in defaults if s.full_output)
        # module path -> the output holding that tap in full (export --taps, and the defaults with --full-taps)
        self.full_outputs = {n: n for n in tap_outputs(outputs)}
        for spec in defaults:
            found = next((n for n in spec.full_names if n in outputs), None)
            if found is not None and spec.name not in self.full_outputs:
                self.full_outputs[spec.name] = found
        self.taps = list(self.full_outputs)   # module paths this artifact outputs in full

    @property
    def backend(self) -> str:
        return self.runner.backend

    def predict(self, crops: np.ndarray, heatmap: bool = False) -> EmoNetBatch:
        """`heatmap=True` keeps the landmark heatmaps (the Python API returns them; the pipeline, which would
        only carry 1.1 MB a face to the writers for nothing, does not ask)."""
        if crops.ndim != 4 or crops.shape[1:] != INPUT_SHAPE or crops.dtype != np.uint8:
            raise UserInputError(f"EmoNet takes uint8 (N,{','.join(map(str, INPUT_SHAPE))}) crops, got "
                                 f"{crops.dtype} {crops.shape}")
        if not len(crops):
            empty = np.zeros((0, len(self.class_names)), np.float32)
            return EmoNetBatch(empty, empty, np.zeros(0, np.float32), np.zeros(0, np.float32),
                               np.zeros((0, NUM_LANDMARKS, 2), np.float32))
        with self._lock:
            out = self.runner.infer({INPUT_NAME: crops}, max_batch=self.max_batch)   # the runner splits the batch
        logits = out["expression"].astype(np.float32)
        return EmoNetBatch(
            logits=logits,
            probs=softmax(logits),
            valence=out["valence"].reshape(-1).astype(np.float32),
            arousal=out["arousal"].reshape(-1).astype(np.float32),
            landmarks=heatmap_landmarks(out["heatmap"]),
            taps={name: np.asarray(out[name], np.float32) for name in self.tap_outputs},
            heatmap=out["heatmap"].astype(np.float32) if heatmap else None,
        )

    def module_taps(self, batch: EmoNetBatch) -> dict[str, np.ndarray]:
        """The taps `batch` holds in full, by module path (what Engine.predict returns)."""
        return {name: batch.taps[out] for name, out in self.full_outputs.items() if out in batch.taps}

    def close(self) -> None:
        self.runner.close()


def open_emonet(backend: str, weights: str | None = None, model: str | None = None, **fields) -> EmoNetModel:
    """Open EmoNet on `backend` (a row of engine.backends.BACKENDS, with options after a colon:
    `torch-cuda:fp16+compile`, `trt:fp16`) from a checkpoint (`weights`) or an exported artifact (`model`).

    `fields` are the other fields of engine.backends.ModelRequest: classes, full_taps, max_batch (32), threads,
    cache_optimized (ONNX Runtime CPU keeps its optimised graph on disk and reuses it)."""
    request = request_for(backend, weights=weights, model=model, **fields)
    emonet = EmoNetModel(open_runner(request), max_batch=request.max_batch)
    if request.full_taps and not emonet.has_full_taps:
        emonet.close()
        raise UserInputError(f"{model} was exported without full_taps; re-export it with `emoengine export "
                             "--full-taps` or drop full_taps", options=("full_taps",))
    if request.classes is not None and request.classes != len(emonet.class_names):
        emonet.close()
        raise UserInputError(f"classes {request.classes} disagrees with {request.source}, which has "
                             f"{len(emonet.class_names)} classes", options=("classes",))
    return emonet
