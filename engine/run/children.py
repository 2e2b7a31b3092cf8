"""Child processes of a run (the annotated video's encoder, the detect workers): how they are started and niced.

Both are started with "spawn": the parent has ONNX Runtime's threads, and fork copies no thread but their locks.
"""

from __future__ import annotations

import contextlib
import os
import threading
from multiprocessing import popen_spawn_posix, spawn
from multiprocessing.context import SpawnProcess
from multiprocessing.shared_memory import SharedMemory

from emoengine.engine.run.records import BACKGROUND_NICE


class _SpawnPopen(popen_spawn_posix.Popen):
    """Spawn without re-running the parent's main script in the child: the child needs none of it, and a script
    without the `if __name__ == "__main__"` guard would start its run again there."""

    def _launch(self, process_obj) -> None:
        with _SPAWN_LOCK:
            real = spawn.get_preparation_data
            spawn.get_preparation_data = lambda name: {k: v for k, v in real(name).items()
                                                       if not k.startswith("init_main")}
            try:
                super()._launch(process_obj)   # pyright: ignore[reportAttributeAccessIssue]  (typeshed lacks it)
            finally:
                spawn.get_preparation_data = real


class ChildProcess(SpawnProcess):
    """A spawned process that does not re-run the parent's `__main__` (see _SpawnPopen)."""

    @staticmethod
    def _Popen(process_obj):
        return _SpawnPopen(process_obj)


_SPAWN_LOCK = threading.Lock()


def end_child(proc: SpawnProcess, grace_s: float) -> int | None:
    """End a child: terminate it if it still runs, kill it if that did not end it within `grace_s`; its exit
    code. The process object is closed."""
    if proc.is_alive():
        proc.terminate()
        proc.join(grace_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
    code = proc.exitcode
    proc.close()
    return code


def reserve(shm: SharedMemory, size: int) -> None:
    """Take the segment's pages now: a full /dev/shm fails here with one error, not with SIGBUS mid-run."""
    fd = getattr(shm, "_fd", -1)   # CPython's SharedMemory keeps its descriptor here (POSIX)
    if fd >= 0 and hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)


def background_nice() -> int:
    """The nice value of the pipeline's background threads: the main thread's + BACKGROUND_NICE."""
    try:
        return os.getpriority(os.PRIO_PROCESS, os.getpid()) + BACKGROUND_NICE
    except (AttributeError, OSError):
        return BACKGROUND_NICE


def set_nice(nice: int) -> None:
    """Run at the background niceness (the child starts at its spawning thread's, often that already)."""
    with contextlib.suppress(AttributeError, OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) < nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)


def one_line(e: BaseException, what: str) -> str:
    """A child's error as the parent's RunFailure line: `what` failed, and why."""
    from emoengine.errors import EmoengineError

    if isinstance(e, EmoengineError):
        return str(e).splitlines()[0]
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{what} failed: {type(e).__name__}: {text}"
