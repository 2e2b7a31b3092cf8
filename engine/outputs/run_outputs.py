"""Everything `run` writes into --out, as CONTRACT.md lists it; each file appears only when complete.

`RunOutputs.write(record)` is called once per frame, in order, from the render stage; the videos are drawn and
encoded on their own threads (engine.outputs.encoders); `commit(summary)` finishes every writer and renames;
`abort()` removes every temporary file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from emoengine.contract import TapSpec, default_tap_specs
from emoengine.engine.outputs import encoder_process
from emoengine.engine.outputs.activations import ACTIVATIONS_NAME, ActivationsWriter
from emoengine.engine.outputs.annotate import annotate_frame
from emoengine.engine.outputs.encoder_process import EncoderProcess
from emoengine.engine.outputs.encoders import EncoderThread
from emoengine.engine.outputs.schema import PREDICTIONS_NAME, SUMMARY_NAME, predictions_header
from emoengine.engine.outputs.tap_outputs import TapWriters
from emoengine.engine.outputs.writers import CsvWriter, write_json, write_png
from emoengine.engine.run.records import FaceResult, FrameRecord, StageClock
from emoengine.errors import RunFailure, UserInputError

# every name a run may write (CONTRACT.md plus our additions); files of an earlier run not rewritten are removed,
# and so are the per-tap files its summary.json lists
OUTPUT_NAMES = frozenset({"predictions.csv", "annotated.mp4", "annotated.png", "annotated", "timeline.png",
                          "summary.json", ACTIVATIONS_NAME, "images.csv", "report.html",
                          *(f"{s.stem}{end}" for s in default_tap_specs() for end in (".mp4", "_mean.png"))})


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


class RunOutputs:
    """The writers of one run.

    `still=True` for image inputs: `annotated.png` for one image, `annotated/<frame>.png` for a folder,
    staged in a hidden folder and moved into place at commit, like every other file.
    """

    def __init__(self, out_dir: Path, class_names, fps: float, still: bool, write_video: bool = True,
                 taps: bool | Iterable[TapSpec] = True, save_activations: bool = False, full_taps: bool = False,
                 face_id: int | None = None, frame_files: list[str] | None = None, report: bool = True,
                 tap_view: str = "mean", has_full: Iterable[str] | None = None,
                 video_size: tuple[int, int] | None = None) -> None:
        """`taps`: the run's taps (contract.TapSpec, in order); True: the default taps; False: none. `has_full`:
        the module paths the model outputs in full (activations.npz's per-channel means; default: every tap).
        `video_size`: the input's (w, h), to start the annotated video's encoder process before the first frame."""
        self.dir = Path(out_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserInputError(f"cannot create the output folder {self.dir}: {e.strerror or e}") from None
        self.frame_files = frame_files   # a folder's file names by frame index → images.csv, still names
        self.class_names = tuple(class_names)
        # annotated.mp4's pictures and the still inputs' PNGs: one picklable callable (the encoder process gets it)
        self._annotated_picture = functools.partial(annotate_frame, class_names=self.class_names)
        self.fps = fps
        self.still = still
        self.write_video = write_video
        self.specs = default_tap_specs() if taps is True else tuple(taps or ())
        self.report = report
        self.main = MainFace(face_id)
        self.timeline = TimelineStore(len(self.class_names))
        self._header = predictions_header(self.class_names)
        self._videos: dict[str, EncoderThread | EncoderProcess] = {}
        self._still_dir = self.dir / f".annotated.partial-{os.getpid()}"
        self._activations: ActivationsWriter | None = None
        csv = taps_out = None
        try:   # the first files opened: a read-only or foreign folder is bad usage, found before any frame
            csv = CsvWriter(self.dir / PREDICTIONS_NAME, self._header)
            taps_out = TapWriters(self.dir, self.specs, tap_view, files=write_video, still=still, video=self._video)
            if save_activations:
                full = [s.name for s in self.specs] if has_full is None else has_full
                self._activations = ActivationsWriter(self.dir / ACTIVATIONS_NAME, self.specs, full_taps, full)
        except OSError as e:
            for part in (csv, taps_out, self._activations):
                if part is not None:
                    part.abort()
            raise UserInputError(f"cannot write into the output folder {self.dir}: {e.strerror or e}") from None
        self._csv, self._taps = csv, taps_out
        self._frames_seen = 0
        if video_size and write_video and not still:
            try:
                self._annotated_video(video_size)
            except BaseException:
                self.abort()
                raise

    @property
    def needs_full(self) -> bool:
        """Whether the writers need the taps' untouched tensors (FrameRecord.full_maps), not just FaceResult.taps."""
        return (self._activations is not None and self._activations.full) or self._taps.needs_full

    @property
    def needs_channels(self) -> bool:
        """Whether activations.npz keeps per-channel means (FaceResult.channels)."""
        return self._activations is not None and self._activations.needs_channels

    # -- per frame ------------------------------------------------------------------------------------
    def _video(self, name: str, size: tuple[int, int], picture) -> EncoderThread:
        """The encoder of `name`, started at its first frame; `picture(item)` draws what it encodes."""
        video = self._videos.get(name)
        if not isinstance(video, EncoderThread):
            video = self._videos[name] = EncoderThread(self.dir / name, self.fps, size, picture)
        return video

    def _annotated_video(self, size: tuple[int, int]) -> EncoderThread | EncoderProcess:
        """annotated.mp4's encoder: in a process of its own (its x264 off this process's GIL, issue 20)."""
        name = "annotated.mp4"
        early = self._videos.get(name)
        if isinstance(early, EncoderProcess) and not early.frames_put and early.size != tuple(size):
            early.abort()   # started for the input's size, but its frames have another: restart at theirs
            del self._videos[name]
        if name not in self._videos and encoder_process.ANNOTATED_IN_PROCESS:
            self._videos[name] = EncoderProcess(self.dir / name, self.fps, size, self._annotated_picture)
        return self._videos.get(name) or self._video(name, size, self._annotated_picture)

    def finish_videos(self) -> None:
        """Let the encoders' threads encode what waits for them and close their files (commit renames them)."""
        for video in self._videos.values():
            video.finish()

    def child_usage(self) -> tuple[float, float]:
        """(CPU seconds, peak MiB) of the encoders' child processes together, after finish_videos."""
        children = [v for v in self._videos.values() if isinstance(v, EncoderProcess)]
        return sum(v.child_cpu_s for v in children), sum(v.child_peak_rss_mb for v in children)

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
                self._activations.add(fr, f)
        main = self.main.pick(fr.faces)
        if not self.write_video:
            return
        if self.still:
            self._still_dir.mkdir(exist_ok=True)
            stem = f"_{Path(self.frame_files[fr.index]).stem}" if self.frame_files else ""
            write_png(self._still_dir / f"{fr.index:06d}{stem}.png", self._annotated_picture(fr))
        else:
            self._annotated_video((w, h)).put(fr)
        self._taps.add(fr, main)

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
            for csv in self._taps.csvs.values():
                csv.finish()
                staged.append(csv)
            if self.frame_files:
                images = CsvWriter(self.dir / "images.csv", ["frame", "file"])
                staged.append(images)
                images.writerows({"frame": i, "file": name} for i, name in enumerate(self.frame_files))
                images.finish()
            written += self._taps.write_means()   # none with --no-video (CSV + summary)
            if not self.still and self.write_video:
                from emoengine.engine.outputs.timeline import plot_timeline

                plot_timeline(self.timeline, self.class_names, self.dir / "timeline.png")
                written.append(self.dir / "timeline.png")
            if self._still_dir.is_dir():
                written.append(self._commit_stills())
            for part in staged:
                written.append(part.commit())
            self._remove_stale(written)
            names = [p.name for p in written] + (["report.html"] if self.report else [])
            summary = {**summary, "files": sorted(names) + [SUMMARY_NAME], "taps": self._taps.summary(names)}
            if self.report:   # from the files now in place, as `emoengine report` rebuilds it
                from emoengine.engine.outputs.report import build_report

                written.append(build_report(self.dir, summary))
            written.append(write_json(self.dir / SUMMARY_NAME, summary))
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
        for name in (OUTPUT_NAMES | self._files_of_earlier_run()) - keep:
            stale = self.dir / name
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            elif stale.exists():
                stale.unlink(missing_ok=True)

    def _files_of_earlier_run(self) -> set[str]:
        """What an earlier run's summary.json lists (its per-tap files have names OUTPUT_NAMES cannot know)."""
        try:
            files = json.loads((self.dir / SUMMARY_NAME).read_text()).get("files") or []
        except (OSError, ValueError, AttributeError):
            return set()
        return {n for n in files if isinstance(n, str) and n == os.path.basename(n) and not n.startswith(".")}

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
        for closer in [self._csv.abort, self._taps.abort,
                       *(v.abort for v in self._videos.values()),
                       *([self._activations.abort] if self._activations else [])]:
            with contextlib.suppress(Exception):  # best effort cleanup, the first error is already reported
                closer()
