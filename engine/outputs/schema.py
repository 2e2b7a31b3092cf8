"""The files a run or a batch writes and later reads back, in one place: their names, predictions.csv's columns,
summary.json's keys, a batch's rows, and one reader for each.

`emoengine report`, `run --resume`, `batch`'s planning and aggregation all read through here, so a damaged file
(a predictions.csv without its columns, a summary.json that is not an object) is one UserInputError (exit 2)
naming the file and what it lacks, never a traceback from deep inside a parser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, overload

from emoengine.errors import UserInputError

PREDICTIONS_NAME = "predictions.csv"
SUMMARY_NAME = "summary.json"
BATCH_SUMMARY = "batch_summary.json"
PREDICTIONS_PARQUET = "predictions.parquet"

# predictions.csv: these, then p_<class> per class (in the model's order), then TAIL_COLUMNS
HEAD_COLUMNS = ("frame", "time_s", "face_id", "x1", "y1", "x2", "y2", "det_score", "expression")
TAIL_COLUMNS = ("valence", "arousal")
PROB_PREFIX = "p_"
INT_COLUMNS = ("frame", "face_id")
STR_COLUMNS = ("expression",)
# what a reader of predictions.csv needs (the report, batch aggregation)
NEEDED_COLUMNS = ("frame", "time_s", "face_id", *TAIL_COLUMNS)

# summary.json: keys a reader relies on when present, and the type each must have
SUMMARY_TYPES: dict[str, type | tuple[type, ...]] = {
    "files": list, "classes": list, "taps": list, "frames": int, "faces": int, "fps": (int, float),
    "wall_s": (int, float), "input": str, "input_kind": str, "fingerprint": (str, type(None)),
}
# a batch's row (batch_summary.json's `videos`): keys every reader uses
BATCH_ROW_KEYS = ("video", "status")


def predictions_header(class_names) -> list[str]:
    """predictions.csv's header for a model with these classes."""
    return [*HEAD_COLUMNS, *(f"{PROB_PREFIX}{c}" for c in class_names), *TAIL_COLUMNS]


def prob_columns(header: list[str]) -> list[str]:
    return [c for c in header if c.startswith(PROB_PREFIX)]


def read_predictions_header(path: Path, missing_ok: bool = False) -> list[str]:
    """predictions.csv's columns, checked: every NEEDED_COLUMNS one and at least one p_<class>.
    `missing_ok`: an absent file is [] (a report still opens), else it is a UserInputError too."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            header = [c.strip() for c in f.readline().strip().split(",")]
    except FileNotFoundError:
        if missing_ok:
            return []
        raise UserInputError(f"{path} is missing: not the output folder of a finished run") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"cannot read {path}: {e}") from None
    lacks = [c for c in NEEDED_COLUMNS if c not in header]
    if not prob_columns(header):
        lacks.append(f"{PROB_PREFIX}<class>")
    if lacks:
        raise UserInputError(f"{path} lacks the column(s) {', '.join(lacks)}: not an emoengine predictions.csv")
    return header


def load_json_object(path: Path, what: str) -> dict:
    """`path`'s JSON object; a missing file is FileNotFoundError (the caller decides), anything else wrong is a
    UserInputError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise UserInputError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path} is not an emoengine {what} (not a JSON object)")
    return data


def check_summary(summary: dict, path: Path) -> dict:
    """`summary` if every key a reader relies on has its type, else a UserInputError naming the key."""
    for key, kind in SUMMARY_TYPES.items():
        if key in summary and not isinstance(summary[key], kind):
            raise UserInputError(f"{path} is damaged: its {key!r} is not a {_type_names(kind)}")
    if not all(isinstance(n, str) for n in summary.get("files", [])):
        raise UserInputError(f"{path} is damaged: its 'files' are not all file names")
    if not all(isinstance(t, dict) and "name" in t and "stem" in t for t in summary.get("taps", [])):
        raise UserInputError(f"{path} is damaged: its 'taps' lack a name or stem")
    return summary


def read_summary(folder: Path) -> dict:
    """FOLDER/summary.json, checked; a folder without one is not the output folder of a finished run."""
    path = Path(folder) / SUMMARY_NAME
    try:
        return check_summary(load_json_object(path, "summary"), path)
    except FileNotFoundError:
        raise UserInputError(f"no {SUMMARY_NAME} in {folder}: not the output folder of a finished run") from None


def read_summary_if_any(folder: Path) -> dict | None:
    """FOLDER/summary.json, checked, or None where there is none (a run not finished: resume runs it)."""
    try:
        return read_summary(folder) if (Path(folder) / SUMMARY_NAME).is_file() else None
    except FileNotFoundError:
        return None


@overload
def read_batch_summary(folder: Path, missing_ok: Literal[False] = False) -> dict: ...
@overload
def read_batch_summary(folder: Path, missing_ok: bool) -> dict | None: ...
def read_batch_summary(folder: Path, missing_ok: bool = False) -> dict | None:
    """FOLDER/batch_summary.json with each row checked (BATCH_ROW_KEYS); `missing_ok`: None if absent."""
    path = Path(folder) / BATCH_SUMMARY
    try:
        summary = load_json_object(path, "batch summary")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise UserInputError(f"no {BATCH_SUMMARY} in {folder}") from None
    rows = summary.get("videos", [])
    if not isinstance(rows, list):
        raise UserInputError(f"{path} is damaged: its 'videos' is not a list")
    for i, row in enumerate(rows):
        lacks = [k for k in BATCH_ROW_KEYS if not isinstance(row, dict) or k not in row]
        if lacks:
            raise UserInputError(f"{path} is damaged: video row {i} lacks {', '.join(lacks)}")
    return summary


def _type_names(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {list: "list", dict: "object", str: "string", int: "number", float: "number", type(None): "null"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))
