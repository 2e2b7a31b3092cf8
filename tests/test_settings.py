"""emoengine.RunSettings owns every option of a run: it checks itself (one line naming the option by its Python
name; the CLI shows the flag), and a field added to it reaches `run --help`, `batch --help`, Engine's keywords
and --resume's fingerprint with no other edit (shown with a throwaway subclass)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer
from typer.testing import CliRunner

from emoengine.errors import UserInputError
from emoengine.settings import RunSettings, flag, option, speak_flags


@pytest.mark.parametrize("options, message, name", [
    ({"smooth": 1.5}, "smooth must be >= 0.0 and <= 0.99, not 1.5", "smooth"),
    ({"detect_every": 0}, "detect_every must be >= 1, not 0", "detect_every"),
    ({"max_batch": "many"}, "max_batch must be a number", "max_batch"),
    ({"crop": "tight"}, "crop must be square or upstream, not tight", "crop"),
    ({"tap_view": "tiles"}, "tap_view must be mean or grid", "tap_view"),
    ({"classes": 7}, "classes must be 5 or 8, not 7", "classes"),
    ({"full_taps": True}, "full_taps only makes sense with save_activations", "full_taps"),
])
def test_a_bad_option_is_one_line_naming_its_python_name(options, message, name):
    with pytest.raises(UserInputError) as e:
        RunSettings(weights="random", **options)
    assert str(e.value).startswith(message) and "\n" not in str(e.value) and "--" not in str(e.value)
    assert name in e.value.options and isinstance(e.value, ValueError)
    assert speak_flags(str(e.value), e.value.options).startswith(flag(name))   # what the CLI prints


def test_weights_or_model_and_unknown_names():
    with pytest.raises(UserInputError, match="give weights"):
        RunSettings()
    with pytest.raises(UserInputError, match="unknown Engine option"):
        RunSettings.from_options("Engine", weights="random", smoothing=0.5)


def test_defaults_are_resolved_once_by_device_and_detector():
    cfg = RunSettings(weights="random").resolve("x.mp4", ".")
    assert (cfg.backend, cfg.max_batch, cfg.crop_mode) == ("ort", 1, "square")
    assert RunSettings(weights="random", detector="none").resolve("x", ".").crop_mode == "upstream"
    assert RunSettings(weights="random", max_batch=4).resolve("x", ".").max_batch == 4
    assert cfg.smooth == 0.0 and cfg.settings.detect_every == cfg.detect_every   # the rest reads through


def test_flags_come_from_the_python_names():
    assert [flag(n) for n in ("min_face", "detect_every", "no_video")] == ["--min-face", "--detect-every",
                                                                           "--no-video"]
    # a name inside a command line or a longer name is left alone
    assert speak_flags("detector none takes no detector_model", ["detector"]) == \
        "--detector none takes no detector_model"
    assert speak_flags("run `emoengine export --taps a`; taps x", ["taps"]) == \
        "run `emoengine export --taps a`; --taps x"


@dataclasses.dataclass(frozen=True)
class WithOneMore(RunSettings):
    """A throwaway option, added as one field: nothing else is edited."""

    frame_step: int = option(1, "Use every N-th frame (throwaway).", min=1)


def test_a_new_field_reaches_the_cli_engine_and_the_fingerprint(tmp_path):
    from emoengine.api import Engine
    from emoengine.cli.options import settings_of, with_signature
    from emoengine.cli.run_cmd import run_options

    seen = {}

    def run(**options):
        seen["settings"] = settings_of(options, WithOneMore)

    app = typer.Typer()
    app.command("run")(with_signature(run, run_options, WithOneMore))
    app.command("other")(lambda: None)
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"}).output
    assert "--frame-step" in help_text and "Use every N-th frame" in help_text
    r = CliRunner().invoke(app, ["run", "clip.mp4", "--weights", "random", "--frame-step", "0"])
    assert r.exit_code == 2 and "--frame-step" in r.output          # its min, from the field, via typer
    assert CliRunner().invoke(app, ["run", "clip.mp4", "--weights", "random", "--frame-step", "3"]).exit_code == 0
    assert seen["settings"].frame_step == 3

    batch_params = inspect.signature(with_signature(lambda **k: None, run_options, WithOneMore,
                                                    for_batch=True)).parameters
    assert "frame_step" in batch_params and "resume" not in batch_params   # batch: every field but batch=False

    class MyEngine(Engine):
        settings_type = WithOneMore

        def __init__(self, **options):   # the settings only: no model is opened for this check
            self.settings = self.settings_type.from_options("Engine", **options)

    assert MyEngine(weights="random", frame_step=2).settings.frame_step == 2
    with pytest.raises(UserInputError, match="frame_step must be >= 1"):
        MyEngine(weights="random", frame_step=0)
    one, two = (WithOneMore(weights="random", frame_step=n).fingerprint() for n in (1, 2))
    assert one["frame_step"] == 1 and one != two                    # --resume runs again when it changes


def test_the_library_does_not_read_the_cli():
    """No library module imports emoengine.cli (`python -m emoengine`, __main__.py, is the command's own door),
    and none reads a signature but the int8 export's probe of onnxruntime's quantize_static."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for folder in ("src", "engine", "export"):
        for path in (repo / folder).rglob("*.py"):
            text = path.read_text()
            imported = [n.module if isinstance(n, ast.ImportFrom) else a.name for n in ast.walk(ast.parse(text))
                        if isinstance(n, (ast.Import, ast.ImportFrom))
                        for a in (n.names if isinstance(n, ast.Import) else [n])]
            if path.name != "__main__.py":
                assert not any(m == "emoengine.cli" or str(m).startswith("emoengine.cli.") for m in imported), path
            if "inspect.signature" in text:
                assert path.name == "quantize.py" and "inspect.signature(quantize_static)" in text, path
