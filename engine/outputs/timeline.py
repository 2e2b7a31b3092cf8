"""timeline.png: each face's expression probabilities (stacked) and valence/arousal over time.

Built on matplotlib's object API with the Agg canvas, never pyplot: no global backend switch, no global
figure registry, safe to call from a pipeline thread.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from emoengine.engine.outputs.writers import AtomicOutput

# EmoNet's classes get fixed, meaningful-ish colours; any other class falls back to tab10.
CLASS_COLORS = {
    "neutral": "#9e9e9e", "happy": "#f5b700", "sad": "#3f7fd1", "surprise": "#ff8c1a",
    "fear": "#8e5ac8", "disgust": "#4caf50", "anger": "#e53935", "contempt": "#8d6e63",
}
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
         "#bcbd22", "#17becf"]


def class_colors(class_names: Sequence[str]) -> list[str]:
    return [CLASS_COLORS.get(n.lower(), TAB10[i % len(TAB10)]) for i, n in enumerate(class_names)]


def _series(rows: Iterable[Mapping[str, Any]], class_names: Sequence[str]) -> dict[int, dict[str, np.ndarray]]:
    """Per face id: time-sorted arrays t (N,), probs (N, C), valence (N,), arousal (N,)."""
    acc: dict[int, list[tuple]] = defaultdict(list)
    keys = [f"p_{c}" for c in class_names]
    for row in rows:
        try:
            acc[int(float(row["face_id"]))].append(
                (float(row["time_s"]), [float(row[k]) for k in keys], float(row["valence"]), float(row["arousal"])))
        except KeyError as e:
            raise ValueError(f"timeline rows need face_id, time_s, {', '.join(keys)}, valence, arousal; "
                             f"missing {e}") from None
    out = {}
    for fid, items in acc.items():
        items.sort(key=lambda it: it[0])
        out[fid] = {"t": np.array([it[0] for it in items]), "probs": np.array([it[1] for it in items]),
                    "valence": np.array([it[2] for it in items]), "arousal": np.array([it[3] for it in items])}
    return out


def _binned(s: dict[str, np.ndarray], step: float, max_points: int) -> tuple[dict[str, np.ndarray], float]:
    """Long series averaged into at most `max_points` time bins (a plot has ~1000 pixel columns anyway)."""
    t = s["t"]
    if len(t) <= max_points:
        return s, step
    width = max(step, (t[-1] - t[0]) / max_points)
    idx = np.minimum(((t - t[0]) / width).astype(np.int64), max_points - 1)
    counts = np.bincount(idx, minlength=max_points)
    used = counts > 0

    def mean(v: np.ndarray) -> np.ndarray:
        return np.bincount(idx, weights=v, minlength=max_points)[used] / counts[used]

    out = {"t": (t[0] + (np.arange(max_points) + 0.5) * width)[used],
           "probs": np.stack([mean(s["probs"][:, c]) for c in range(s["probs"].shape[1])], axis=1),
           "valence": mean(s["valence"]), "arousal": mean(s["arousal"])}
    return out, width


def _segments(t: np.ndarray, step: float) -> list[slice]:
    """Runs of consecutive samples; a jump of more than 1.5 frame steps (face not seen) starts a new run."""
    if len(t) == 0:
        return []
    breaks = np.flatnonzero(np.diff(t) > 1.5 * step) + 1
    edges = [0, *breaks.tolist(), len(t)]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


@runtime_checkable
class TimelineSeries(Protocol):
    """A compact store of timeline rows (outputs.TimelineStore): per face id, t, probs, valence, arousal."""

    def series(self) -> dict[int, dict[str, np.ndarray]]: ...


def plot_timeline(rows: Iterable[Mapping[str, Any]] | TimelineSeries, class_names: Sequence[str], path: str | os.PathLike, *,
                  max_faces: int = 6, max_points: int = 2000, title: str | None = None) -> Path:
    """Write the timeline PNG atomically; rows are predictions.csv rows (numbers or their strings).

    The `max_faces` faces seen in most frames get a pair of panels each; a face missing for a while shows a gap;
    a face seen in more than `max_points` frames is averaged into that many time bins.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    class_names = list(class_names)
    # compact stores (outputs.TimelineStore) hand over their arrays; plain rows are parsed
    series = rows.series() if isinstance(rows, TimelineSeries) else _series(rows, class_names)
    colors = class_colors(class_names)
    shown = sorted(series, key=lambda fid: (-len(series[fid]["t"]), fid))[:max_faces]
    shown.sort()
    all_t = np.unique(np.concatenate([series[f]["t"] for f in series])) if series else np.zeros(0)
    step = float(np.median(np.diff(all_t))) if len(all_t) > 1 else 1.0

    n = max(1, len(shown))
    fig = Figure(figsize=(12, 1.2 + 3.4 * n), dpi=100)
    FigureCanvasAgg(fig)
    heading = title or "Expression and valence/arousal over time"
    if len(series) > len(shown):
        heading += f"  (the {len(shown)} faces seen longest of {len(series)})"
    fig.suptitle(heading, fontsize=13)

    if not shown:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no faces found", ha="center", va="center", fontsize=14, transform=ax.transAxes)
        ax.set_axis_off()
    else:
        _plot_faces(fig, [(fid, series[fid]) for fid in shown], step, max_points, colors, class_names)

    with AtomicOutput(path) as out:
        fig.savefig(out.tmp_path, format="png")
    return out.final_path


def _plot_faces(fig, faces: list[tuple[int, dict]], step: float, max_points: int, colors: list[str],
                class_names: list[str]) -> None:
    """A probability panel and a valence/arousal panel per face, one shared time axis, the class legend on top."""
    from matplotlib.patches import Patch

    n = len(faces)
    grid = fig.add_gridspec(2 * n, 1, height_ratios=[1.6, 1.0] * n, hspace=0.45)
    first_ax = None
    for k, (fid, face) in enumerate(faces):
        s, face_step = _binned(face, step, max_points)
        ax_p = fig.add_subplot(grid[2 * k], sharex=first_ax)
        first_ax = first_ax or ax_p
        ax_va = fig.add_subplot(grid[2 * k + 1], sharex=first_ax)
        _plot_probs(ax_p, s, face_step, colors)
        _plot_va(ax_va, s, face_step)
        frames = len(face["t"])
        mean_p = face["probs"].mean(axis=0)
        top = int(np.argmax(mean_p))
        ax_p.set_title(f"face #{fid}: {frames} frame{'s' if frames != 1 else ''}; highest mean probability: "
                       f"{class_names[top]} ({mean_p[top]:.0%})", fontsize=10, loc="left")
        ax_p.set_ylabel("probability")
        ax_va.set_ylabel("value")
        ax_p.tick_params(labelbottom=False)
        if k == 0:
            ax_va.legend(loc="upper right", fontsize=8, ncol=2, framealpha=0.8)
    ax_va.set_xlabel("time (s)")
    fig.legend(handles=[Patch(color=c, label=name) for c, name in zip(colors, class_names, strict=True)],
               loc="upper center", ncol=min(len(class_names), 8), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.55 / fig.get_figheight()))
    fig.subplots_adjust(top=1 - 1.0 / fig.get_figheight(), bottom=0.5 / fig.get_figheight(),
                        left=0.07, right=0.98)


def _plot_probs(ax, s: dict[str, np.ndarray], step: float, colors: list[str]) -> None:
    """Stacked areas per run of frames; a run of one frame is a stacked bar one frame wide."""
    t, cum = s["t"], np.cumsum(s["probs"], axis=1)
    for seg in _segments(t, step):
        lower = np.zeros(seg.stop - seg.start)
        for i, color in enumerate(colors):
            upper = cum[seg, i]
            if seg.stop - seg.start == 1:
                ax.bar(t[seg], upper - lower, bottom=lower, width=step, color=color, linewidth=0)
            else:
                ax.fill_between(t[seg], lower, upper, color=color, linewidth=0)
            lower = upper
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)


def _plot_va(ax, s: dict[str, np.ndarray], step: float) -> None:
    t = s["t"]
    for key, color in (("valence", "#1565c0"), ("arousal", "#c62828")):
        for j, seg in enumerate(_segments(t, step)):
            marker = "o" if seg.stop - seg.start == 1 else None
            ax.plot(t[seg], s[key][seg], color=color, lw=1.4, marker=marker, ms=3, label=key if j == 0 else None)
    ax.axhline(0, color="black", lw=0.6, alpha=0.6)
    lo = min(-1.05, float(np.nanmin([s["valence"].min(), s["arousal"].min()])) - 0.05)
    hi = max(1.05, float(np.nanmax([s["valence"].max(), s["arousal"].max()])) + 0.05)
    ax.set_ylim(lo, hi)
    ax.grid(alpha=0.3)
