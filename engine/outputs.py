"""Everything `run` writes into --out, as CONTRACT.md lists it; each file appears only when complete.

`RunOutputs.write(record)` is called once per frame, in order, from the render stage; the videos are drawn and
encoded on their own threads (engine.encoders); `commit(summary)` finishes every writer and renames;
`abort()` removes every temporary file.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from emoengine.engine.annotate import annotate_frame
from emoengine.engine.encoders import EncoderThread
from emoengine.engine.featuremaps import MeanMapAccumulator, feature_map_frame
from emoengine.engine.results import FaceResult, FrameRecord, StageClock
from emoengine.engine.writers import AtomicOutput, CsvWriter, write_json, write_png
from emoengine.errors import RunFailure, UserInputError

FEATURE_VIDEO_SIZE = (256, 256)
# every name a run may write (CONTRACT.md plus our additions); files of an earlier run not rewritten are removed
OUTPUT_NAMES = frozenset({"predictions.csv", "annotated.mp4", "annotated.png", "annotated", "conv1.mp4",
                          "emo_conv1.mp4", "conv1_mean.png", "emo_conv1_mean.png", "timeline.png", "summary.json",
                          "activations.npz", "images.csv", "report.html"})
TAPS = (("conv1", "conv1_mean"), ("emo_conv1", "emo_conv1_mean"))


class MainFace:
    """Which face the feature-map videos follow: `face_id` if given, else the largest face, kept while it
    stays tracked (sticky, so the video does not flicker between two people of similar size)."""

    def __init__(self, face_id: int | None = None) -> None:
        self.fixed = face_id
        self.current: int | None = None
        self.fixed_seen = False

    def pick(self, faces: list[FaceResult]) -> FaceResult | None:
        by_id = {f.face_id: f for f in faces}
        if self.fixed is not None:
            self.fixed_seen |= self.fixed in by_id
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


def csv_row(fr: FrameRecord, f: FaceResult) -> list:
    return ([fr.index, f"{fr.time_s:.4f}", f.face_id, *(f"{v:.1f}" for v in f.box), f"{f.det_score:.4f}",
             f.expression] + [f"{p:.5f}" for p in f.probs] + [f"{f.valence:.5f}", f"{f.arousal:.5f}"])


class TimelineStore:
    """What the timeline needs, per face per frame, as one growing float32 array (4·(C+4) bytes a row),
    so an hour of video with several faces stays a few tens of MB (a dict per row would be ~1 KB)."""

    def __init__(self, num_classes: int) -> None:
        self._data = np.zeros((4096, num_classes + 4), np.float32)   # time_s, face_id, probs…, v, a
        self._n = 0

    def add(self, time_s: float, face_id: int, probs: np.ndarray, valence: float, arousal: float) -> None:
        if self._n == len(self._data):
            self._data = np.concatenate([self._data, np.zeros_like(self._data)])
        row = self._data[self._n]
        row[0], row[1], row[2:-2], row[-2], row[-1] = time_s, face_id, probs, valence, arousal
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def series(self) -> dict[int, dict[str, np.ndarray]]:
        """Per face id: time-sorted t, probs, valence, arousal (what timeline.plot_timeline draws)."""
        data = self._data[: self._n]
        out = {}
        for fid in np.unique(data[:, 1]).astype(int):
            rows = data[data[:, 1] == fid]
            rows = rows[np.argsort(rows[:, 0], kind="stable")]
            out[int(fid)] = {"t": rows[:, 0].astype(np.float64), "probs": rows[:, 2:-2].astype(np.float64),
                             "valence": rows[:, -2].astype(np.float64), "arousal": rows[:, -1].astype(np.float64)}
        return out


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

    def add(self, fr: FrameRecord, face: FaceResult, maps: dict[str, np.ndarray]) -> None:
        for tap in self.taps:
            if maps.get(tap) is not None:
                self._put(f"f{fr.index:06d}_id{face.face_id}_{tap}", maps[tap].astype(np.float16))
        self.index.append((fr.index, face.face_id, fr.time_s))

    def finish(self) -> None:
        """Write the index and close the temporary file (renamed by `commit`)."""
        if self.zip.fp is None:
            return
        idx = np.array(self.index, dtype=np.float64).reshape(-1, 3)
        self._put("frames", idx[:, 0].astype(np.int64))
        self._put("face_ids", idx[:, 1].astype(np.int64))
        self._put("time_s", idx[:, 2])
        self.zip.close()

    def commit(self) -> Path:
        self.finish()
        return self.out.commit()

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
                 face_id: int | None = None, frame_files: list[str] | None = None, report: bool = True) -> None:
        self.dir = Path(out_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserInputError(f"cannot create the output folder {self.dir}: {e.strerror or e}") from None
        self.frame_files = frame_files   # a folder's file names by frame index → images.csv, still names
        self.class_names = tuple(class_names)
        self.fps = fps
        self.still = still
        self.write_video = write_video
        self.taps = taps
        self.report = report
        self.main = MainFace(face_id)
        self.timeline = TimelineStore(len(self.class_names))
        self._header = csv_header(self.class_names)
        self._videos: dict[str, EncoderThread] = {}
        self._still_dir = self.dir / f".annotated.partial-{os.getpid()}"
        self._means = {tap: MeanMapAccumulator() for tap, _ in TAPS} if taps else {}
        self._activations = None
        try:   # the first files opened: a read-only or foreign folder is bad usage, found before any frame
            self._csv = CsvWriter(self.dir / "predictions.csv", self._header)
            if save_activations:
                keys = tuple(t for t, _ in TAPS) if full_taps else tuple(m for _, m in TAPS)
                self._activations = ActivationsArchive(self.dir / "activations.npz", keys)
        except OSError as e:
            if getattr(self, "_csv", None) is not None:
                self._csv.abort()
            raise UserInputError(f"cannot write into the output folder {self.dir}: {e.strerror or e}") from None
        self._frames_seen = 0

    # -- per frame ------------------------------------------------------------------------------------
    def _video(self, name: str, size: tuple[int, int], picture) -> EncoderThread:
        """The encoder of `name`, started at its first frame; `picture(item)` draws what it encodes."""
        if name not in self._videos:
            self._videos[name] = EncoderThread(self.dir / name, self.fps, size, picture)
        return self._videos[name]

    def _annotated_picture(self, fr: FrameRecord) -> np.ndarray:
        return annotate_frame(fr, self.class_names)

    @staticmethod
    def _feature_picture(fmap: np.ndarray | None) -> np.ndarray:
        return feature_map_frame(fmap, FEATURE_VIDEO_SIZE)

    def finish_videos(self) -> None:
        """Let the encoders' threads encode what waits for them and close their files (commit renames them)."""
        for video in self._videos.values():
            video.finish()

    def encoder_clocks(self) -> dict[str, StageClock]:
        """{"encode": the video encoders' threads together} (nothing when no video is written)."""
        if not self._videos:
            return {}
        total = StageClock()
        for video in self._videos.values():
            for key in ("busy_s", "cpu_s", "wait_in_s", "wait_out_s", "items"):
                setattr(total, key, getattr(total, key) + getattr(video.clock, key))
        return {"encode": total}

    def write(self, fr: FrameRecord) -> None:
        """One frame, in order (its `full_maps[face_id]` hold untouched activations when --full-taps)."""
        try:
            self._write(fr)
        except OSError as e:   # a full disk, a quota, a folder removed under us: one line, exit 1
            raise RunFailure(self._write_failed(e)) from None

    def _write_failed(self, e: OSError) -> str:
        return f"cannot write the outputs into {self.dir}: {e.strerror or e}"

    def _write(self, fr: FrameRecord) -> None:
        self._frames_seen += 1
        h, w = fr.rgb.shape[:2]
        for f in fr.faces:
            self._csv.writerow(dict(zip(self._header, csv_row(fr, f), strict=True)))
            if not self.still:
                self.timeline.add(fr.time_s, f.face_id, f.probs, f.valence, f.arousal)
            if self._activations is not None:
                maps = {"conv1_mean": f.conv1_mean, "emo_conv1_mean": f.emo_conv1_mean,
                        **fr.full_maps.get(f.face_id, {})}
                self._activations.add(fr, f, maps)
        main = self.main.pick(fr.faces)
        if self.taps and main is not None:
            for tap, attr in TAPS:
                self._means[tap].add(getattr(main, attr))
        if not self.write_video:
            return
        if self.still:
            self._still_dir.mkdir(exist_ok=True)
            stem = f"_{Path(self.frame_files[fr.index]).stem}" if self.frame_files else ""
            write_png(self._still_dir / f"{fr.index:06d}{stem}.png", self._annotated_picture(fr))
            return
        self._video("annotated.mp4", (w, h), self._annotated_picture).put(fr)
        if self.taps:
            for tap, attr in TAPS:
                fmap = getattr(main, attr) if main is not None else None
                self._video(f"{tap}.mp4", FEATURE_VIDEO_SIZE, self._feature_picture).put(fmap)

    # -- at the end -----------------------------------------------------------------------------------
    def commit(self, summary: dict) -> list[Path]:
        """Finish every file; returns what was written.

        All or nothing: the big streamed files are finished under their temporary names first (where a full
        disk is most likely to show), then the small files are written and everything is renamed, and
        summary.json comes last. If any step fails, every file this commit put in place is removed again,
        so a failed run leaves no contract file of its own behind.
        """
        written: list[Path] = []
        staged: list = [self._csv]   # finished under temporary names, renamed together
        try:
            self._csv.finish()
            for video in self._videos.values():
                if video.finish():
                    staged.append(video)
            if self._activations is not None:
                self._activations.finish()
                staged.append(self._activations)
            if self.frame_files:
                images = CsvWriter(self.dir / "images.csv", ["frame", "file"])
                staged.append(images)
                images.writerows({"frame": i, "file": name} for i, name in enumerate(self.frame_files))
                images.finish()
            for tap, acc in (self._means.items() if self.write_video else ()):   # --no-video: CSV + summary
                # black where no frame had a face, so a run always yields the contract's files
                written.append(acc.save_png(self.dir / f"{tap}_mean.png", FEATURE_VIDEO_SIZE))
            if not self.still and self.write_video:
                from emoengine.engine.timeline import plot_timeline

                plot_timeline(self.timeline, self.class_names, self.dir / "timeline.png")
                written.append(self.dir / "timeline.png")
            if self._still_dir.is_dir():
                written.append(self._commit_stills())
            for part in staged:
                written.append(part.commit())
            self._remove_stale(written)
            names = [p.name for p in written] + (["report.html"] if self.report else [])
            summary = {**summary, "files": sorted(names) + ["summary.json"]}
            if self.report:   # from the files now in place, as `emoengine report` rebuilds it
                from emoengine.engine.report import build_report

                written.append(build_report(self.dir, summary))
            written.append(write_json(self.dir / "summary.json", summary))
        except BaseException as e:
            for path in written:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            for part in staged:
                part.abort()
            self.abort()
            if isinstance(e, OSError):
                raise RunFailure(self._write_failed(e)) from None
            raise
        return written

    def _remove_stale(self, written: list[Path]) -> None:
        """A second run into the same --out must not leave the first run's files beside its own."""
        keep = {p.name for p in written}
        for name in OUTPUT_NAMES - keep:
            stale = self.dir / name
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            elif stale.exists():
                stale.unlink(missing_ok=True)

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
        for closer in [self._csv.abort,
                       *(v.abort for v in self._videos.values()),
                       *([self._activations.abort] if self._activations else [])]:
            with contextlib.suppress(Exception):  # best effort cleanup, the first error is already reported
                closer()
