"""The `emoengine` command: typer app, and the one place that turns errors into one line + exit code."""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING, cast

import typer

from emoengine.errors import EmoengineError

if TYPE_CHECKING:   # the type of what _click_types finds (typer's vendored click has the same interface)
    from click.exceptions import ClickException

app = typer.Typer(
    name="emoengine",
    help="EmoNet facial-emotion engine for video, with conv1 / emo-conv1 feature-map outputs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEBUG = {"on": False}


def fail(message: str, code: int) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    typer.echo(f"emoengine: error: {message}", err=True)
    return typer.Exit(code)


def _register_commands() -> None:
    # each command lives in its own module and adds itself to `app`
    from emoengine.cli import commands  # noqa: F401


def _click_types() -> tuple[tuple[type[ClickException], ...], tuple[type[BaseException], ...]]:
    """(ClickException types, Abort types): typer's vendored click (typer >= 0.2x) and a standalone click,
    whichever exist, since either may raise depending on the typer version."""
    exceptions: list[type[ClickException]] = []
    aborts: list[type[BaseException]] = [typer.Abort]
    try:
        from typer._click import ClickException as VendoredClickException

        # a copy of click's class, format_message and all (the two are unrelated to a type checker)
        exceptions.append(cast("type[ClickException]", VendoredClickException))
    except ImportError:
        pass
    try:
        from click.exceptions import Abort
        from click.exceptions import ClickException as StandaloneClickException

        exceptions.append(StandaloneClickException)
        aborts.append(Abort)
    except ImportError:
        pass
    return tuple(exceptions), tuple(aborts)


def _first_line(message) -> str:
    lines = str(message).strip().splitlines()
    return lines[0] if lines else ""


def _stop_on_sigterm() -> None:
    """SIGTERM (a job scheduler, `timeout`) stops a run like Ctrl-C: stages end, temporaries are removed."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 done, 2 bad input, 1 failure while running (CONTRACT.md)."""
    try:
        _main(argv)
    except SystemExit as e:
        if argv is None:   # the real process, not a test calling main([...]) in-process
            _exit_past_lingering_stages(e.code)
        raise


def _exit_past_lingering_stages(code, settle_s: float = 2.0) -> None:
    """Exit now, skipping interpreter shutdown, if a pipeline stage thread is still inside native code
    (ONNX Runtime, FFmpeg) after an interrupted run stopped waiting for it: Python unwinds a daemon thread
    that wakes during shutdown through C++ frames, which aborts the process ("terminate called without an
    active exception", status -6) after the clean one-line exit was already printed."""
    import os
    import threading
    import time

    deadline = time.monotonic() + settle_s
    while True:
        lingering = [t for t in threading.enumerate() if t.name.startswith("emoengine-") and t.is_alive()]
        if not lingering:
            return
        if time.monotonic() > deadline:
            break
        lingering[0].join(timeout=0.05)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def _main(argv: list[str] | None) -> None:
    from emoengine.log import install_stderr_handler
    from emoengine.settings import speak_flags

    # the library logs; the command shows its lines as `emoengine: ...` on stderr, options as flags
    install_stderr_handler(rename=speak_flags)
    _register_commands()
    args = sys.argv[1:] if argv is None else argv
    DEBUG["on"] = "--debug" in args
    _stop_on_sigterm()
    args = [a for a in args if a != "--debug"]
    try:
        rc = app(args=args, prog_name="emoengine", standalone_mode=False)
        if rc == 130:  # typer turns KeyboardInterrupt into Exit(130) silently
            typer.echo("emoengine: interrupted; nothing was left under a final name", err=True)
        raise SystemExit(rc if isinstance(rc, int) else 0)
    except EmoengineError as e:
        if DEBUG["on"]:
            traceback.print_exc()
        message = speak_flags(_first_line(e), getattr(e, "options", ())) or type(e).__name__
        raise SystemExit(fail(message, e.exit_code).exit_code) from None
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("emoengine: interrupted", err=True)
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001  click usage errors and the unexpected
        click_exception, abort = _click_types()
        if isinstance(e, abort):
            typer.echo("emoengine: interrupted", err=True)
            raise SystemExit(130) from None
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `emoengine`: the help was the answer
            raise SystemExit(2) from None
        if isinstance(e, click_exception):
            raise SystemExit(fail(_first_line(e.format_message()) or type(e).__name__, 2).exit_code) from None
        if DEBUG["on"]:
            traceback.print_exc()
        raise SystemExit(fail(f"{type(e).__name__}: {_first_line(e)} (run with --debug for the traceback)",
                              1).exit_code) from None
