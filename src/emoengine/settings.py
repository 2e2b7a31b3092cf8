"""`emoengine.RunSettings`: every option of a run, owned by the library, as data.

Each field carries its help, its range (min/max) and its choices; `RunSettings(...)` checks them (one
UserInputError line naming the option by its Python name) and `resolve(input, out_dir)` fills in the defaults that
depend on others (the batch size by the backend's device, the crop by the detector, the taps) once. `emoengine
run` and `batch` generate their options from these fields (cli/options.py), `Engine(**options)` takes them by
name, `demo` builds one, and `run --resume`'s fingerprint is made of the fields marked `fingerprint`. Adding an
option is one field here (and the code that uses it, reading `cfg.<name>` from the run's RunConfig).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from emoengine.engine.backends import BACKENDS, DEFAULT_BACKEND, backend_for_artifact
from emoengine.engine.model.crops import CROP_MODES
from emoengine.engine.model.tapset import TAP_VIEWS
from emoengine.engine.tracking.detectors import (
    DEFAULT_DETECT_EVERY,
    DEFAULT_DETECTOR,
    DEFAULT_MIN_FACE,
    DETECTOR_NAMES,
)
from emoengine.errors import UserInputError

__all__ = ["RunSettings", "flag", "option", "speak_flags"]


def flag(name: str) -> str:
    """An option's command-line flag, from its Python name: the one place the two spellings meet."""
    return "--" + name.replace("_", "-")


def speak_flags(text: str, names) -> str:
    """`text` with each Python option name in `names` written as its flag (`min_face` -> `--min-face`) where it
    stands as a word of its own (not inside `emoengine export --taps` or `detector_model`): how the CLI shows a
    library message (a UserInputError's `options`, a log record's)."""
    for name in names:
        text = re.sub(rf"(?<![\w.\-`]){re.escape(name)}(?![\w\-`])", flag(name), text)
    return text


def option(default, help: str, *, min=None, max=None, choices=None, short: str | None = None,
           negatable: bool = False, fingerprint: bool = True, batch: bool = True, casefold: bool = False):
    """A RunSettings field. `casefold`: a choice matches whatever its case and spaces; `negatable`: a switch with a --no- form (`--full-taps/--no-full-taps`); `fingerprint`:
    part of what `--resume` compares (an option that changes what a run writes); `batch`: `batch` has it too."""
    return field(default=default, metadata=dict(help=help, min=min, max=max, choices=choices, short=short,
                                                negatable=negatable, fingerprint=fingerprint, batch=batch,
                                                casefold=casefold))


@dataclass(frozen=True)
class RunSettings:
    """The options of one run by their Python names (the CLI's flags are `flag(name)`); see each field's help."""

    weights: str | None = option(None, "EmoNet checkpoint (.pth) or 'random'.", fingerprint=False)
    model: str | None = option(None, "Exported artifact (.onnx, .engine) instead of weights.", fingerprint=False)
    backend: str | None = option(None, f"{' | '.join(BACKENDS)} (default: from the model's suffix, else "
                                       f"{DEFAULT_BACKEND}); options as in torch-cuda:fp16+compile (see "
                                       "`emoengine info`).", fingerprint=False)
    classes: int | None = option(None, "5 or 8; checked against the checkpoint.", choices=(5, 8), fingerprint=False)
    detector: str = option(DEFAULT_DETECTOR, "mtcnn | scrfd | none (whole image is the face).",
                           choices=DETECTOR_NAMES, casefold=True)
    detector_model: str | None = option(None, "SCRFD .onnx (default: insightface's model folder).")
    crop: str | None = option(None, "square (margin around the face) | upstream (plain box); default square, "
                                    "upstream with detector none.", choices=CROP_MODES)
    max_batch: int | None = option(None, "Faces per inference call (default: 1 on a CPU, 32 on a GPU).", min=1,
                                   fingerprint=False)
    max_wait_ms: float = option(40.0, "How long a partial batch waits for more faces.", min=0, fingerprint=False)
    max_faces: int | None = option(None, "Keep the largest K faces per frame.", min=1)
    smooth: float = option(0.0, "Temporal smoothing α per face (0 = off).", min=0.0, max=0.99)
    face_id: int | None = option(None, "Face the feature-map videos follow (default: largest).")
    no_video: bool = option(False, "Write only predictions.csv and summary.json.")
    taps: str | None = option(None, "EmoNet modules to show, comma-separated (`emoengine layers` lists them; "
                                    "default conv1,emo_net_2.0.conv1): a video and a mean map per map, a CSV per "
                                    "vector.")
    no_taps: bool = option(False, "No feature-map files.")
    tap_view: str = option("mean", "mean (channel mean) | grid (the first 64 channels as tiles).", choices=TAP_VIEWS)
    save_activations: bool = option(False, "Every face's taps to activations.npz: one array per tap over "
                                            "predictions.csv's rows, per-channel means included.", negatable=True)
    full_taps: bool = option(False, "With save_activations: the untouched activations.", negatable=True)
    no_implicit_export: bool = option(False, "Refuse a run whose model must first be exported, converted, "
                                             "quantised or built (exit 2, naming the `emoengine export` command "
                                             "to run) instead of making it once and caching it.",
                                      fingerprint=False)
    no_report: bool = option(False, "No report.html (see `emoengine report`).", fingerprint=False)
    quiet: bool = option(False, "No progress bar and no summary line.", short="-q", fingerprint=False, batch=False)
    resume: bool = option(False, "Skip when out already holds the complete outputs of this input with these "
                                 "settings.", fingerprint=False, batch=False)
    detect_every: int = option(DEFAULT_DETECT_EVERY, "Run the detector on every N-th frame and carry faces by "
                                                     "optical flow between (1: every frame).", min=1)
    min_face: float = option(DEFAULT_MIN_FACE, "Smallest face to find, in frame pixels (mtcnn finds none under "
                                               "12).")
    workers: int | None = option(None, "Threads that detect and track side by side, a segment of detect_every "
                                       "frames each (default: the cores this process may use).", min=1,
                                 fingerprint=False, batch=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name))
        if self.full_taps and not self.save_activations:
            raise UserInputError("full_taps only makes sense with save_activations",
                                 options=("full_taps", "save_activations"))
        if self.weights is None and self.model is None:
            raise UserInputError("give weights (an EmoNet .pth, or 'random') or model (an exported artifact)",
                                 options=("weights", "model"))

    # -- what callers ask of the fields ------------------------------------------------------------------------
    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_options(cls, who: str = "RunSettings", **options) -> RunSettings:
        """`cls(**options)`, where an unknown name is a UserInputError listing the known ones, not a TypeError."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise UserInputError(f"unknown {who} option(s) {', '.join(unknown)} (run's options: "
                                 f"{', '.join(cls.names())})")
        return cls(**options)

    def fingerprint(self) -> dict:
        """What `--resume` compares: the fields marked `fingerprint`, as given (the resolved values that stand
        for the others, model identity, backend and taps, are added by engine.run.resume)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("fingerprint")}

    # -- resolution -----------------------------------------------------------------------------------------
    def resolved_backend(self) -> str:
        """The backend asked for, else the one the artifact's suffix implies, else the default (ort)."""
        if self.backend is not None:
            return self.backend
        return backend_for_artifact(self.model) if self.model else DEFAULT_BACKEND

    def resolve(self, input, out_dir):
        """The RunConfig of these settings on `input` into `out_dir`: every default that depends on another
        option worked out here, once (taps checked: against EmoNet's modules from weights, or later against
        the artifact)."""
        from emoengine.engine.model.tapset import run_tap_names
        from emoengine.engine.run.driver import RunConfig, default_max_batch

        backend = self.resolved_backend()
        return RunConfig(
            settings=self, input=str(input), out_dir=Path(out_dir), backend=backend,
            max_batch=self.max_batch or default_max_batch(backend),
            crop_mode=self.crop or ("upstream" if self.detector == "none" else "square"),
            tap_names=run_tap_names(self.taps, self.tap_view, check=self.weights is not None),
            taps=not self.no_taps, write_video=not self.no_video, report=not self.no_report,
            warn_random=self.model is not None, model_id=model_identity(self.weights, self.model, self.classes),
            weights=self.weights or self.model)


def check_field(f: dataclasses.Field, value) -> None:
    """One field's value against its metadata: a number within min/max, one of its choices."""
    m, name = f.metadata, f.name
    if value is None and f.default is None:
        return
    low, high, choices = m.get("min"), m.get("max"), m.get("choices")
    if low is not None or high is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise UserInputError(f"{name} must be a number, not {value!r}", options=(name,))
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = " and ".join(s for s in (low is not None and f">= {low}", high is not None and f"<= {high}")
                                  if s)
            raise UserInputError(f"{name} must be {bounds}, not {value}", options=(name,))
    if choices is not None:
        key = value.strip().lower() if isinstance(value, str) and m.get("casefold") else value
        if key not in choices:
            listed = ", ".join(map(str, choices[:-1])) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
            raise UserInputError(f"{name} must be {listed}, not {value}", options=(name,))


def model_identity(weights: str | None, model: str | None, classes: int | None) -> str:
    """What names the model for --resume: the file (path, size, mtime) or 'random'."""
    name = weights or model or ""
    try:
        st = os.stat(name)
        return f"{os.path.abspath(name)}:{st.st_size}:{st.st_mtime_ns}:{classes}"
    except OSError:
        return f"{name}:{classes}"
