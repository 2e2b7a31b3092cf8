"""The files a run writes per tap (activations.npz: engine.outputs.activations).

Per map tap (engine.model.tapset): `<stem>.mp4`, the main face's map, one frame per input frame (black without a face),
and `<stem>_mean.png`, the mean over the frames that had one. `--tap-view mean` shows the channel mean (256 x 256,
as `conv1.mp4` always did); `grid` the first channels as tiles (engine.outputs.featuremaps.grid_size). Per vector tap:
`<stem>.csv`, one row per face and frame (frame, time_s, face_id as in predictions.csv, then f0 … f<F-1>), for
every face. Only what the writers need is kept: running sums for the means, never a frame's tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emoengine.contract import TapSpec
from emoengine.engine.outputs.featuremaps import (
    GRID_MAX_TILES,
    MeanMapAccumulator,
    feature_map_frame,
    grid_frame,
    grid_size,
)
from emoengine.engine.outputs.writers import CsvWriter, write_png
from emoengine.engine.run.records import FaceResult, FrameRecord

if TYPE_CHECKING:
    from emoengine.engine.outputs.encoders import EncoderThread

FEATURE_VIDEO_SIZE = (256, 256)   # --tap-view mean: the video and the mean PNG
VECTOR_FORMAT = "{:.6g}"


def vector_header(spec: TapSpec) -> list[str]:
    return ["frame", "time_s", "face_id", *(f"f{i}" for i in range(spec.size))]


class TapWriters:
    """The per-tap files of one run. `video(name, size, picture)` hands out the run's encoder of `name` (so the
    run finishes, commits and aborts it with its other videos); `files=False` (--no-video) writes none."""

    def __init__(self, out_dir: Path, specs, view: str, files: bool, still: bool,
                 video: Callable[[str, tuple[int, int], Callable], EncoderThread]) -> None:
        self.dir = Path(out_dir)
        self.specs = tuple(specs) if files else ()
        self.grid = view == "grid"
        self.still = still
        self._video = video
        self.maps = [s for s in self.specs if s.kind == "map"]
        self._means = {s.name: MeanMapAccumulator() for s in self.maps}
        self.csvs: dict[str, CsvWriter] = {}
        try:
            for s in self.specs:
                if s.kind == "vector":
                    self.csvs[s.name] = CsvWriter(self.dir / f"{s.stem}.csv", vector_header(s))
        except BaseException:
            self.abort()
            raise

    @property
    def needs_full(self) -> bool:
        """Grid pictures need the main face's tensors, not only its channel means."""
        return self.grid and bool(self.maps)

    def add(self, fr: FrameRecord, main: FaceResult | None) -> None:
        """One frame: every face's vector taps, the main face's maps (None: no face, a black video frame)."""
        for name, csv in self.csvs.items():
            for f in fr.faces:
                values = f.taps[name]
                row = [fr.index, f"{fr.time_s:.4f}", f.face_id, *(VECTOR_FORMAT.format(v) for v in values.tolist())]
                csv.writerow(dict(zip(csv.fieldnames, row, strict=True)))
        for spec in self.maps:
            shown = self._shown(fr, main, spec)
            self._means[spec.name].add(shown)
            if not self.still:
                self._video(f"{spec.stem}.mp4", self._size(spec), self._picture(spec)).put(shown)

    def _shown(self, fr: FrameRecord, main: FaceResult | None, spec: TapSpec) -> np.ndarray | None:
        if main is None:
            return None
        if not self.grid:
            return main.taps[spec.name]
        full = fr.full_maps[main.face_id][spec.name]
        return np.array(full[:GRID_MAX_TILES] if full.ndim == 3 else full, np.float32)   # a copy: not the batch

    def _size(self, spec: TapSpec) -> tuple[int, int]:
        return grid_size(_channels(spec)) if self.grid else FEATURE_VIDEO_SIZE

    def _picture(self, spec: TapSpec) -> Callable:
        if self.grid:
            channels = _channels(spec)
            return lambda tensor: grid_frame(tensor, channels)
        return lambda fmap: feature_map_frame(fmap, FEATURE_VIDEO_SIZE)

    def write_means(self) -> list[Path]:
        """Each map tap's mean PNG, black where no frame had a face (a run always yields its files)."""
        return [write_png(self.dir / f"{spec.stem}_mean.png", self._picture(spec)(self._means[spec.name].mean()))
                for spec in self.maps]

    def summary(self, written_names) -> list[dict]:
        """summary.json's `taps`: one entry per tap the run wrote, in order (team.md's agreed interface)."""
        names = set(written_names)

        def present(name: str) -> str | None:
            return name if name in names else None

        return [{"name": s.name, "stem": s.stem, "kind": s.kind,
                 "video": present(f"{s.stem}.mp4") if s.kind == "map" else None,
                 "mean": present(f"{s.stem}_mean.png") if s.kind == "map" else None} for s in self.specs]

    def abort(self) -> None:
        for csv in self.csvs.values():
            csv.abort()


def _channels(spec: TapSpec) -> int:
    return spec.shape[0] if len(spec.shape) == 3 else 1
