"""Taps: any EmoNet module's output, named by its path in upstream's module tree (`m0`, `emo_net_2.0.conv1`, ...).

A tap is what a forward hook on that module sees when the module returns, copied at once, so a later in-place op
(upstream's ReLU after `emo_fc_2.1` works in place) cannot change it. `TapRecorder` is that hook; `EmoNetGraph`
returns what it records as extra outputs, which is how they reach the ONNX export and the torch backend.
Importing this module needs no torch (the CLI, the cache key and the name checks use it without a model).
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass

from emoengine.contract import CROP_SIZE
from emoengine.errors import UserInputError

FLOAT32_BYTES = 4  # taps are exported and returned as float32 whatever precision computed them


class TapRecorder:
    """Forward hooks on the named modules of `net` that keep each module's output while recording is on.

    `copy=True` clones the output inside the hook (the tap semantics); `copy=False` keeps the tensor itself, for
    outputs nothing modifies in place. Recording is on only between `start()` and `take()`, so several recorders
    on one net (one per graph) do not record for one another. A recorder holds one forward pass at a time: a net
    is run by one thread at a time (the pipeline's infer stage), not by several at once.
    """

    def __init__(self, net, names, copy: bool = True) -> None:
        modules = dict(net.named_modules())
        self.names = tuple(names)
        self.copy = copy
        self.outputs: dict = {}
        self.recording = False
        self.handles = [modules[name].register_forward_hook(_Keep(self, name)) for name in self.names]

    def start(self) -> None:
        self.outputs = {}
        self.recording = True

    def take(self) -> tuple:
        """What the modules returned since `start()`, in the order of `names`; recording stops."""
        self.recording = False
        outputs, self.outputs = self.outputs, {}
        missing = [name for name in self.names if name not in outputs]
        if missing:
            raise RuntimeError(f"modules {missing} did not run in this forward pass")
        return tuple(outputs[name] for name in self.names)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class _Keep:
    """The hook itself: an object rather than a closure so that a net with its recorder deep-copies or pickles
    (the copy's hooks then feed the copy's recorder)."""

    def __init__(self, recorder: TapRecorder, name: str) -> None:
        self.recorder = recorder
        self.name = name

    def __call__(self, module, inputs, output) -> None:
        recorder = self.recorder
        if recorder.recording:
            recorder.outputs[self.name] = output.clone() if recorder.copy else output


def module_paths(net) -> list[str]:
    """Every module's path in `net`'s tree, parents before children (the root, '', left out)."""
    return [name for name, _ in net.named_modules() if name]


def parse_taps(text: str | None) -> tuple[str, ...]:
    """`--taps a,b , c` -> ('a', 'b', 'c'); None or '' -> ()."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def check_taps(names, known) -> tuple[str, ...]:
    """`names` without repeats, in order; an unknown name raises UserInputError naming the closest known ones."""
    known = list(known)
    known_set = set(known)
    wanted = tuple(dict.fromkeys(names))
    for name in wanted:
        if name not in known_set:
            close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise UserInputError(f"unknown tap '{name}': EmoNet has no module of that name{hint} "
                                 "(`emoengine layers` lists them all)")
    return wanted


def taps_tag(taps) -> str:
    """File-name tag of a tap set for cached artifacts: '' for none, else '-taps<n>-<hash>' (order-free)."""
    unique = sorted(set(taps))
    if not unique:
        return ""
    digest = hashlib.sha256(",".join(unique).encode()).hexdigest()[:10]
    return f"-taps{len(unique)}-{digest}"


def is_vector_shape(shape) -> bool:
    """A feature vector rather than a map: rank 1 per crop, or channels over a 1x1 map (avg_pool_2)."""
    shape = tuple(shape)
    return len(shape) == 1 or (len(shape) == 3 and shape[1:] == (1, 1))


@dataclass(frozen=True)
class Layer:
    """One module of EmoNet and what it outputs for one 256x256 crop."""

    name: str
    kind: str                 # the module's class, e.g. Conv2d, ConvBlock, MaxPool2d
    shape: tuple[int, ...]    # per crop (batch dimension left out)
    bytes: int                # of that output as a float32 tap, per crop

    @property
    def is_vector(self) -> bool:
        return is_vector_shape(self.shape)


def emonet_module_paths(num_classes: int = 8) -> list[str]:
    """The names a tap may take: EmoNet's module tree (built on the `meta` device: no weights, instant)."""
    return module_paths(_meta_emonet(num_classes))


def layer_table(num_classes: int = 8) -> list[Layer]:
    """Every module of EmoNet in tree order with its output shape and size per crop, from one forward pass of a
    crop with a hook on every module. Shapes do not depend on the weights, so the net and the crop live on the
    `meta` device: no weights are initialised and nothing is computed."""
    import torch

    net = _meta_emonet(num_classes)
    names = module_paths(net)
    modules = dict(net.named_modules())
    recorder = TapRecorder(net, names, copy=False)
    recorder.start()
    with torch.no_grad():
        net(torch.zeros(1, 3, CROP_SIZE, CROP_SIZE, device="meta"))
    outputs = recorder.take()
    return [Layer(name, type(modules[name]).__name__, tuple(out.shape[1:]), out[0].numel() * FLOAT32_BYTES)
            for name, out in zip(names, outputs, strict=True)]


def _meta_emonet(num_classes: int):
    import torch

    from emoengine.export.emonet import EmoNet

    with torch.device("meta"):
        return EmoNet(num_classes).eval()
