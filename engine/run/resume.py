"""`run --resume`: skip a run whose complete outputs already sit in --out.

A run is complete when summary.json (written last, after every other file is in place) exists, names every
file it lists, and was made from the same input (path, size, modification time; for a folder, every image's)
with the same settings and model. Live inputs (streams, cameras) are never skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from emoengine.engine.outputs.schema import read_summary_if_any

# what a RunConfig resolves that stands for options the fingerprint leaves out as given (weights, model,
# classes -> the model's identity; backend -> the one a model's suffix implies)
RESOLVED = ("backend", "model_id", "tap_names")


def input_fingerprint(source) -> str | None:
    """A digest of what the input is on disk now; None for live inputs, which cannot be resumed."""
    if source.kind in ("stream",):
        return None
    paths = list(getattr(source, "paths", None) or [Path(source.name)])
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        digest.update(f"{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def run_fingerprint(cfg, source) -> str | None:
    """Input and settings of this run as one digest (stored in summary.json as `fingerprint`): every
    RunSettings field marked `fingerprint` (RunSettings.fingerprint) and the resolved RESOLVED ones."""
    data = input_fingerprint(source)
    if data is None:
        return None
    settings = {**cfg.settings.fingerprint(), **{k: getattr(cfg, k) for k in RESOLVED}}
    return hashlib.sha256((data + json.dumps(settings, sort_keys=True, default=str)).encode()).hexdigest()


def complete_summary(out_dir: Path) -> dict | None:
    """The summary of a complete earlier run in `out_dir` (summary.json, written last, and every file it lists
    present), else None. `batch` skips such a video; `run --resume` also compares the fingerprint. A damaged
    summary.json is a UserInputError naming it (engine.outputs.schema), not a silent re-run over it."""
    summary = read_summary_if_any(out_dir)
    if summary is None:
        return None
    if not all((Path(out_dir) / name).exists() for name in summary.get("files", [])):
        return None
    return summary


def completed_summary(out_dir: Path, fingerprint: str | None) -> dict | None:
    """The summary of a complete earlier run with this fingerprint in `out_dir`, else None."""
    if fingerprint is None:
        return None
    summary = complete_summary(out_dir)
    if summary is None or summary.get("fingerprint") != fingerprint:
        return None
    return summary
