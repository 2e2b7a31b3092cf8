"""What a report shows, read from the files of a finished run folder.

`run` (at commit, with the summary it is about to write) and `emoengine report` (rebuilding, also for runs made
before reports existed) both come through `RunFiles.load`, so the page never depends on in-memory state.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emoengine.contract import TAP_FILE_STEMS
from emoengine.engine.outputs.schema import (
    PREDICTIONS_NAME,
    SUMMARY_NAME,
    prob_columns,
    read_predictions_header,
    read_summary,
)
from emoengine.errors import UserInputError

__all__ = ["REPORT_NAME", "SUMMARY_NAME", "Predictions", "RunFiles", "Tap", "read_summary"]

REPORT_NAME = "report.html"
# every face's timeline points together: bounds report.html (~1.5 MB) whatever the length or number of faces
TIMELINE_BUCKETS = 20000
TIMELINE_FACES = 16        # faces drawn on the timeline: those seen in the most frames
SCALE = 1000               # timeline values are stored as integers: value × SCALE (3 decimals)


@dataclass
class Tap:
    """One tap's files, relative to the run folder (None where the run did not write them)."""

    name: str
    stem: str
    video: str | None
    mean: str | None


@dataclass
class Predictions:
    """predictions.csv as columns (expression = the top class of the probabilities, as `run` writes it)."""

    classes: tuple[str, ...]
    frame: np.ndarray
    time_s: np.ndarray
    face_id: np.ndarray
    probs: np.ndarray
    valence: np.ndarray
    arousal: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)

    def rows_of(self, face_id: int) -> np.ndarray:
        """Row indices of one face, in frame order."""
        rows = np.flatnonzero(self.face_id == face_id)
        return rows[np.argsort(self.frame[rows], kind="stable")]


@dataclass
class RunFiles:
    folder: Path
    summary: dict
    predictions: Predictions
    taps: list[Tap]
    annotated_video: str | None
    stills: dict[int, str] = field(default_factory=dict)   # frame → annotated still (image inputs)
    image_files: dict[int, str] = field(default_factory=dict)   # frame → input file name (images.csv)

    @property
    def is_still(self) -> bool:
        return self.summary.get("input_kind") in ("image", "images")

    @classmethod
    def load(cls, folder: Path, summary: dict | None = None) -> RunFiles:
        folder = Path(folder)
        if summary is None:
            summary = read_summary(folder)
        classes = tuple(summary.get("classes") or ())
        return cls(folder=folder, summary=summary, predictions=read_predictions(folder / PREDICTIONS_NAME, classes),
                   taps=run_taps(folder, summary), annotated_video=present(folder, "annotated.mp4"),
                   stills=still_images(folder), image_files=read_images_csv(folder / "images.csv"))


def present(folder: Path, name: str | None) -> str | None:
    """`name` if it is a file of the run folder (a report never links to a missing file)."""
    return name if name and (folder / name).is_file() else None


def read_predictions(path: Path, classes: tuple[str, ...]) -> Predictions:
    """The numeric columns of predictions.csv (numpy's C parser: an hour of video reads in about a second);
    a file without them, or with a value that is not a number, is a UserInputError naming it."""
    header = read_predictions_header(path, missing_ok=True)
    prob_cols = prob_columns(header)
    classes = tuple(c[2:] for c in prob_cols) or classes
    if not header:
        data = np.zeros((0, 5 + len(classes)))
    else:
        cols = [header.index(c) for c in ("frame", "time_s", "face_id", *prob_cols, "valence", "arousal")]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)   # a run without faces: a header and no rows
                data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=cols, ndmin=2, dtype=np.float64)
        except ValueError as e:
            raise UserInputError(f"{path} is damaged: {str(e).strip().splitlines()[0]}") from None
    return Predictions(classes=classes, frame=data[:, 0].astype(np.int64), time_s=data[:, 1],
                       face_id=data[:, 2].astype(np.int64), probs=data[:, 3:-2], valence=data[:, -2],
                       arousal=data[:, -1])


def read_images_csv(path: Path) -> dict[int, str]:
    """images.csv of a folder run: frame → input file name."""
    import csv

    try:
        with open(path, newline="") as f:
            return {int(r["frame"]): r["file"] for r in csv.DictReader(f)}
    except FileNotFoundError:
        return {}


def still_images(folder: Path) -> dict[int, str]:
    """The annotated stills: `annotated.png` (one image, frame 0) or `annotated/<frame>_<stem>.png`."""
    if (folder / "annotated.png").is_file():
        return {0: "annotated.png"}
    stills = folder / "annotated"
    if not stills.is_dir():
        return {}
    return {int(p.name[:6]): f"annotated/{p.name}" for p in sorted(stills.iterdir())
            if p.name[:6].isdigit() and p.suffix == ".png"}


def run_taps(folder: Path, summary: dict) -> list[Tap]:
    """The taps the run wrote: summary["taps"] where present (the agreed list), else what summary["files"]
    holds under the default taps' names (`conv1.mp4`, `emo_conv1_mean.png`, ..., runs made before it)."""
    listed: list[tuple[str, str, str | None, str | None]]   # name, stem, video, mean
    if "taps" in summary:
        listed = [(t["name"], t["stem"], t.get("video"), t.get("mean")) for t in summary["taps"]]
    else:
        files: set[str] = set(summary.get("files") or ())
        stems = {n[:-len("_mean.png")] for n in files if n.endswith("_mean.png")}
        stems |= {n[:-len(".mp4")] for n in files if n.endswith(".mp4") and n != "annotated.mp4"}
        order = list(TAP_FILE_STEMS.values())
        names = {stem: name for name, stem in TAP_FILE_STEMS.items()}
        listed = [(names.get(s, s), s, f"{s}.mp4", f"{s}_mean.png")
                  for s in sorted(stems, key=lambda s: (order.index(s) if s in order else len(order), s))]
    taps = [Tap(name, stem, present(folder, video), present(folder, mean)) for name, stem, video, mean in listed]
    return [t for t in taps if t.video or t.mean]


# -- per face ---------------------------------------------------------------------------------------------
def face_stats(pred: Predictions) -> list[dict]:
    """One row per face id: frames, first/last second, dominant expression and its share, valence/arousal
    mean and range. From every row of predictions.csv (not the decimated timeline)."""
    stats = []
    for fid in np.unique(pred.face_id):
        rows = pred.face_id == fid
        top = np.bincount(np.argmax(pred.probs[rows], axis=1), minlength=len(pred.classes))
        v, a = pred.valence[rows], pred.arousal[rows]
        stats.append({"face": int(fid), "frames": int(rows.sum()), "first_s": float(pred.time_s[rows].min()),
                      "last_s": float(pred.time_s[rows].max()), "dominant": pred.classes[int(np.argmax(top))],
                      "share": float(top.max() / rows.sum()), "valence": (v.mean(), v.min(), v.max()),
                      "arousal": (a.mean(), a.min(), a.max())})
    return stats


def _ints(values: np.ndarray) -> list[int]:
    return np.rint(np.asarray(values) * SCALE).astype(np.int64).tolist()


def _bucketed(rows: np.ndarray, pred: Predictions, bucket: int) -> dict:
    """One face's rows in buckets of `bucket` frames: mean of everything, min/max of valence and arousal."""
    keys = pred.frame[rows] // bucket
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    counts = np.diff(np.r_[starts, len(rows)])

    def mean(x):
        return np.add.reduceat(x, starts, axis=0) / (counts if x.ndim == 1 else counts[:, None])

    t_ms = np.rint(mean(pred.time_s[rows]) * 1000).astype(np.int64)
    face = {"id": int(pred.face_id[rows[0]]), "frames": len(rows), "t": np.diff(t_ms, prepend=0).tolist(),
            "p": [_ints(col) for col in mean(pred.probs[rows]).T]}
    for key, x in (("v", pred.valence[rows]), ("a", pred.arousal[rows])):
        face[key] = _ints(mean(x))
        if bucket > 1:   # one frame a bucket: the band would equal the line
            face[key + "min"] = _ints(np.minimum.reduceat(x, starts))
            face[key + "max"] = _ints(np.maximum.reduceat(x, starts))
    return face


def timeline_data(pred: Predictions, fps: float) -> dict:
    """The timeline's series, decimated honestly: the faces seen longest (at most TIMELINE_FACES), every
    `bucket` consecutive frames averaged into one point (and valence/arousal's min–max kept as a band), with
    one `bucket` for every face, chosen so all faces together have at most TIMELINE_BUCKETS points.
    Times are delta-encoded milliseconds, values integers × SCALE."""
    ids, counts = np.unique(pred.face_id, return_counts=True)
    keep = sorted(ids[np.argsort(-counts, kind="stable")][:TIMELINE_FACES].tolist())
    shown = int(counts[np.isin(ids, keep)].sum())
    bucket = max(1, math.ceil(shown / TIMELINE_BUCKETS))
    return {"scale": SCALE, "bucket_frames": bucket, "bucket_s": bucket / fps, "faces_total": len(ids),
            "faces": [_bucketed(pred.rows_of(fid), pred, bucket) for fid in keep]}
