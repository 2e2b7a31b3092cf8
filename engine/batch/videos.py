"""`emoengine batch` without Ray: what the work items are, the worker that runs `run` on each, resume, aggregation.

The Ray driver (engine/batch/ray_driver.py) hands `VideoWorker` one video at a time; everything here runs (and is
tested) in a plain process too.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoengine.engine.outputs.schema import (
    BATCH_SUMMARY,
    INT_COLUMNS,
    PREDICTIONS_NAME,
    PREDICTIONS_PARQUET,
    STR_COLUMNS,
    read_batch_summary,
    read_predictions_header,
)
from emoengine.errors import EmoengineError, UserInputError, first_line
from emoengine.log import install_stderr_handler
from emoengine.paths import model_file

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts",
                            ".wmv", ".flv", ".3gp"})
__all__ = ["BATCH_SUMMARY", "PREDICTIONS_PARQUET", "BatchItem", "VideoWorker", "list_inputs"]


@dataclass(frozen=True)
class BatchItem:
    path: str      # absolute path of the video
    name: str      # its folder under --out

    def stat_key(self) -> list[int]:
        """(size, mtime_ns): an input failure is remembered only while the file stays the same."""
        st = os.stat(self.path)
        return [st.st_size, st.st_mtime_ns]


def _expand(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        return [Path(p) for p in sorted(glob.glob(os.path.expanduser(spec), recursive=True)) if Path(p).is_file()]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not path.is_file():
        raise UserInputError(f"no such file, folder or matching glob: {spec}")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return [path]
    # a text file of paths, one a line (blank lines and # comments skipped; relative to the list's folder)
    try:
        lines = path.read_text().splitlines()
    except (UnicodeDecodeError, OSError) as e:
        raise UserInputError(f"{spec} is neither a video (by its suffix) nor a text file of paths: {e}") from None
    found = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            found.append(p if p.is_absolute() else path.parent / p)
    return found


def list_inputs(specs: list[str]) -> list[BatchItem]:
    """Videos named by INPUTS (folders, globs, text files of paths, video files), each once, in order.

    Each video's folder is its file stem (a symlink's own name, not its target's); stems that collide get a
    short hash of the full path appended. A file reached twice (e.g. through a link) is one video.
    """
    paths: list[Path] = []
    seen = set()
    for spec in specs:
        for p in _expand(spec):
            real = p.resolve()
            if real not in seen:
                seen.add(real)
                paths.append(p.absolute())
    if not paths:
        raise UserInputError(f"no videos found in {' '.join(specs)}")
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    return [BatchItem(str(p), p.stem if stems[p.stem] == 1
                      else f"{p.stem}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}") for p in paths]


def remove_partials(video_dir: Path) -> None:
    """Temporaries of a worker that died mid-video (`.<name>.partial-…`): a retry writes its own."""
    if not video_dir.is_dir():
        return
    for p in video_dir.iterdir():
        if p.name.startswith(".") and ".partial-" in p.name:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def prepare_model(model_args: dict) -> None:
    """Make the model's artifact once, here (the cached ONNX, the int8 model, the engine: whatever its backend's
    row prepares), so that local workers all find it instead of each making it. A missing model file is refused
    first, before a local Ray starts for it."""
    from emoengine.engine.backends import backend_row, request_for

    request = request_for(**model_args)
    if request.model is not None:
        model_file(request.model)
    backend_row(request.backend.name).prepare(request)


def video_row(item: BatchItem, status: str, **fields) -> dict:
    """One video's line in batch_summary.json, with every key batch_summary and previous_failures read."""
    return {"video": item.name, "input": item.path, "status": status, "reason": "", "kind": "", "exit_code": 0,
            "wall_s": 0.0, "frames": 0, "faces": 0, **fields}


class VideoWorker:
    """One batch worker (a Ray actor): opens the detector and EmoNet once, then runs `run`'s pipeline on each
    video it is handed, writing `out_dir/<name>/` exactly as `emoengine run` would.

    A video that fails for its own reasons comes back as a row with status "failed" and a one-line reason;
    only a dying process (which Ray retries) escapes.
    """

    def __init__(self, template, model_args: dict, out_dir: str, threads: int | None = None) -> None:
        from emoengine.engine.model.emonet_model import open_emonet
        from emoengine.engine.run.driver import open_run_detector

        install_stderr_handler()   # a Ray actor is a process of its own: its lines read like the command's
        self.template = template
        self.out_dir = Path(out_dir)
        self.setup_error: tuple[str, int] | None = None
        self.detector = self.model = None
        try:
            self.detector = open_run_detector(template)
            self.model = open_emonet(**model_args, threads=threads)
            if self.model.is_random and template.warn_random:
                log.warning("WARNING: random EmoNet weights — predictions are meaningless")
        except EmoengineError as e:   # every item reports it: one line per video, not a dead actor pool
            self.setup_error = (first_line(e), e.exit_code)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.process(BatchItem(str(path), str(name)))
                for path, name in zip(batch["path"], batch["name"], strict=True)]
        return {key: np.array([r[key] for r in rows], dtype=object) for key in rows[0]}

    def process(self, item: BatchItem) -> dict:
        from emoengine.engine.run.driver import run_pipeline

        row = video_row(item, "failed")
        if self.setup_error is not None:
            row.update(reason=self.setup_error[0], kind="setup", exit_code=self.setup_error[1])
            return row
        assert self.model is not None   # opened, or setup_error says why not
        video_dir = self.out_dir / item.name
        remove_partials(video_dir)
        cfg = dataclasses.replace(self.template, input=item.path, out_dir=video_dir, warn_random=False)
        t0 = time.perf_counter()
        try:
            summary = run_pipeline(cfg, self.model, self.detector)   # lent: the worker reuses them
        except EmoengineError as e:
            row.update(reason=first_line(e), kind="input" if e.exit_code == 2 else "run", exit_code=e.exit_code)
        except Exception as e:  # noqa: BLE001  one video's bug must not stop the batch; the reason is kept
            row.update(reason=f"{type(e).__name__}: {first_line(e)}", kind="run", exit_code=1)
        else:
            row.update(status="done", frames=int(summary["frames"]), faces=int(summary["faces"]))
        row["wall_s"] = round(time.perf_counter() - t0, 4)
        return row

    def __del__(self) -> None:
        for part in (self.model, self.detector):
            try:
                if part is not None:
                    part.close()
            except Exception:  # noqa: BLE001  interpreter shutdown: nothing left to tell
                pass


# -- aggregation --------------------------------------------------------------------------------------------
def read_predictions(csv_path: Path, video: str):
    """One video's predictions.csv as an Arrow table with a leading `video` column (typed even when empty);
    a damaged one is a UserInputError naming it (engine.outputs.schema)."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    header = read_predictions_header(csv_path)
    types = {c: pa.int64() if c in INT_COLUMNS else pa.string() if c in STR_COLUMNS else pa.float64()
             for c in header}
    try:
        table = pacsv.read_csv(csv_path, convert_options=pacsv.ConvertOptions(column_types=types))
    except pa.ArrowInvalid as e:
        raise UserInputError(f"{csv_path} is damaged: {first_line(e)}") from None
    return table.add_column(0, "video", pa.array([video] * table.num_rows, pa.string()))


def write_predictions_parquet(out_dir: Path, videos: list[str]) -> Path:
    """DIR/predictions.parquet: every row of every listed video's predictions.csv, plus `video`; atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from emoengine.engine.outputs.writers import AtomicOutput

    tables = [read_predictions(out_dir / v / PREDICTIONS_NAME, v) for v in videos]
    table = (pa.concat_tables(tables, promote_options="permissive") if tables
             else pa.table({"video": pa.array([], pa.string())}))
    with AtomicOutput(out_dir / PREDICTIONS_PARQUET) as out:
        pq.write_table(table, out.path)
    return out.final_path


def previous_failures(out_dir: Path) -> dict[str, dict]:
    """Input failures (exit-2 kind: corrupt, not a video) of the last batch into `out_dir`, by video name."""
    summary = read_batch_summary(out_dir, missing_ok=True) or {}
    return {v["video"]: v for v in summary.get("videos", []) if v.get("status") == "failed"
            and v.get("kind") == "input"}


def batch_summary(rows: list[dict], wall_s: float, ray_info: dict) -> dict:
    """batch_summary.json: counts, this invocation's throughput, and one record per video."""
    done = [r for r in rows if r["status"] == "done"]
    faces = sum(r["faces"] for r in done)
    frames = sum(r["frames"] for r in done)
    wall = max(wall_s, 1e-9)
    return {
        "videos": rows,
        "inputs": len(rows),
        "done": len(done),
        "skipped": sum(r["status"] == "skipped" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "wall_s": round(wall_s, 3),
        "frames": frames,
        "faces": faces,
        "faces_per_s": round(faces / wall, 3) if done else 0.0,
        "videos_per_min": round(60 * len(done) / wall, 3) if done else 0.0,
        "ray": ray_info,
    }
