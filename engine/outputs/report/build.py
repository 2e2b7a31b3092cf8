"""report.html from the files of a finished run: the one code path of `run` (at commit) and `emoengine report`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from emoengine import __version__
from emoengine.engine.outputs.report import sections
from emoengine.engine.outputs.report.page import PALETTE, VA_COLOURS, esc, render_page
from emoengine.engine.outputs.report.rundata import REPORT_NAME, SUMMARY_NAME, RunFiles, timeline_data
from emoengine.engine.outputs.writers import write_text_atomic
from emoengine.errors import UserInputError

DEFAULT_FPS = 25.0   # a summary without a frame rate (never written by `run`, but a report must still open)


def video_sections(run: RunFiles, fps: float) -> tuple[list[str], dict]:
    """The player, the timeline and the faces table, and the data report.js draws the timeline from."""
    pred = run.predictions
    frames = float(run.summary.get("frames") or 0)
    duration = max(frames / fps, float(pred.time_s.max()) + 1 / fps if len(pred) else 0.0)
    timeline = timeline_data(pred, fps)
    data = {"fps": fps, "duration": duration, "classes": list(pred.classes), "palette": PALETTE,
            "va_colours": VA_COLOURS, "va_range": va_range(pred), "timeline": timeline}
    return [sections.player(run, duration), sections.timeline(run, timeline, data["va_range"]),
            sections.faces_table(run)], data


def render_report(run: RunFiles) -> str:
    s = run.summary
    title = f"emoengine report: {Path(str(s.get('input') or run.folder)).name}"
    parts = [f"<header><h1>{esc(title)}</h1></header>", sections.banner(s)]
    data = None
    if run.is_still:
        parts.append(sections.gallery(run))
    else:
        videos, data = video_sections(run, float(s.get("fps") or DEFAULT_FPS))
        parts += videos
    parts += [sections.mean_maps(run), sections.facts(s), sections.files_list(run),
              f"<footer>made by emoengine {esc(__version__)} from the files of this folder; rebuild with "
              "<code>emoengine report FOLDER</code></footer>"]
    return render_page(title, "\n".join(p for p in parts if p), data)


def va_range(pred) -> int:
    """The valence/arousal axis: ±1 (EmoNet's trained range), widened to whole units where values fall
    outside it (untrained weights), so no line is clipped."""
    values = np.concatenate([pred.valence, pred.arousal])
    values = values[np.isfinite(values)]
    return max(1, math.ceil(float(np.abs(values).max()))) if len(values) else 1


def build_report(folder: str | Path, summary: dict | None = None) -> Path:
    """Write FOLDER/report.html (atomically) from the run's files. `summary` is what summary.json holds, or
    at commit what it is about to hold; read from summary.json when not given."""
    folder = Path(folder)
    html = render_report(RunFiles.load(folder, summary))
    return write_text_atomic(folder / REPORT_NAME, html)


def rebuild(folder: str | Path) -> Path:
    """`emoengine report FOLDER`: a run's report.html, or a batch's index.html (and nothing else changes)."""
    from emoengine.engine.outputs.report.index import write_batch_index
    from emoengine.engine.outputs.schema import BATCH_SUMMARY

    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"no such folder: {folder}")
    if not (folder / SUMMARY_NAME).is_file() and (folder / BATCH_SUMMARY).is_file():
        return write_batch_index(folder)
    return build_report(folder)
