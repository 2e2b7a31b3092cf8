"""What every backend shares: the runner contract, the parsed backend spec and the request to open a model.

The runner contract is modelled on Polygraphy's runners: open once, `infer(feeds) -> {name: array}`, close. A
runner knows its input and output names and nothing about faces; pre/post-processing lives in the model classes
that own a runner (engine.model.emonet_model, the detectors). Batches larger than a runner takes in one call are
split here, once, for every backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from emoengine.engine.closing import Closing

_Part = TypeVar("_Part")

FLAGS = ("compile", "cudagraph", "channels_last")   # the on/off options a backend may accept


class Runner(Closing):
    """Base runner. Subclasses fill `input_names`, `output_names`, `metadata` and implement `_infer`.

    `backend` is the label of what runs (`ort`, `torch-cuda:fp16+compile`), given by whoever opens the runner.
    `max_batch` is the largest batch one `_infer` call takes (buffers allocated once, an engine's profile), or
    None for any. `last_device_ms` is the device time of the last call (CUDA events) where a runner measures it
    and `device_timing` is on; CPU runners have none.
    """

    backend: str = "?"
    input_names: list[str]
    output_names: list[str]
    metadata: dict[str, str]
    max_batch: int | None = None
    device_timing: bool = False
    last_device_ms: float | None = None

    def infer(self, feeds: Mapping[str, np.ndarray] | np.ndarray,
              max_batch: int | None = None) -> dict[str, np.ndarray]:
        """Run `feeds` (a bare array feeds the only input) in calls of at most `max_batch` rows (and at most what
        the runner takes), the outputs concatenated in order."""
        if isinstance(feeds, np.ndarray):
            if len(self.input_names) != 1:
                raise TypeError(f"{self.backend} runner has inputs {self.input_names}; pass a dict")
            feeds = {self.input_names[0]: feeds}
        feeds = dict(feeds)
        limits = [b for b in (max_batch, self.max_batch) if b]
        n = len(next(iter(feeds.values()))) if feeds else 0
        step = max(1, min(limits)) if limits else n
        if n <= step:
            return self._infer(feeds)
        parts = [self._infer({k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, n, step)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _opened(self, part: _Part | None) -> _Part:
        """`part` (a session, context or graph that `close()` sets to None), or one error for a closed runner."""
        if part is None:
            raise RuntimeError(f"the {self.backend} runner is closed")
        return part



@dataclass(frozen=True)
class BackendOptions:
    """`torch-cuda:fp16+compile+cudagraph` -> name torch-cuda, precision fp16, compile and CUDA graphs on.

    One string per configuration keeps the Runner contract and lets `bench --backends` and `run --backend` name
    every variant the same way ('+' joins options: `bench --backends` is already comma-separated). Which options
    a backend takes is its row's business (engine.backends.parse_backend checks them).
    """

    name: str
    precision: str = "fp32"
    compile: bool = False
    cudagraph: bool = False
    channels_last: bool = False
    extra: dict[str, str] = field(default_factory=dict)   # key=value options (e.g. conv_search=DEFAULT)
    default_precision: str = field(default="fp32", compare=False, repr=False)   # the row's: left out of labels

    @property
    def label(self) -> str:
        flags = [self.precision] if self.precision != self.default_precision else []
        flags += [f for f in FLAGS if getattr(self, f)]
        flags += [f"{k}={v}" for k, v in sorted(self.extra.items())]
        return self.name + (":" + "+".join(flags) if flags else "")


@dataclass(frozen=True)
class ModelRequest:
    """Everything needed to prepare and open one EmoNet runner; a new need is one new field here.

    Exactly one of `weights` (a .pth checkpoint or 'random') and `model` (an exported artifact) is set.
    """

    backend: BackendOptions
    weights: str | None = None
    model: str | None = None
    classes: int | None = None
    full_taps: bool = False
    taps: tuple[str, ...] = ()       # more outputs: EmoNet module paths (export.taps), each the full tensor
    max_batch: int = 32
    threads: int | None = None
    cache_optimized: bool = False    # ONNX Runtime CPU keeps its optimised graph on disk (OrtRunner)
    spinning: bool | None = None     # ONNX Runtime CPU: idle pool threads spin (None: ORT's default, on)
    no_implicit_export: bool = False  # refuse to make the artifact first (export.prepare) instead of saying so

    @property
    def source(self) -> str:
        """What the request names: the checkpoint or the artifact."""
        return str(self.model if self.model is not None else self.weights)
