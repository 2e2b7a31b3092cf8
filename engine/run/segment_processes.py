"""The detect stage's segments detected and carried in worker processes, each with a GIL of its own (issue 20).

Measured: on threads, two segment workers beside decoding, cropping and inference spend their time handing the
GIL back and forth (2 cores, 720p, stand-in model: 24 voluntary context switches a frame against 4 on one core,
and 22 % more CPU a frame). In processes they do not share it.

`SegmentProcesses` has engine.run.segments.OrderedPool's interface (submit, oldest, close, len). A segment's
frames go through a slot of one shared memory segment (as many slots as segments in flight), the rest through a
pipe per worker: the child runs `KeyframeTracker.segment_faces` (the same code as a thread) and sends back the
faces, which are small. Ids are still joined in the parent, in frame order, so the boxes and ids are those of
one worker. A segment whose frames do not fit a slot (the frame size grew mid-stream) runs in the calling thread.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from emoengine.engine.run.children import ChildProcess, background_nice, end_child, one_line, reserve, set_nice
from emoengine.errors import RunFailure
from emoengine.memory import child_peak_rss_mb

log = logging.getLogger(__name__)

# the A/B switch (issue 20): False runs the segments on threads, as before
SEGMENTS_IN_PROCESSES = os.environ.get("EMOENGINE_SEGMENT_PROCESSES", "1") != "0"
_POLL_S = 0.05
_JOIN_S = 10.0
_WHAT = "a detect worker"


class _Worker:
    """One child: its process, its pipes (tasks in, results out), the segments it holds."""

    def __init__(self, spec: dict, index: int) -> None:
        ctx = mp.get_context("spawn")
        child_tasks, self.tasks = ctx.Pipe(duplex=False)
        self.results, child_results = ctx.Pipe(duplex=False)
        self.proc: ChildProcess | None = ChildProcess(target=worker_main, args=(spec, child_tasks, child_results),
                                                      name=f"emoengine-detect-{index}", daemon=True)
        self.proc.start()
        child_tasks.close()   # the child's ends: theirs now, so its death reads as EOF here
        child_results.close()
        self.ready = False
        self.busy = 0
        self.cpu_s = 0.0
        self.peak_rss_mb = 0.0


class SegmentProcesses:
    """`workers` child processes, each making its own detector with `detector_recipe()` (picklable); `every`
    and `max_faces` as the parent's KeyframeTracker. `inline(records)` runs a segment in the calling thread."""

    def __init__(self, detector_recipe: Callable, every: int, max_faces: int | None, workers: int,
                 inline: Callable) -> None:
        self.inline = inline
        self.child_cpu_s = 0.0        # the workers' CPU time (all their threads), known after close
        self.child_peak_rss_mb = 0.0  # the sum of their peaks (memory.child_peak_rss_mb), after close
        self._held: deque = deque()   # (seq, records) in submission order
        self._done: dict[int, object] = {}
        self._slot_of: dict[int, int] = {}
        self._owner: dict[int, _Worker] = {}
        self._seq = 0
        self._shm: SharedMemory | None = None
        self._free: list[int] = []
        self._slot_bytes = 0
        self._failure: RunFailure | None = None
        self._slots_wanted = 1
        spec = {"recipe": detector_recipe, "every": every, "max_faces": max_faces, "nice": background_nice()}
        self._workers: list[_Worker] = []
        try:
            self._workers = [_Worker(spec, i) for i in range(max(1, int(workers)))]
        except BaseException:
            self.close()
            raise

    def wait_ready(self, stop: threading.Event) -> None:
        """Until every worker has made its detector (its start-up is the run's, not the frames')."""
        while not all(w.ready for w in self._workers):
            if stop.is_set():
                return
            self._read(_POLL_S)

    def __len__(self) -> int:
        return len(self._held)

    def submit(self, records: list) -> None:
        """Hand a segment over (a worker with the fewest segments takes it); the caller keeps fewer than
        `slots` segments held (the detect stage's segments in flight)."""
        seq, self._seq = self._seq, self._seq + 1
        self._held.append((seq, records))
        frames = [r.rgb for r in records]
        if self._shm is None:
            self._open_slots(frames, slots=self._slots_wanted)
        if sum(f.nbytes for f in frames) > self._slot_bytes or not self._free:
            self._done[seq] = self.inline(records)
            return
        slot = self._free.pop()
        shapes, offset = [], slot * self._slot_bytes
        assert self._shm is not None
        for f in frames:
            np.copyto(np.ndarray(f.shape, np.uint8, buffer=self._shm.buf, offset=offset), f)
            shapes.append((offset, f.shape))
            offset += f.nbytes
        worker = min(self._workers, key=lambda w: w.busy)
        worker.busy += 1
        self._slot_of[seq], self._owner[seq] = slot, worker
        self._send(worker, (seq, self._shm.name, shapes))

    def set_slots(self, slots: int) -> None:
        """Segments in flight (the detect stage's), before the first submit: the shared memory's slots."""
        self._slots_wanted = max(1, int(slots))

    def oldest(self, stop: threading.Event, stopped: type[BaseException]):
        """(records, segment faces) of the oldest segment held; `stopped` once `stop` is set; a worker's error
        or death as one RunFailure line."""
        seq, records = self._held[0]
        while seq not in self._done:
            if stop.is_set():
                raise stopped
            self._read(_POLL_S)
        self._held.popleft()
        return records, self._done.pop(seq)

    def close(self) -> None:
        """End every worker (at once when segments are still held), free the shared memory; safe twice."""
        clean = not self._held and self._failure is None
        self._held.clear()
        workers, self._workers = self._workers, []
        for w in workers:
            if clean:
                self._finish(w)
            self._end(w)
        shm, self._shm = self._shm, None
        if shm is not None:
            shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()

    # -- the parent's side -------------------------------------------------------------------------------
    def _open_slots(self, frames: list[np.ndarray], slots: int) -> None:
        self._slot_bytes = sum(f.nbytes for f in frames)
        n = max(1, slots)
        self._shm = SharedMemory(create=True, size=max(1, n * self._slot_bytes))
        reserve(self._shm, n * self._slot_bytes)
        self._free = list(range(n))

    def _send(self, worker: _Worker, message) -> None:
        try:
            worker.tasks.send(message)
        except OSError:   # a broken pipe: the child is gone
            self._died(worker)

    def _read(self, timeout: float) -> None:
        """Take the workers' messages, waiting up to `timeout` for the first."""
        ready = wait([w.results for w in self._workers], timeout)
        for worker in [w for w in self._workers if w.results in ready]:
            try:
                while worker.results.poll(0):
                    self._handle(worker, worker.results.recv())
            except (EOFError, OSError):
                self._died(worker)
        for w in self._workers:
            if w.proc is not None and not w.proc.is_alive() and not w.results.poll(0):
                self._died(w)

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind, *rest = message
        if kind == "done":
            seq, faces = rest
            self._done[seq] = faces
            self._free.append(self._slot_of.pop(seq))
            self._owner.pop(seq)
            worker.busy -= 1
        elif kind == "ready":
            worker.ready = True
        elif kind == "end":
            worker.cpu_s, worker.peak_rss_mb = rest
        else:
            self._fail(rest[0])

    def _finish(self, worker: _Worker) -> None:
        """Ask a worker to end and take its CPU time and peak memory."""
        with contextlib.suppress(OSError, EOFError):
            worker.tasks.send(None)
            if worker.results.poll(_JOIN_S):
                kind, *rest = worker.results.recv()
                if kind == "end":
                    worker.cpu_s, worker.peak_rss_mb = rest
        self.child_cpu_s += worker.cpu_s
        self.child_peak_rss_mb += worker.peak_rss_mb

    def _end(self, worker: _Worker) -> None:
        proc, worker.proc = worker.proc, None
        if proc is not None:
            proc.join(0 if proc.exitcode is not None else 1.0)
            end_child(proc, _JOIN_S)
        worker.tasks.close()
        worker.results.close()

    def _died(self, worker: _Worker) -> None:
        code = None
        if worker.proc is not None:
            worker.proc.join(1.0)
            code = worker.proc.exitcode
        self._fail(f"{_WHAT} stopped (exit code {code})")

    def _fail(self, message: str) -> None:
        if self._failure is None:
            self._failure = RunFailure(message)
        raise self._failure


def worker_main(spec: dict, tasks: Connection, results: Connection) -> None:
    """The child: build the detector, then one segment's faces per message, until the parent's end mark."""
    import cv2

    from emoengine.engine.tracking.keyframes import KeyframeTracker

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle: it ends us
    set_nice(spec["nice"])
    cv2.setNumThreads(1)   # a worker is one core's share; OpenCV's own pool would fight its siblings for theirs
    shm: SharedMemory | None = None
    try:
        tracker = KeyframeTracker(spec["recipe"](), spec["every"], spec["max_faces"])
        results.send(("ready",))
        cpu0 = time.process_time()
        while (message := tasks.recv()) is not None:
            seq, name, shapes = message
            if shm is None:
                shm = SharedMemory(name)
            frames = [np.ndarray(shape, np.uint8, buffer=shm.buf, offset=offset) for offset, shape in shapes]
            faces = tracker.segment_faces(frames)
            del frames
            results.send(("done", seq, faces))
        results.send(("end", time.process_time() - cpu0, child_peak_rss_mb()))
    except BaseException as e:  # noqa: BLE001  one line for the parent's RunFailure
        with contextlib.suppress(OSError):
            results.send(("error", one_line(e, _WHAT)))
    finally:
        if shm is not None:
            with contextlib.suppress(BufferError):
                shm.close()
