"""Load an upstream EmoNet checkpoint (or seeded random weights) into our `EmoNet`, safely and strictly.

Every way a file can be wrong ends in one `UserInputError` line that says what is wrong with *that* file,
because users hand us whatever `.pth` they downloaded. Loading always goes through
`torch.load(weights_only=True)`, so a pickle that carries code is refused before anything in it runs.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from emoengine import class_names as _class_names
from emoengine.errors import UserInputError, warn_random_weights
from emoengine.export.emonet import EmoNet, random_emonet
from emoengine.paths import sha256_file

HEAD_KEY = "emo_fc_2.3.weight"  # Linear(128, C + 2): its row count gives the class count
_SHOW_KEYS = 4


@dataclass
class LoadedEmoNet:
    """An EmoNet ready for inference plus where it came from (recorded in the exported model's metadata)."""

    model: EmoNet
    num_classes: int
    class_names: tuple[str, ...]
    sha256: str
    source: str
    is_random: bool


def load_emonet(weights: str | Path, classes: int | None = None, seed: int = 0) -> LoadedEmoNet:
    """`weights` is a checkpoint path or "random"; `classes` (5 or 8), when given, must agree with the file."""
    if classes is not None and classes not in (5, 8):
        raise UserInputError(f"classes must be 5 or 8, not {classes}", options=("classes",))
    if str(weights) == "random":
        return _load_random(classes or 8, seed)

    path = Path(weights)
    if not path.exists():
        raise UserInputError(f"no such checkpoint file: {path}")
    if not path.is_file():
        raise UserInputError(f"checkpoint is not a file: {path}")
    state = _state_dict(_torch_load(path), path)
    num_classes = _num_classes(state, path)
    if classes is not None and classes != num_classes:
        raise UserInputError(f"classes {classes} disagrees with {path.name}, which has {num_classes} classes",
                             options=("classes",))

    model = EmoNet(num_classes)
    _check_keys_and_shapes(state, model, path)
    model.load_state_dict(_complete(state, model), strict=True)
    model.eval()
    model.requires_grad_(False)
    return LoadedEmoNet(model, num_classes, _class_names(num_classes), sha256_file(path), str(path), False)


def _load_random(num_classes: int, seed: int) -> LoadedEmoNet:
    warn_random_weights(seed)
    model = random_emonet(num_classes, seed)
    return LoadedEmoNet(model, num_classes, _class_names(num_classes), f"random-seed{seed}", "random", True)


_SIGNATURES = {
    b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"RIFF": "a RIFF file",
    b"\x1a\x45\xdf\xa3": "a Matroska/WebM video", b"%PDF": "a PDF",
}


def _sniff(path: Path) -> str | None:
    """Name what a file obviously is when it cannot be a torch checkpoint (zip archive or pickle), else None."""
    with path.open("rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return None
    for magic, what in _SIGNATURES.items():
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    if path.suffix.lower() == ".onnx":
        return "an ONNX model"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "not a PyTorch file"


def _torch_load(path: Path) -> object:
    """torch.load with weights_only=True, every failure turned into one line that names the file."""
    what = _sniff(path)
    if what is not None:
        raise UserInputError(f"not a PyTorch checkpoint: {path} ({what})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise on stderr
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError... by file type
        message = " ".join(str(e).split())
        if "Weights only load failed" in message:
            found = re.search(r"GLOBAL (\S+)", message)
            detail = f"it would import {found.group(1)}" if found else "it holds more than tensors"
            raise UserInputError(f"checkpoint {path} refused as unsafe: {detail} (weights-only loading; "
                                 "nothing in it was run)") from e
        if isinstance(e, EOFError):
            raise UserInputError(f"not a PyTorch checkpoint: {path} (truncated)") from e
        if isinstance(e, RuntimeError) and ("zip archive" in message or "inline_container" in message):
            raise UserInputError(f"not a PyTorch checkpoint: {path} (a damaged or foreign zip archive)") from e
        reason = f": {message[:120]}" if message else ""
        raise UserInputError(f"not a PyTorch checkpoint: {path} ({type(e).__name__}{reason})") from e


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors by upstream key name: plain or nested under "state_dict", `module.` prefix stripped."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise UserInputError(f"not an EmoNet checkpoint: {path} holds {type(obj).__name__}, not a state dict")
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserInputError(f"not an EmoNet checkpoint: {path} entry {key!r} is "
                                 f"{type(value).__name__}, not a tensor")
        state[key.removeprefix("module.")] = value
    return state


def _num_classes(state: dict[str, torch.Tensor], path: Path) -> int:
    head = state.get(HEAD_KEY)
    if head is None:
        _check_keys_and_shapes(state, EmoNet(8), path)  # names the missing/unexpected keys
        raise UserInputError(f"not an EmoNet checkpoint: {path} lacks {HEAD_KEY}")
    rows = head.shape[0] if head.dim() == 2 else -1
    if rows - 2 not in (5, 8):
        raise UserInputError(f"{path.name}: {HEAD_KEY} has shape {tuple(head.shape)}; EmoNet needs 7 or 10 "
                             "rows (5 or 8 classes + valence + arousal)")
    return rows - 2


def _optional(key: str) -> bool:
    """Buffers older PyTorch did not save and inference never reads."""
    return key.endswith("num_batches_tracked")


def _list(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOW_KEYS else "")


def _check_keys_and_shapes(state: dict[str, torch.Tensor], model: EmoNet, path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _optional(k)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} missing key(s): {_list(missing)}"] if missing else []
        parts += [f"{len(unexpected)} unexpected key(s): {_list(unexpected)}"] if unexpected else []
        raise UserInputError(f"{path.name} does not match EmoNet: " + "; ".join(parts))
    wrong = [f"{k} is {tuple(v.shape)}, EmoNet needs {tuple(expected[k].shape)}"
             for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        raise UserInputError(f"{path.name} has {len(wrong)} wrongly shaped tensor(s): {_list(wrong)}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserInputError(f"{path.name} has non-finite values (NaN/inf) in {_list(bad)}")


def _complete(state: dict[str, torch.Tensor], model: EmoNet) -> dict[str, torch.Tensor]:
    """float16/bfloat16/float64 -> float32, and absent num_batches_tracked filled from the fresh model."""
    full = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    for key, value in model.state_dict().items():
        full.setdefault(key, value)
    return full


