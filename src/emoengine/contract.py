"""The outside contract in code (../shared/CONTRACT.md): crop size, tensor names and shapes, default taps.

Every module that needs one of these facts imports it from here, so that a change is made once.
Shapes are per face (the batch dimension N is left out); `None` marks the class count, 8 or 5.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

CROP_SIZE = 256                                # EmoNet's input side, pixels
INPUT_NAME = "image"                           # uint8 (N, 256, 256, 3) RGB crops
INPUT_SHAPE = (CROP_SIZE, CROP_SIZE, 3)
NUM_LANDMARKS = 68
HEATMAP_SIZE = 64

CLASS_NAMES_8 = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")

# always present in an export
REQUIRED_OUTPUTS: dict[str, tuple] = {
    "expression": (None,),
    "valence": (),
    "arousal": (),
    "heatmap": (NUM_LANDMARKS, HEATMAP_SIZE, HEATMAP_SIZE),
}


@dataclass(frozen=True)
class TapSpec:
    """One tap: what a run, the writers and activations.npz need to know of it, so a tap is data, not code.

    `name` is the upstream module path; `kind` "map" (C, H, W) or "vector" (F,) / (C, 1, 1); `shape` its full
    tensor per face; `stem` the file stem (default: the module path, sanitised); `mean_output` the export output
    holding its channel mean (N, H, W), if one does; `full_output` the one holding it in full (default: the
    module path, how `export --taps` names it)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    stem: str = ""
    mean_output: str | None = None
    full_output: str | None = None

    def __post_init__(self) -> None:
        if not self.stem:
            object.__setattr__(self, "stem", re.sub(r"[^A-Za-z0-9._-]", "_", self.name))

    @property
    def size(self) -> int:
        """Elements of a vector tap (its CSV columns)."""
        return math.prod(self.shape)

    @property
    def channels(self) -> int:
        """C of a map tap (1 for a 2-D one)."""
        return self.shape[0] if len(self.shape) == 3 else 1

    @property
    def full_names(self) -> tuple[str, ...]:
        """The outputs that may hold the full tensor: the contract's name, else the module path (`export --taps`)."""
        return tuple(dict.fromkeys(n for n in (self.full_output, self.name) if n))

    @classmethod
    def of(cls, name: str, shape) -> TapSpec:
        """A tap other than the defaults, from its probed shape per face."""
        from emoengine.export.taps import is_vector_shape  # no torch; export.taps imports this module

        shape = tuple(int(d) for d in shape)
        return cls(name, "vector" if is_vector_shape(shape) else "map", shape)


# THE table of default taps (run's, every export's): adding a tap-like output is one entry here
DEFAULT_TAP_SPECS: tuple[TapSpec, ...] = (
    TapSpec("conv1", "map", (64, 128, 128), stem="conv1", mean_output="conv1_mean", full_output="conv1"),
    TapSpec("emo_net_2.0.conv1", "map", (128, 64, 64), stem="emo_conv1", mean_output="emo_conv1_mean",
            full_output="emo_conv1"),
)
# derived from it (public names of before): the channel means present unless an export leaves taps out, the full
# tensors with `--full-taps`, run's default taps by module path, and their file stems (conv1.mp4, emo_conv1.mp4)
MEAN_TAP_OUTPUTS: dict[str, tuple] = {s.mean_output: s.shape[1:] for s in DEFAULT_TAP_SPECS if s.mean_output}
FULL_TAP_OUTPUTS: dict[str, tuple] = {s.full_output: s.shape for s in DEFAULT_TAP_SPECS if s.full_output}
BASE_OUTPUTS = (*REQUIRED_OUTPUTS, *MEAN_TAP_OUTPUTS)   # the export's output order, then FULL_TAP_OUTPUTS
DEFAULT_TAPS = tuple(s.name for s in DEFAULT_TAP_SPECS)
TAP_FILE_STEMS = {s.name: s.stem for s in DEFAULT_TAP_SPECS}
_NOT_MODULE_PATHS = set(BASE_OUTPUTS) | (set(FULL_TAP_OUTPUTS) - set(DEFAULT_TAPS))


def class_names(num_classes: int) -> tuple[str, ...]:
    """Upstream EmoNet's class names: the 5-class model uses the first five of the 8-class list."""
    if num_classes not in (5, 8):
        from emoengine.errors import UserInputError  # a ValueError, as every public entry point raises

        raise UserInputError(f"EmoNet has 5 or 8 classes, not {num_classes}")
    return CLASS_NAMES_8[:num_classes]


def output_names(full_taps: bool = False, taps=()) -> tuple[str, ...]:
    """Output order of the exported model (and of the torch graph that stands in for it): the base outputs, the
    full default taps with `--full-taps`, then one output per extra tap named by its module path (a tap that is
    already an output, `conv1` with `--full-taps`, is not repeated)."""
    names = BASE_OUTPUTS + (tuple(FULL_TAP_OUTPUTS) if full_taps else ())
    return names + tuple(t for t in dict.fromkeys(taps) if t not in names)


def tap_outputs(names) -> list[str]:
    """Which of an export's output names (or of its `taps` metadata) are module taps, in order: every name but
    the contract's own outputs. `conv1` (`--full-taps`) counts, being the conv1 module's full output; `emo_conv1`
    is emo_net_2.0.conv1's under another name and does not."""
    return [n for n in names if n not in _NOT_MODULE_PATHS]


def tap_file_stem(module_path: str) -> str:
    """The file stem a tap's outputs are written under: today's names for the defaults, else the module path
    with anything but letters, digits, '.', '_' and '-' replaced (`emo_net_2.2.conv3` stays as it is)."""
    return TAP_FILE_STEMS.get(module_path) or TapSpec(module_path, "map", ()).stem


def default_tap_specs() -> tuple[TapSpec, ...]:
    """DEFAULT_TAP_SPECS, read when called (so code that asks at run time follows the one table)."""
    return DEFAULT_TAP_SPECS
