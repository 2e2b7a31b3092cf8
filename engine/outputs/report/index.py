"""A batch's index.html: one row per video, linking to its report.html, with the failed ones' reasons."""

from __future__ import annotations

import json
from pathlib import Path

from emoengine.engine.outputs.report.page import esc, href, num, render_page, table
from emoengine.engine.outputs.report.rundata import REPORT_NAME
from emoengine.engine.outputs.schema import BATCH_SUMMARY, PREDICTIONS_PARQUET, SUMMARY_NAME, read_batch_summary
from emoengine.engine.outputs.writers import write_text_atomic

INDEX_NAME = "index.html"


def dominant_expressions(folder: Path) -> dict[str, tuple[str, float]]:
    """Per video: the expression of the most face-frames and its share, from predictions.parquet (only its
    `video` and `expression` columns are read)."""
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(folder / PREDICTIONS_PARQUET, columns=["video", "expression"])
    except (ImportError, OSError, KeyError, ValueError):   # no parquet, or no video had a face
        return {}
    counts = table.group_by(["video", "expression"]).aggregate([("expression", "count")]).to_pylist()
    best: dict[str, tuple[str, int]] = {}
    totals: dict[str, int] = {}
    for c in counts:
        video, n = c["video"], c["expression_count"]
        totals[video] = totals.get(video, 0) + n
        if n > best.get(video, ("", -1))[1]:
            best[video] = (c["expression"], n)
    return {v: (expr, n / totals[v]) for v, (expr, n) in best.items()}


def _video_row(folder: Path, row: dict, dominant: dict) -> list[str]:
    name = str(row["video"])
    report = f"{name}/{REPORT_NAME}"
    link = f'<a href="{href(report)}">{esc(name)}</a>' if (folder / report).is_file() else esc(name)
    try:
        fps = json.loads((folder / name / SUMMARY_NAME).read_text()).get("frames_per_s")
    except (OSError, ValueError):
        fps = None
    expr = dominant.get(name)
    status = esc(row["status"])
    return [link, f'<span class="status-{status}">{status}</span>', str(row.get("frames", 0)),
            str(row.get("faces", 0)), f"{esc(expr[0])} ({100 * expr[1]:.0f} %)" if expr else "–",
            num(fps, 1) if fps is not None else "–", num(row.get("wall_s"), 1), esc(row.get("reason") or "")]


def render_index(folder: Path, summary: dict) -> str:
    dominant = dominant_expressions(folder)
    rows = [_video_row(folder, r, dominant) for r in summary.get("videos", [])]
    header = ["video (its report)", "status", "frames", "faces", "dominant expression (share of face-frames)",
              "frames/s", "wall s", "reason"]
    failed = [r for r in summary.get("videos", []) if r.get("status") == "failed"]
    failures = "".join(f"<li><b>{esc(r['video'])}</b>: {esc(r.get('reason') or 'unknown')}</li>" for r in failed)
    counts = (f"{summary.get('inputs', len(rows))} videos: {summary.get('done', 0)} done, "
              f"{summary.get('skipped', 0)} skipped (complete from an earlier batch), {summary.get('failed', 0)} "
              f"failed; {summary.get('faces', 0)} face detections in {num(summary.get('wall_s'), 1)} s")
    body = (f"<header><h1>emoengine batch</h1><p>{esc(counts)}</p></header>"
            + (f'<section id="failed"><h2>Failed</h2><ul>{failures}</ul></section>' if failed else "")
            + f'<section id="videos"><h2>Videos</h2>{table(header, rows, "videos")}</section>'
            + f'<footer><a href="{href(BATCH_SUMMARY)}">{BATCH_SUMMARY}</a>'
            + (f' · <a href="{href(PREDICTIONS_PARQUET)}">{PREDICTIONS_PARQUET}</a>'
               if (folder / PREDICTIONS_PARQUET).is_file() else "") + "</footer>")
    return render_page("emoengine batch", body)


def write_batch_index(folder: str | Path, summary: dict | None = None) -> Path:
    """FOLDER/index.html (atomically) from batch_summary.json's content (read from the folder when not given)."""
    folder = Path(folder)
    if summary is None:
        summary = read_batch_summary(folder)
    return write_text_atomic(folder / INDEX_NAME, render_index(folder, summary))

