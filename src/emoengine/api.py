"""The Python API: `emoengine.Engine`, the same code path as `emoengine run`, for notebooks and scripts.

    with emoengine.Engine(weights="emonet_8.pth", taps=["conv1", "emo_net_2.0.conv1", "emo_net_2.2.conv3"]) as e:
        out = e.predict(crops)                 # (N,256,256,3) uint8 RGB -> logits, probabilities, ..., every tap
        result = e.analyze("clip.mp4")         # run's files, .predictions (DataFrame), .summary, .taps[name]
        for frame in e.stream(0):              # a camera, a stream or a file, lazily, one frame at a time
            ...

Options are `run`'s: the fields of emoengine.RunSettings, by their Python names, checked by RunSettings itself,
so a bad one is the same one-line `UserInputError` (a ValueError) the CLI exits 2 with. The model and the
detector are opened once per Engine and lent to each run (run_pipeline closes only what it opens), and to your
own code by `parts()`; `close()` (or leaving `with`) closes them.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from emoengine.api_results import Analysis, FrameStream, MainFaceTaps
from emoengine.contract import DEFAULT_TAPS, INPUT_SHAPE
from emoengine.engine.closing import Closing
from emoengine.engine.outputs.activations import Activations
from emoengine.errors import UserInputError
from emoengine.settings import RunSettings

__all__ = ["Activations", "Analysis", "Engine", "FrameStream"]

API_DEFAULTS = {"quiet": True}   # no summary line in a notebook; everything else as `run` has it


def tap_names(taps) -> tuple[str, ...]:
    """Engine's `taps`: module paths as a list, or one comma-separated string (`run --taps`'s form)."""
    from emoengine.export.taps import parse_taps

    names = parse_taps(taps) if isinstance(taps, str) or taps is None else tuple(str(t).strip() for t in taps)
    return tuple(dict.fromkeys(n for n in names if n))


class Engine(Closing):
    """EmoNet and a face detector, opened once, behind `predict`, `analyze` and `stream`.

    `weights` (an EmoNet .pth or 'random') or `model` (an exported .onnx/.engine); `backend` as `run --backend`
    (default: ort, or what `model`'s suffix implies); `detector` mtcnn | scrfd | none; `taps`: EmoNet module paths
    (`emoengine layers`; a list or "a,b"), default conv1 and emo_net_2.0.conv1; `classes`: 5 or 8, checked
    against the weights. An artifact (`model`) must hold the taps named (`export --taps`); with the default
    taps, analyze and stream use its channel means and predict returns the taps it has in full, if any.
    Any other keyword is a field of emoengine.RunSettings (`run`'s options by their Python names: smooth,
    max_faces, face_id, detect_every, min_face, crop, max_batch, max_wait_ms, no_video, no_report,
    save_activations, ...), defaults as in `run` except `quiet` (True: no summary line).
    """

    settings_type = RunSettings   # what Engine(**options) accepts: every field, by its Python name

    def __init__(self, weights: str | None = None, model: str | None = None, backend: str | None = None,
                 detector: str = "mtcnn", taps=None, classes: int | None = None, **options) -> None:
        from emoengine.engine.model.emonet_model import open_emonet
        from emoengine.engine.model.tapset import tap_specs_for_run
        from emoengine.engine.run.driver import open_run_detector

        self.taps = DEFAULT_TAPS if taps is None else tap_names(taps)
        self.settings = self.settings_type.from_options(
            "Engine", **{**API_DEFAULTS, **options}, weights=weights, model=model, backend=backend,
            classes=classes, detector=detector, taps=None if taps is None else ",".join(self.taps))
        cfg = self.settings.resolve("", Path("."))
        self.template = dataclasses.replace(cfg, tap_names=self.taps)
        self._model = self._detector = None
        self.tap_specs: tuple = ()   # the taps' contract.TapSpecs on this model, probed once (run_pipeline's)
        try:
            self._detector = open_run_detector(cfg)
            self._model = open_emonet(**{**cfg.model_args, "taps": self.taps})
            missing = [t for t in self.taps if t not in self._model.taps]
            if missing and taps is not None:   # an artifact exported without them (weights: exported with them)
                raise UserInputError(f"{model} has no tap output {', '.join(missing)}; re-export it with "
                                     f"`emoengine export --taps {','.join(self.taps)}`")
            self.tap_specs = tap_specs_for_run(self.template, self._model)
        except BaseException:
            self.close()
            raise

    # -- what it is --------------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self._require_open().class_names

    @property
    def backend(self) -> str:
        return self._require_open().backend

    def __repr__(self) -> str:
        state = "closed" if self._model is None else self.backend
        return f"Engine({state}, detector={self.template.detector!r}, taps={list(self.taps)})"

    # -- crops --------------------------------------------------------------------------------------------
    def predict(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """EmoNet on (N, 256, 256, 3) uint8 RGB face crops (no detector): `expression` (logits, N×C),
        `probabilities` (softmax, order `class_names`), `valence`, `arousal` (N,), `landmarks` (N, 68, 2) in
        crop pixels, `heatmap` (N, 68, 64, 64), and every tap by its module path, float32 (N, ...) in full."""
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != INPUT_SHAPE or not len(crops):
            raise UserInputError(f"predict takes uint8 RGB crops of shape (N, {', '.join(map(str, INPUT_SHAPE))}) "
                                 f"with N >= 1, not {crops.dtype} {crops.shape}")
        model = self._require_open()
        batch = model.predict(crops, heatmap=True)
        assert batch.heatmap is not None   # predict(heatmap=True) keeps it
        return {"expression": batch.logits, "probabilities": batch.probs, "valence": batch.valence,
                "arousal": batch.arousal, "landmarks": batch.landmarks, "heatmap": batch.heatmap,
                **model.module_taps(batch)}

    # -- videos, images, cameras, streams ------------------------------------------------------------------
    def analyze(self, source, out=None) -> Analysis:
        """Run on `source` (what `run` takes: a video, an image, a folder, a camera index, a stream URL) and
        write `run`'s files into `out` (default: a temporary folder that lives as long as the result; `save()`
        copies them). The result holds `.predictions`, `.summary`, `.taps` and, with save_activations,
        `.activations` (activations.npz's arrays, emoengine.Activations; see Analysis)."""
        from emoengine.engine.outputs.schema import read_summary_if_any
        from emoengine.engine.run.driver import run_pipeline

        holder = None
        if out is None:
            holder = tempfile.TemporaryDirectory(prefix="emoengine-")
            out = holder.name
        out_dir = Path(out)
        collect = MainFaceTaps(self.taps, self.template.face_id)
        try:
            summary = run_pipeline(self.run_config(source, out_dir), *self.parts(), observe=collect,
                                   tap_specs=self.tap_specs)
        except BaseException:
            if holder is not None:
                holder.cleanup()
            raise
        # summary.json as written (its `files` are added at commit, after run_pipeline's own dict was made)
        summary = read_summary_if_any(out_dir) or summary
        return Analysis(out_dir, summary, collect.arrays(), self.taps, holder)

    def stream(self, source) -> FrameStream:
        """A lazy iterator of per-frame results (`StreamFrame`: index, time_s, rgb, faces with box, id,
        probabilities, valence, arousal, landmarks, taps) on `source`, a camera index or stream URL included.
        The pipeline runs in a background thread from the first `next()`; a bounded queue keeps memory flat
        whatever the length; `close()` (or leaving `with`, or dropping the iterator) stops it. No video or
        report is written (predictions.csv grows in a temporary folder, removed at the end)."""
        self._require_open()
        return FrameStream(self, source)

    def run_config(self, source, out_dir: Path, **changes):
        """The RunConfig of one run of this Engine on `source` into `out_dir`; `changes`: RunSettings fields
        (save_activations=False, quiet=True...) or RunConfig's resolved ones (write_video, report)."""
        names = set(self.settings_type.names())
        settings = {k: v for k, v in changes.items() if k in names}
        if settings.get("save_activations") is False:
            settings["full_taps"] = False   # full_taps means nothing without them
        resolved = {k: v for k, v in changes.items() if k not in names}
        return dataclasses.replace(self.template, input=str(source), out_dir=Path(out_dir),
                                   settings=dataclasses.replace(self.settings, **settings), **resolved)

    def parts(self):
        """(model, detector): the Engine's own EmoNet model and face detector, lent to code that drives them
        itself (run_pipeline, `emoengine serve`'s replicas) so nothing is opened twice. Use them while the Engine
        is open and never close them: the Engine's `close()` does. The model's `predict(crops)` takes uint8
        (N, 256, 256, 3) RGB; the detector is None with detector='none'."""
        return self._require_open(), self._detector

    def _require_open(self):
        if self._model is None:
            raise UserInputError("this Engine is closed")
        return self._model

    def close(self) -> None:
        """Close EmoNet's and the detector's sessions (safe to call twice)."""
        for name in ("_model", "_detector"):
            part, _ = getattr(self, name, None), setattr(self, name, None)
            if part is not None:
                part.close()
