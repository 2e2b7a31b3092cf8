"""What `emoengine.Engine` hands back: an `Analysis` of a whole input, and a `FrameStream` of per-frame results.

Both are fed by `run_pipeline(..., observe=)`: the assembled record of every frame, in order, the same records
the writers get, so the Python results and `run`'s files cannot disagree.
"""

from __future__ import annotations

import base64
import contextlib
import html
import queue
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emoengine.errors import EmoengineError

STREAM_QUEUE = 4          # per-frame results a stream holds for a slow consumer (the pipeline's queues behind it)
STREAM_CLOSE_S = 30.0     # how long close() waits for the pipeline to end (a stalled camera: until its next frame)
_POLL_S = 0.05


def face_taps(face, names) -> dict[str, np.ndarray]:
    """One face's tap maps by module path, for the `names` asked: `FaceResult.taps` (a channel-mean map per map
    tap, the vector of a vector tap), where the run has them."""
    return {n: np.asarray(face.taps[n], np.float32) for n in names if face.taps.get(n) is not None}


class MainFaceTaps:
    """An observer that keeps, per frame, the main face's tap maps: the face the feature-map videos follow
    (engine.outputs.run_outputs.MainFace with the run's face_id, picked from the same records in the same order)."""

    def __init__(self, names, face_id: int | None) -> None:
        from emoengine.engine.outputs.run_outputs import MainFace

        self.names = tuple(names)
        self.main = MainFace(face_id)
        self.frames: list[dict[str, np.ndarray]] = []

    def __call__(self, record) -> None:
        face = self.main.pick(record.faces)
        self.frames.append({} if face is None else {k: v.copy() for k, v in face_taps(face, self.names).items()})

    def arrays(self) -> dict[str, np.ndarray]:
        """name -> (frames, ...) float32, NaN in frames without a main face; a tap no frame had is left out."""
        out = {}
        for name in self.names:
            shape = next((f[name].shape for f in self.frames if name in f), None)
            if shape is None:
                continue
            stack = np.full((len(self.frames), *shape), np.nan, np.float32)
            for i, frame in enumerate(self.frames):
                if name in frame:
                    stack[i] = frame[name]
            out[name] = stack
        return out


class Analysis:
    """`Engine.analyze`'s result.

    `dir`: where the run's files are (a temporary folder unless `out=` was given); `summary`: summary.json's
    content; `predictions`: predictions.csv as a pandas DataFrame (read from the file: its columns and values);
    `taps[name]`: the main face's channel-mean map (a vector for a vector tap) per frame, float32
    (frames, H, W), NaN where the frame had no face; a tap no frame had is absent; `activations`: with
    save_activations, activations.npz's arrays (emoengine.Activations: every face, predictions.csv's rows), else
    None. `save(dir)` copies the files.
    """

    def __init__(self, out_dir: Path, summary: dict, taps: dict[str, np.ndarray], names, holder=None) -> None:
        self.dir = Path(out_dir)
        self.summary = summary
        self.taps = taps
        self.tap_names = tuple(names)
        self._holder = holder   # the TemporaryDirectory, removed with this result
        self._predictions = None
        self._activations = None

    @property
    def activations(self):
        """activations.npz read back (emoengine.Activations), None where the run saved none."""
        from emoengine.engine.outputs.activations import ACTIVATIONS_NAME, Activations

        path = self.dir / ACTIVATIONS_NAME
        if self._activations is None and ACTIVATIONS_NAME in self.files and path.is_file():
            self._activations = Activations(path, self.summary.get("taps", []))
        return self._activations

    @property
    def predictions(self):
        if self._predictions is None:
            try:
                import pandas as pd
            except ImportError as e:   # not one of emoengine's dependencies: the CSV needs none
                raise ImportError(f"Analysis.predictions is a pandas DataFrame: pip install pandas (or read "
                                  f"{self.dir / 'predictions.csv'})") from e

            self._predictions = pd.read_csv(self.dir / "predictions.csv")
        return self._predictions

    @property
    def files(self) -> list[str]:
        return list(self.summary.get("files", []))

    def save(self, out_dir) -> Path:
        """Copy the run's files (summary.json's `files`) into `out_dir`; returns it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in self.files:
            src = self.dir / name
            if src.is_dir():
                shutil.copytree(src, out / name, dirs_exist_ok=True)
            elif src.is_file() and src.resolve() != (out / name).resolve():
                shutil.copy2(src, out / name)
        return out

    def mean_pngs(self) -> dict[str, bytes]:
        """Tap name -> its mean-map PNG: the run's `<stem>_mean.png` (summary `taps`, else the default names
        among `files`), else drawn from `taps` (a --no-video run writes none)."""
        from emoengine.contract import tap_file_stem

        listed = {t["name"]: t.get("mean") for t in self.summary.get("taps", [])} or {
            name: f"{tap_file_stem(name)}_mean.png" for name in self.tap_names}
        pngs = {}
        for name, png in listed.items():
            if png and png in self.files and (self.dir / png).is_file():
                pngs[name] = (self.dir / png).read_bytes()
            elif self.taps.get(name) is not None and self.taps[name].ndim == 3:
                pngs[name] = _mean_png(self.taps[name])
        return pngs

    def _repr_html_(self) -> str:
        s = self.summary
        head = (f"<p><b>emoengine</b> {html.escape(str(s.get('input', '')))}: {s.get('frames', 0)} frames, "
                f"{s.get('faces', 0)} faces, {s.get('backend', '')}</p>")
        maps = "".join(
            f'<figure style="display:inline-block;margin:4px"><img src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}" width="160"><figcaption>{html.escape(name)} (mean)</figcaption>'
            "</figure>" for name, png in self.mean_pngs().items())
        return head + self.predictions.head(10).to_html() + f"<div>{maps}</div>"

    def __repr__(self) -> str:
        return f"Analysis({self.summary.get('input')!r}, frames={self.summary.get('frames')}, dir={str(self.dir)!r})"


def _mean_png(maps: np.ndarray) -> bytes:
    """The mean over frames of a (frames, H, W) stack, drawn as the run draws its mean maps."""
    import cv2

    from emoengine.engine.outputs.featuremaps import feature_map_frame
    from emoengine.engine.outputs.tap_outputs import FEATURE_VIDEO_SIZE

    seen = maps[~np.isnan(maps).all(axis=(1, 2))]
    rgb = feature_map_frame(seen.mean(axis=0) if len(seen) else None, FEATURE_VIDEO_SIZE)
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@dataclass
class StreamFace:
    """One face in one streamed frame, in frame pixels: box x1 y1 x2 y2, track id, detector score, argmax
    expression, softmax probabilities (Engine.class_names' order), valence, arousal, 68 landmarks, tap maps."""

    box: np.ndarray
    id: int
    score: float
    expression: str
    probabilities: np.ndarray
    valence: float
    arousal: float
    landmarks: np.ndarray
    taps: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class StreamFrame:
    index: int
    time_s: float
    rgb: np.ndarray               # (H, W, 3) uint8, the decoded frame
    faces: list[StreamFace]


def stream_frame(record, names) -> StreamFrame:
    faces = [StreamFace(box=f.box, id=f.face_id, score=f.det_score, expression=f.expression,
                        probabilities=f.probs, valence=f.valence, arousal=f.arousal, landmarks=f.landmarks68,
                        taps=face_taps(f, names)) for f in record.faces]
    return StreamFrame(record.index, record.time_s, record.rgb, faces)


class StreamClosed(EmoengineError):
    """Raised in the pipeline's render stage once the consumer has closed the stream: it ends the run."""


@dataclass
class _End:
    summary: dict | None = None
    error: BaseException | None = None


class _Channel:
    """The queue between the pipeline's render stage and the consumer, and the consumer's "closed" flag. The
    pipeline thread holds only this (not the FrameStream), so a dropped stream is collected and closes itself."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue(STREAM_QUEUE)
        self.closing = threading.Event()

    def put(self, item, final: bool = False) -> None:
        """Wait for room; once the consumer has closed, an item is dropped and (but for the last) ends the run."""
        while not self.closing.is_set():
            try:
                self.queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue
        if not final:
            raise StreamClosed("the stream was closed")


def _pump(channel: _Channel, cfg, loans, names, specs) -> None:
    """The stream's background thread: the run, each frame into the channel, then its end (summary or error)."""
    from emoengine.engine.run.driver import run_pipeline

    end = _End()
    try:
        end.summary = run_pipeline(cfg, *loans, observe=lambda record: channel.put(stream_frame(record, names)),
                                   tap_specs=specs)
    except StreamClosed:
        pass
    except BaseException as e:  # noqa: BLE001  handed to the consumer's thread
        end.error = e
    channel.put(end, final=True)


class FrameStream:
    """Engine.stream's iterator: `run_pipeline` in a background thread from the first `next()`, each frame's
    result handed over through a queue of STREAM_QUEUE, so a slow consumer holds the whole pipeline back
    (bounded memory) and the first result comes as soon as the first frame is through. `summary` is set once
    the input has ended. `close()` stops the pipeline (its threads end) and removes the temporary folder."""

    def __init__(self, engine, source) -> None:
        self.engine, self.source = engine, source
        self.summary: dict | None = None
        self._channel = _Channel()
        self._thread: threading.Thread | None = None
        self._done = False
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __iter__(self) -> FrameStream:
        return self

    def __next__(self) -> StreamFrame:
        if self._done:
            raise StopIteration
        if self._thread is None:
            self._start()
        try:
            item = self._channel.queue.get()
        except BaseException:   # Ctrl-C while waiting (a notebook's interrupt): stop the pipeline too
            self.close()
            raise
        if isinstance(item, _End):
            self._done, self.summary = True, item.summary
            self.close()
            if item.error is not None:
                raise item.error
            raise StopIteration
        return item

    def _start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="emoengine-stream-")
        cfg = self.engine.run_config(self.source, Path(self._tmp.name), write_video=False, report=False,
                                     save_activations=False, resume=False, quiet=True)
        args = (self._channel, cfg, self.engine.parts(), self.engine.taps, self.engine.tap_specs)
        self._thread = threading.Thread(target=_pump, args=args, name="emoengine-stream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the pipeline and wait for its threads (at most STREAM_CLOSE_S); safe to call twice."""
        self._channel.closing.set()
        self._done = True
        if self._thread is not None:
            self._thread.join(STREAM_CLOSE_S)
        if self._tmp is not None and not (self._thread is not None and self._thread.is_alive()):
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):   # at interpreter exit, or after a failed __init__
            self.close()
