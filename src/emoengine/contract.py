"""The outside contract in code (../shared/CONTRACT.md): crop size, tensor names and shapes, default taps.

Every module that needs one of these facts imports it from here, so that a change is made once.
Shapes are per face (the batch dimension N is left out); `None` marks the class count, 8 or 5.
"""

from __future__ import annotations

import re

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
# the channel means of the two default taps (present unless an export leaves taps out)
MEAN_TAP_OUTPUTS: dict[str, tuple] = {
    "conv1_mean": (128, 128),
    "emo_conv1_mean": (64, 64),
}
# with `--full-taps`: the two default taps untouched
FULL_TAP_OUTPUTS: dict[str, tuple] = {
    "conv1": (64, 128, 128),
    "emo_conv1": (128, 64, 64),
}
BASE_OUTPUTS = (*REQUIRED_OUTPUTS, *MEAN_TAP_OUTPUTS)   # the export's output order, then FULL_TAP_OUTPUTS

# run's default taps, by upstream module path, and the file stems they keep (conv1.mp4, emo_conv1.mp4)
DEFAULT_TAPS = ("conv1", "emo_net_2.0.conv1")
TAP_FILE_STEMS = {"conv1": "conv1", "emo_net_2.0.conv1": "emo_conv1"}
_NOT_MODULE_PATHS = set(BASE_OUTPUTS) | (set(FULL_TAP_OUTPUTS) - set(DEFAULT_TAPS))

# a tap from any backend against upstream's, worst |got - golden| / the layer's largest |golden| (issue 13).
# Kept here until src/emoengine/compare.py (issue 14: one tolerance table) lands; the lead moves it there.
TAP_TOLERANCE = 1e-3


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
    return TAP_FILE_STEMS.get(module_path) or re.sub(r"[^A-Za-z0-9._-]", "_", module_path)
