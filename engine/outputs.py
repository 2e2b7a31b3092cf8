"""Everything `run` writes into --out, as CONTRACT.md lists it; each file appears only when complete.

`RunOutputs.write(frame_result)` is called once per frame, in order, from the render stage;
`commit(summary)` finishes every writer and renames; `abort()` removes every temporary file.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from emoengine.engine.annotate import annotate_frame
from emoengine.engine.featuremaps import MeanMapAccumulator, feature_map_frame
from emoengine.engine.results import FaceResult, FrameResult
from emoengine.engine.writers import AtomicOutput, VideoWriter, write_json, write_png

FEATURE_VIDEO_SIZE = (256, 256)
TAPS = (("conv1", "conv1_mean"), ("emo_conv1", "emo_conv1_mean"))


class MainFace:
    """Which face the feature-map videos follow: `face_id` if given, else the largest face, kept while it
    stays tracked (sticky, so the video does not flicker between two people of similar size)."""

    def __init__(self, face_id: int | None = None) -> None:
        self.fixed = face_id
        self.current: int | None = None

    def pick(self, faces: list[FaceResult]) -> FaceResult | None:
        by_id = {f.face_id: f for f in faces}
        if self.fixed is not None:
            return by_id.get(self.fixed)
        if self.current not in by_id:
            if not faces:
                return None
            largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            self.current = largest.face_id
        return by_id[self.current]


def csv_header(class_names) -> list[str]:
    return (["frame", "time_s", "face_id", "x1", "y1", "x2", "y2", "det_score", "expression"]
            + [f"p_{c}" for c in class_names] + ["valence", "arousal"])


def csv_row(fr: FrameResult, f: FaceResult) -> list:
    return ([fr.index, f"{fr.time_s:.4f}", f.face_id, *(f"{v:.1f}" for v in f.box), f"{f.det_score:.4f}",
             f.expression] + [f"{p:.5f}" for p in f.probs] + [f"{f.valence:.5f}", f"{f.arousal:.5f}"])


class ActivationsArchive:
    """Per-face feature maps streamed into an .npz (one zip entry per array), so memory stays flat.

    Keys: `f<frame>_id<face>_<tap>`; at commit also `frames`, `face_ids`, `time_s` (one entry per face).
    """

    def __init__(self, path: Path, taps: tuple[str, ...]) -> None:
        self.out = AtomicOutput(path)
        self.zip = zipfile.ZipFile(self.out.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self.taps = taps
        self.index: list[tuple[int, int, float]] = []

    def _put(self, key: str, array: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array))
        self.zip.writestr(f"{key}.npy", buf.getvalue())

    def add(self, fr: FrameResult, face: FaceResult, maps: dict[str, np.ndarray]) -> None:
        for tap in self.taps:
            if maps.get(tap) is not None:
                self._put(f"f{fr.index:06d}_id{face.face_id}_{tap}", maps[tap].astype(np.float16))
        self.index.append((fr.index, face.face_id, fr.time_s))

    def commit(self) -> None:
        idx = np.array(self.index, dtype=np.float64).reshape(-1, 3)
        self._put("frames", idx[:, 0].astype(np.int64))
        self._put("face_ids", idx[:, 1].astype(np.int64))
        self._put("time_s", idx[:, 2])
        self.zip.close()
        self.out.commit()

    def abort(self) -> None:
        try:
            self.zip.close()
        finally:
            self.out.abort()


class RunOutputs:
    """The writers of one run.

    `still=True` for image inputs: `annotated.png` for one image, `annotated/<frame>.png` for a folder,
    staged in a hidden folder and moved into place at commit, like every other file.
    """

    def __init__(self, out_dir: Path, class_names, fps: float, still: bool, write_video: bool = True,
                 taps: bool = True, save_activations: bool = False, full_taps: bool = False,
                 face_id: int | None = None, source_names: bool = False) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.class_names = tuple(class_names)
        self.fps = fps
        self.still = still
        self.write_video = write_video
        self.taps = taps
        self.main = MainFace(face_id)
        self.rows: list[dict] = []   # for the timeline plot (small: a few numbers per face per frame)
        self._csv_out = AtomicOutput(self.dir / "predictions.csv")
        self._csv_file = open(self._csv_out.path, "w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(csv_header(self.class_names))
        self._videos: dict[str, VideoWriter] = {}
        self._still_dir = self.dir / f".annotated.partial-{os.getpid()}"
        self._means = {tap: MeanMapAccumulator() for tap, _ in TAPS} if taps else {}
        self._activations = None
        if save_activations:
            keys = tuple(t for t, _ in TAPS) if full_taps else tuple(m for _, m in TAPS)
            self._activations = ActivationsArchive(self.dir / "activations.npz", keys)
        self._frames_seen = 0

    # -- per frame ------------------------------------------------------------------------------------
    def _video(self, name: str, size: tuple[int, int]) -> VideoWriter:
        if name not in self._videos:
            self._videos[name] = VideoWriter(self.dir / name, self.fps, size)
        return self._videos[name]

    def write(self, fr: FrameResult, full_maps: dict[int, dict[str, np.ndarray]] | None = None) -> None:
        """One frame, in order. `full_maps[face_id]` holds untouched activations when --full-taps."""
        self._frames_seen += 1
        h, w = fr.rgb.shape[:2]
        for f in fr.faces:
            self._csv.writerow(csv_row(fr, f))
            self.rows.append({"frame": fr.index, "time_s": fr.time_s, "face_id": f.face_id,
                              **{f"p_{c}": float(p) for c, p in zip(self.class_names, f.probs)},
                              "valence": f.valence, "arousal": f.arousal})
            if self._activations is not None:
                maps = {"conv1_mean": f.conv1_mean, "emo_conv1_mean": f.emo_conv1_mean,
                        **((full_maps or {}).get(f.face_id, {}))}
                self._activations.add(fr, f, maps)
        main = self.main.pick(fr.faces)
        if self.taps and main is not None:
            for tap, attr in TAPS:
                self._means[tap].add(getattr(main, attr))
        if not self.write_video:
            return
        annotated = annotate_frame(fr, self.class_names)
        if self.still:
            self._still_dir.mkdir(exist_ok=True)
            write_png(self._still_dir / f"{fr.index:06d}.png", annotated)
            return
        self._video("annotated.mp4", (w, h)).write(annotated)
        if self.taps:
            for tap, attr in TAPS:
                fmap = getattr(main, attr) if main is not None else None
                self._video(f"{tap}.mp4", FEATURE_VIDEO_SIZE).write(feature_map_frame(fmap, FEATURE_VIDEO_SIZE))

    # -- at the end -----------------------------------------------------------------------------------
    def commit(self, summary: dict) -> list[Path]:
        """Finish every file; returns what was written."""
        written = []
        self._csv_file.close()
        self._csv_out.commit()
        written.append(self.dir / "predictions.csv")
        for name, video in self._videos.items():
            video.close()
            written.append(self.dir / name)
        if self._still_dir.is_dir():
            written.append(self._commit_stills())
        for tap, acc in (self._means.items() if self.write_video else ()):   # --no-video: CSV + summary
            # black where no frame had a face, so a run always yields the contract's files
            written.append(acc.save_png(self.dir / f"{tap}_mean.png", FEATURE_VIDEO_SIZE))
        if not self.still and self.write_video:
            from emoengine.engine.timeline import plot_timeline

            plot_timeline(self.rows, self.class_names, self.dir / "timeline.png")
            written.append(self.dir / "timeline.png")
        if self._activations is not None:
            self._activations.commit()
            written.append(self.dir / "activations.npz")
        written.append(write_json(self.dir / "summary.json", summary))
        return written

    def _commit_stills(self) -> Path:
        pngs = sorted(self._still_dir.iterdir())
        if self._frames_seen == 1:
            final = self.dir / "annotated.png"
            os.replace(pngs[0], final)
            self._still_dir.rmdir()
        else:
            final = self.dir / "annotated"
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(self._still_dir, final)
        return final

    def abort(self) -> None:
        """Remove every temporary file; nothing appears under a final name."""
        shutil.rmtree(self._still_dir, ignore_errors=True)
        for closer in [self._csv_file.close, self._csv_out.abort,
                       *(v.abort for v in self._videos.values()),
                       *([self._activations.abort] if self._activations else [])]:
            try:
                closer()
            except Exception:  # noqa: BLE001 - best effort cleanup, the first error is already reported
                pass
