"""The annotated video drawn and encoded in a child process, so that x264 no longer shares the GIL (issue 20).

Measured: the annotated video's encoder thread was the critical path with every output, yet on a core only ~60%
of its busy time: PyAV's encode contends for the GIL with the pipeline's Python threads (60 720p frames: 0.35 s
alone, 1.02 s beside one pure-Python thread). In a process of its own it has a GIL of its own.

`EncoderProcess` has EncoderThread's interface (put, finish, commit, abort, clock, final_path). Each frame's
pixels go through a slot of one shared memory segment (`queue_frames` slots: the same bound on memory as the
thread's queue); the small rest of its record (faces, boxes, labels: what annotate_frame reads) goes through a
pipe. The child draws, converts and encodes into the temporary file; only the parent renames it (commit). The
child is started with "spawn" (engine.run.children).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import time
from fractions import Fraction
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from emoengine.engine.outputs.encoders import (
    QUEUE_FRAMES,
    VIDEO_CRF,
    VIDEO_PRESET,
    encoder_bframes,
    encoder_threads,
)
from emoengine.engine.outputs.writers import AtomicOutput, VideoWriter, fit_frame
from emoengine.engine.run.children import ChildProcess, background_nice, end_child, one_line, reserve, set_nice
from emoengine.engine.run.records import FrameRecord, StageClock, queue_frames
from emoengine.errors import RunFailure
from emoengine.memory import child_peak_rss_mb

log = logging.getLogger(__name__)

# the A/B switch (issue 20): False draws and encodes the annotated video on a thread, as before
ANNOTATED_IN_PROCESS = os.environ.get("EMOENGINE_ANNOTATED_IN_PROCESS", "1") != "0"
_POLL_S = 0.05
_JOIN_S = 10.0
_NO_PIXELS = np.zeros((0, 0, 3), np.uint8)


def drawing_record(fr: FrameRecord) -> FrameRecord:
    """`fr` without its big arrays (pixels, taps, crops, activations): what the child needs to draw it."""
    faces = [dataclasses.replace(f, taps={}, channels={}) for f in fr.faces]
    return FrameRecord(fr.index, fr.time_s, _NO_PIXELS, faces=faces, keyframe=fr.keyframe)


class EncoderProcess:
    """A VideoWriter in a child process, fed FrameRecords: `put(record)`, then `finish()` + `commit()`, or `abort()`.

    `picture(record)` (picklable: it travels to the child) makes the (H, W, 3) uint8 RGB frame to encode.
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction, size: tuple[int, int], picture) -> None:
        self._out = AtomicOutput(path)
        self.final_path = self._out.final_path
        self.size = (int(size[0]), int(size[1]))
        self.clock = StageClock()
        self.child_cpu_s = 0.0   # the child's CPU time from its first frame on (all its threads), known after finish
        self.child_peak_rss_mb = 0.0   # the child's peak (memory.child_peak_rss_mb), after finish
        self._failure: RunFailure | None = None
        self._wrote: bool | None = None
        self._ready = False
        self.frames_put = 0
        w, h = self.size
        n = queue_frames(self.size, most=QUEUE_FRAMES)
        self._shm: SharedMemory | None = SharedMemory(create=True, size=n * h * w * 3)
        self._free = list(range(n))
        self._proc: ChildProcess | None = None
        self._exitcode: int | None = None
        try:
            reserve(self._shm, n * h * w * 3)
            self._slots: np.ndarray | None = np.ndarray((n, h, w, 3), np.uint8, buffer=self._shm.buf)
            ctx = mp.get_context("spawn")
            child_tasks, self._tasks = ctx.Pipe(duplex=False)   # (reader, writer)
            self._acks, child_acks = ctx.Pipe(duplex=False)
            spec = {"shm": self._shm.name, "slots": n, "size": self.size, "fps": fps, "output": self._out,
                    "threads": encoder_threads(size), "bframes": encoder_bframes(size), "picture": picture,
                    "nice": background_nice()}
            self._proc = ChildProcess(target=child_main, args=(spec, child_tasks, child_acks),
                                     name=f"emoengine-encode-{self.final_path.stem}", daemon=True)
            self._proc.start()
            child_tasks.close()   # the child's ends: theirs now, so its death reads as EOF here
            child_acks.close()
            while not self._ready:   # its start-up (imports, x264's set-up) is the run's, not the frames'
                self._read_acks(_POLL_S)
        except BaseException:
            self.abort()
            raise

    def put(self, fr: FrameRecord) -> None:
        """Hand one record over, in order; blocks while every slot is taken; raises the child's error."""
        t0 = time.perf_counter()
        self._raise_failure()
        while not self._free:
            self._read_acks(_POLL_S)
        slot = self._free.pop()
        rgb = fr.rgb if fr.rgb.shape[:2] == self.size[::-1] else fit_frame(fr.rgb, self.size)
        assert self._slots is not None
        np.copyto(self._slots[slot], rgb)
        self._send((slot, drawing_record(fr)))
        self.frames_put += 1
        self.clock.wait_out_s += time.perf_counter() - t0

    def finish(self) -> bool:
        """Encode what is queued, flush, close the temporary file (not yet renamed); False if no frame came."""
        if self._wrote is None:
            self._raise_failure()
            self._send(None)
            while self._wrote is None:
                self._read_acks(_POLL_S)
            if self._proc is not None:
                self._proc.join(_JOIN_S)
            self._release()
        self._raise_failure()
        return self._wrote

    def commit(self) -> Path:
        if not self.finish():
            raise RunFailure(f"nothing was written for {self.final_path}")
        return self._out.commit()

    def abort(self) -> None:
        """Stop the child without encoding what waits, free the shared memory, remove the temporary file."""
        self._release()
        self._out.abort()

    # -- the parent's side of the pipes ---------------------------------------------------------------
    def _send(self, message) -> None:
        try:
            self._tasks.send(message)
        except OSError:   # a broken pipe: the child is gone
            self._died()

    def _read_acks(self, timeout: float) -> None:
        """Take the child's messages (freed slots, the end, an error), waiting up to `timeout` for the first."""
        try:
            ready = self._acks.poll(timeout)
            while ready:
                self._handle(self._acks.recv())
                ready = self._acks.poll(0)
        except (EOFError, OSError):
            self._died()
        if not ready and self._wrote is None and not (self._proc is not None and self._proc.is_alive()):
            self._died()

    def _handle(self, message: tuple) -> None:
        kind, *rest = message
        if kind == "free":
            self._free.append(rest[0])
        elif kind == "ready":
            self._ready = True
        elif kind == "done":
            wrote, clock, cpu_s, self.child_peak_rss_mb = rest
            for key, value in clock.items():
                setattr(self.clock, key, value)
            self.child_cpu_s = cpu_s
            self._wrote = wrote
        else:
            self._fail(rest[0])

    def _died(self) -> None:
        if self._proc is not None:
            self._proc.join(1.0)
            self._exitcode = self._proc.exitcode
        self._fail(f"the encoder of {self.final_path.name} stopped (exit code {self._exitcode})")

    def _fail(self, message: str) -> None:
        self.abort()
        self._failure = RunFailure(message)
        raise self._failure

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _release(self) -> None:
        """End the child (at once, if it still runs), close the pipes, unlink the shared memory; safe twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._exitcode = end_child(proc, _JOIN_S)
        for conn in (getattr(self, "_tasks", None), getattr(self, "_acks", None)):
            if conn is not None:
                conn.close()
        shm, self._shm, self._slots = self._shm, None, None
        if shm is not None:
            shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()


def child_main(spec: dict, tasks: Connection, acks: Connection) -> None:
    """The child: draw and encode each record whose pixels wait in a slot; report freed slots, the end or an error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle: it aborts us
    set_nice(spec["nice"])
    shm = SharedMemory(spec["shm"])
    writer = None
    try:
        w, h = spec["size"]
        slots = np.ndarray((spec["slots"], h, w, 3), np.uint8, buffer=shm.buf)
        writer = VideoWriter(spec["output"].final_path, spec["fps"], spec["size"], crf=VIDEO_CRF,
                             preset=VIDEO_PRESET, threads=spec["threads"], bframes=spec["bframes"],
                             output=spec["output"])
        acks.send(("ready",))
        cpu0 = time.process_time()
        clock = _encode(tasks, acks, slots, writer, spec["picture"])
        del slots
        wrote = writer.finish()
        acks.send(("done", wrote, clock, time.process_time() - cpu0, child_peak_rss_mb()))
    except BaseException as e:  # noqa: BLE001  one line for the parent's RunFailure
        if writer is not None:
            writer.abort()
        with contextlib.suppress(OSError):
            acks.send(("error", one_line(e, f"the encoder of {spec['output'].final_path.name}")))
    finally:
        with contextlib.suppress(BufferError):
            shm.close()


def _encode(tasks: Connection, acks: Connection, slots: np.ndarray, writer: VideoWriter, picture) -> dict:
    """Until the parent's end mark: draw (then free the slot), convert and encode; the clock of that work."""
    clock = StageClock()
    cpu0 = time.process_time()
    while True:
        t0 = time.perf_counter()
        message = tasks.recv()
        t1 = time.perf_counter()
        clock.wait_in_s += t1 - t0
        if message is None:
            break
        slot, record = message
        record.rgb = slots[slot]
        canvas = picture(record)
        if np.shares_memory(canvas, slots):
            canvas = canvas.copy()
        record.rgb = _NO_PIXELS
        acks.send(("free", slot))
        writer.write(canvas)
        clock.busy_s += time.perf_counter() - t1
        clock.items += 1
    clock.cpu_s = time.process_time() - cpu0
    return dataclasses.asdict(clock)
