"""The command's progress bar (rich, on a terminal only): what `run` hands run_pipeline as `progress`."""

from __future__ import annotations

import sys
import time


def progress_bar(total: int | None):
    """(on_frame, close) of a transient bar on stderr; nothing where stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]emoengine"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    task = progress.add_task("run", total=total, rate="")
    progress.start()
    t0 = time.perf_counter()

    def on_frame(stats) -> None:
        dt = max(time.perf_counter() - t0, 1e-6)
        progress.update(task, completed=stats.frames,
                        rate=f"{stats.frames / dt:.1f} frames/s {stats.faces / dt:.1f} faces/s")

    return on_frame, progress.stop
