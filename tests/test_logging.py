"""The library logs and never prints; the command shows its lines as `emoengine: ...` on stderr; bad input from a
public entry point is a UserInputError, which is a ValueError."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emoengine.errors import UserInputError, warn_random_weights
from emoengine.log import OneLineHandler, install_stderr_handler

REPO = Path(__file__).resolve().parents[1]


def test_no_print_in_the_library():
    """ruff's T20 (pyproject: only cli/, tests/ and benchmarks/ may print) over the library's folders."""
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(REPO / ".venv-ci" / "bin"))
    if ruff is None:
        pytest.skip("ruff is not installed (the test extra has it)")
    r = subprocess.run([ruff, "check", "--select", "T20,BLE", "src", "engine", "export"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_library_messages_go_to_emoengine_loggers(caplog):
    with caplog.at_level(logging.WARNING, logger="emoengine"):
        warn_random_weights(3)
    assert [r.name.split(".")[0] for r in caplog.records] == ["emoengine"]
    assert "seed 3" in caplog.records[0].getMessage()


def test_the_command_handler_writes_one_line_on_the_current_stderr(capsys):
    logger = install_stderr_handler()
    install_stderr_handler()                       # once per process, however often the CLI runs in it
    assert sum(isinstance(h, OneLineHandler) for h in logger.handlers) == 1
    logging.getLogger("emoengine.engine.run.driver").info("first line\nsecond line")
    assert capsys.readouterr().err == "emoengine: first line\n"


def test_random_weights_warning_is_one_stderr_line_from_the_command(tmp_path, caplog):
    """The library names the option `weights`; the command's handler (the CLI's rename) shows `--weights`."""
    with caplog.at_level(logging.WARNING, logger="emoengine"):
        warn_random_weights()
    assert caplog.messages[-1].startswith("WARNING: weights random") and "--" not in caplog.messages[-1]
    code = ("from emoengine.log import install_stderr_handler; from emoengine.settings import speak_flags\n"
            "install_stderr_handler(rename=speak_flags)\n"
            "from emoengine.errors import warn_random_weights; warn_random_weights()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.startswith("emoengine: WARNING: --weights random") \
        and r.stderr.count("\n") == 1, r.stderr


def test_emonet_model_predict_refuses_bad_crops_with_a_user_input_error():
    pytest.importorskip("torch", reason="random EmoNet weights on the torch backend")
    from emoengine.engine.model.emonet_model import open_emonet

    model = open_emonet("torch", weights="random")
    try:
        with pytest.raises(UserInputError, match="uint8") as e:
            model.predict(np.zeros((1, 64, 64, 3), np.float32))
        assert isinstance(e.value, ValueError)
    finally:
        model.close()


def test_class_names_is_a_user_input_error():
    from emoengine import class_names

    with pytest.raises(UserInputError):
        class_names(7)


def _refusals():
    from emoengine.benchmarks.bench import run_bench
    from emoengine.export.int8_search import check_min_agreement
    from emoengine.export.quantize import check_recipe
    from emoengine.export.targets import ExportRequest, steps_for

    return {
        "precision": lambda: steps_for(ExportRequest(weights="random", precision="int4")),
        "target": lambda: steps_for(ExportRequest(weights="random", precision="int8", target="tpu")),
        "keep_float": lambda: steps_for(ExportRequest(weights="random", precision="fp16", keep_float="stem")),
        "weights": lambda: steps_for(ExportRequest()),
        "taps": lambda: steps_for(ExportRequest(onnx=Path("m.onnx"), precision="fp16", taps=("m0",))),
        "min_agreement": lambda: check_min_agreement(1.5),
        "calibration_crops": lambda: check_recipe(0, "minmax", ()),
        "runs": lambda: run_bench("random", ["torch"], [1], runs=0),
    }


@pytest.mark.parametrize("option", ["precision", "target", "keep_float", "weights", "taps", "min_agreement",
                                    "calibration_crops", "runs"])
def test_library_refusals_name_options_by_their_python_names(option):
    """A notebook user reads `min_agreement`, not `--min-agreement`; the error carries the names it uses, which
    the CLI turns into flags (tests/test_bench.py's table checks the command's line)."""
    from emoengine.settings import flag, speak_flags

    with pytest.raises(UserInputError) as e:
        _refusals()[option]()
    message = str(e.value)
    assert option in message and flag(option) not in message and option in e.value.options, message
    assert flag(option) in speak_flags(message, e.value.options)
