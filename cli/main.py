"""The `emoengine` command: typer app, and the one place that turns errors into one line + exit code."""

from __future__ import annotations

import sys
import traceback

import typer

from emoengine.errors import EmoengineError

app = typer.Typer(
    name="emoengine",
    help="EmoNet facial-emotion engine for video, with conv1 / emo-conv1 feature-map outputs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEBUG = {"on": False}


def fail(message: str, code: int) -> "typer.Exit":
    """Print one line on stderr and return the Exit to raise."""
    typer.echo(f"emoengine: error: {message}", err=True)
    return typer.Exit(code)


def _register_commands() -> None:
    # each command lives in its own module and adds itself to `app`
    from emoengine.cli import commands  # noqa: F401


def _click_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(ClickException types, Abort types): typer's vendored click (typer >= 0.2x) and a standalone click,
    whichever exist, since either may raise depending on the typer version."""
    exceptions, aborts = [], [typer.Abort]
    try:
        from typer._click import ClickException

        exceptions.append(ClickException)
    except ImportError:
        pass
    try:
        from click.exceptions import Abort, ClickException

        exceptions.append(ClickException)
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


def _exit_past_stuck_stages(code: int) -> None:
    """Leave with `code` even if a pipeline stage thread is still inside native code (a stalled stream read, an
    ONNX Runtime call that outlived the stop grace period on a loaded machine): a normal interpreter shutdown
    would tear down ONNX Runtime / FFmpeg under that thread and abort with "terminate called without an active
    exception". The run has already removed its temporaries when we get here."""
    import os

    from emoengine.engine.pipeline import ABANDONED_STAGE_THREADS

    if any(t.is_alive() for t in ABANDONED_STAGE_THREADS):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 done, 2 bad input, 1 failure while running (CONTRACT.md)."""
    try:
        _main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        _exit_past_stuck_stages(code)
        raise


def _main(argv: list[str] | None) -> None:
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
        raise SystemExit(fail(_first_line(e) or type(e).__name__, e.exit_code).exit_code)
    except typer.Exit as e:
        raise SystemExit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("emoengine: interrupted", err=True)
        raise SystemExit(130)
    except Exception as e:  # click usage errors and the unexpected
        click_exception, abort = _click_types()
        if isinstance(e, abort):
            typer.echo("emoengine: interrupted", err=True)
            raise SystemExit(130)
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `emoengine`: the help was the answer
            raise SystemExit(2)
        if isinstance(e, click_exception):
            raise SystemExit(fail(_first_line(e.format_message()) or type(e).__name__, 2).exit_code)
        if DEBUG["on"]:
            traceback.print_exc()
        raise SystemExit(fail(f"{type(e).__name__}: {_first_line(e)} (run with --debug for the traceback)",
                              1).exit_code)
