"""The streaming engine: decode → detect/track → crop → infer (batched across frames) → render/write.

Each stage is a thread joined to the next by a bounded queue, so memory stays flat however long the video
is and the slowest stage sets the pace. Detection and flow, the costliest stage on a CPU, run segment by
segment on `workers` processes (engine.run.segment_processes; threads where the detector cannot be made again in
a child, e.g. on a GPU) whose results are joined in frame order (engine.run.segments). A shared
stop event ends every stage promptly; the first error (a worker's too) is kept and re-raised in the caller's
thread; frame order is kept because every stage hands its records on in order.
One `FrameRecord` per frame travels through them all, each stage adding its part (engine.run.records).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Final, overload

import numpy as np

from emoengine.engine.model.crops import crop_faces
from emoengine.engine.model.emonet_model import EmoNetModel
from emoengine.engine.run.options import PipelineOptions, PipelineStats
from emoengine.engine.run.records import BACKGROUND_NICE, FrameRecord, StageClock
from emoengine.engine.run.segment_processes import SegmentProcesses
from emoengine.engine.run.segments import OrderedPool
from emoengine.engine.tracking.keyframes import KeyframeTracker
from emoengine.errors import EmoengineError, RunFailure

log = logging.getLogger(__name__)

_End = enum.Enum("_End", "END")   # the end of the stream, down the queues after the last frame (`is` narrows)
_END: Final = _End.END
_POLL_S = 0.05
STOP_GRACE_S = 20.0   # how long a stopped run waits for a stage blocked in I/O (a stalled stream)
def lower_this_thread_priority(by: int = BACKGROUND_NICE) -> None:
    """Raise the calling thread's nice value (Linux: each thread has its own); a no-op where unsupported."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + by)


class _Stopped(Exception):
    """Raised inside a stage when another stage failed or the user interrupted."""


STAGES = ("decode", "detect", "track", "crop", "infer", "render")   # "track": the flow, inside the detect thread


class Pipeline:
    """Wires the stages; `run()` blocks until the input ends, a stage fails, or Ctrl-C.

    `sink(record)` runs in the render stage with each frame's record, predictions included, and writes it;
    `on_frame(stats)` is called after each frame for progress display.
    """

    def __init__(self, frames: Iterable, detector, model: EmoNetModel, sink: Callable[[FrameRecord], None],
                 options: PipelineOptions | None = None, on_frame: Callable[[PipelineStats], None] | None = None,
                 live: bool = False):
        self.frames = frames
        self.detector = detector
        self.opt = options or PipelineOptions()
        self.tracker = KeyframeTracker(detector, self.opt.detect_every, self.opt.max_faces,
                                       independent=self.opt.independent_frames)
        self.model = model
        self.sink = sink
        self.on_frame = on_frame
        self.stop = threading.Event()
        self.end_input = threading.Event()   # ends a live input; what was read is finished and written
        self.live = live
        self.stats = PipelineStats(stages={s: StageClock() for s in STAGES})
        self._error: tuple[str, BaseException] | None = None
        self._inline_cpu_s = 0.0   # detection and flow CPU seconds spent in the detect stage's own thread
        self._processes: SegmentProcesses | None = None
        self._child_cpu_s = 0.0    # the worker processes' CPU time, added to process_cpu_s
        self._lock = threading.Lock()
        q = self.opt.queue_size
        self._q_decoded: queue.Queue = queue.Queue(q)
        self._q_detected: queue.Queue = queue.Queue(q)
        self._q_cropped: queue.Queue = queue.Queue(q)
        self._q_inferred: queue.Queue = queue.Queue(q)

    # ---- queue helpers that notice the stop event ---------------------------------------------------
    def _put(self, q: queue.Queue, item, clock: StageClock) -> None:
        t0 = time.perf_counter()
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        clock.wait_out_s += time.perf_counter() - t0

    @overload
    def _get(self, q: queue.Queue, clock: StageClock, timeout: None = None) -> FrameRecord | _End: ...
    @overload
    def _get(self, q: queue.Queue, clock: StageClock, timeout: float | None) -> FrameRecord | _End | None: ...
    def _get(self, q: queue.Queue, clock: StageClock, timeout: float | None = None) -> FrameRecord | _End | None:
        """Next item; `None` if `timeout` passed with nothing (used by the batcher)."""
        t0 = time.perf_counter()
        deadline = None if timeout is None else t0 + timeout
        try:
            while True:
                if self.stop.is_set():
                    raise _Stopped
                wait = _POLL_S if deadline is None else min(_POLL_S, max(0.0, deadline - time.perf_counter()))
                try:
                    return q.get(timeout=wait)
                except queue.Empty:
                    if deadline is not None and time.perf_counter() >= deadline:
                        return None
        finally:
            clock.wait_in_s += time.perf_counter() - t0

    # ---- stages ----------------------------------------------------------------------------------
    def _decode(self, clock: StageClock) -> None:
        it = iter(self.frames)
        while not self.end_input.is_set():
            t0 = time.perf_counter()
            frame = next(it, _END)
            clock.busy_s += time.perf_counter() - t0
            if frame is _END:
                break
            clock.items += 1
            self._put(self._q_decoded, FrameRecord(frame.index, frame.time_s, frame.rgb), clock)
        self._put(self._q_decoded, _END, clock)

    def _detect(self, clock: StageClock) -> None:
        """Detection on keyframes and optical flow between them (engine.tracking.keyframes), a segment per task
        on `workers` threads; ids joined here in frame order. The flow's seconds are the "track" stage's. With
        a detector on every frame, frames that already wait are detected together, up to `detect_batch`
        (batched across frames, as a GPU detector wants)."""
        first = self._get(self._q_decoded, clock)
        in_flight = 1 if first is _END else self.opt.segments_in_flight(first.rgb.nbytes, self.tracker.every)
        if in_flight < 2:   # frames too big to hold two segments (4K): one at a time here, as memory allows
            self._close_processes()
            self._detect_frame_by_frame(first, clock)
            return
        pool: OrderedPool | SegmentProcesses
        if self._processes is not None:
            pool = self._processes
            pool.set_slots(in_flight)
        else:
            pool = OrderedPool(self._segment_faces, self.opt.workers, lambda e: self._fail("detect", e), _Stopped,
                               name="emoengine-detect", initializer=lower_this_thread_priority)
        try:
            for records in self._segments(clock, first):
                pool.submit(records)
                while len(pool) >= in_flight:
                    self._join(*pool.oldest(self.stop, _Stopped), clock)
            while len(pool):
                self._join(*pool.oldest(self.stop, _Stopped), clock)
        finally:
            pool.close()   # every worker has ended when the stage ends
            self._close_processes()
        self._end_detect(clock)

    def _end_detect(self, clock: StageClock) -> None:
        self.stats.detect_frames, self.stats.tracked_frames = (self.tracker.stats.detect_frames,
                                                               self.tracker.stats.tracked_frames)
        self._put(self._q_detected, _END, clock)

    def _detect_frame_by_frame(self, record, clock: StageClock) -> None:
        """The same segments and rules (KeyframeTracker.track), a frame at a time in this thread: for frames
        so big that holding segments for workers would cost more memory than the queues (4K)."""
        stats, track_clock = self.tracker.stats, self.stats.stages["track"]
        while record is not _END:
            detect_s, track_s = stats.detect_s, stats.track_s
            tracked = self.tracker.track([record.rgb])
            clock.busy_s += stats.detect_s - detect_s
            track_clock.busy_s += stats.track_s - track_s
            self._hand_on([record], tracked, clock)
            record = self._get(self._q_decoded, clock)
        self._inline_cpu_s = stats.detect_cpu_s + stats.track_cpu_s   # this thread's, already in its CPU time
        self._end_detect(clock)

    def _segments(self, clock: StageClock, first):
        """The decoded records, from `first`, in segments of `detect_every` frames (the last one shorter); with
        a detector on every frame, each frame and those already waiting behind it, up to `detect_batch`."""
        every = self.tracker.every
        size = every if every > 1 else self.opt.detect_batch
        ended = False
        while not ended:
            records, first = [self._get(self._q_decoded, clock) if first is None else first], None
            while len(records) < size and records[-1] is not _END:
                if every > 1:
                    records.append(self._get(self._q_decoded, clock))
                    continue
                try:
                    records.append(self._q_decoded.get_nowait())
                except queue.Empty:
                    break
            if ended := records[-1] is _END:
                records.pop()
            if records:
                yield records

    def _start_processes(self) -> None:
        """The worker processes, when the options call for them, ready before the run's clock starts."""
        if self.opt.detector_recipe is not None and self.opt.segment_processes(self.tracker.every):
            self._processes = SegmentProcesses(self.opt.detector_recipe, self.tracker.every, self.opt.max_faces,
                                               self.opt.workers, inline=self._segment_faces)
            self._processes.wait_ready(self.stop)

    def _close_processes(self) -> None:
        """End the worker processes (safe twice); their CPU time and peak memory go into the stats."""
        procs, self._processes = self._processes, None
        if procs is not None:
            procs.close()
            self._child_cpu_s += procs.child_cpu_s
            self.stats.child_peak_rss_mb += procs.child_peak_rss_mb

    def _segment_faces(self, records: list[FrameRecord]):
        """A worker's task: one segment's faces, no ids (any thread, any order)."""
        def stop() -> None:
            if self.stop.is_set():
                raise _Stopped
        return self.tracker.segment_faces([r.rgb for r in records], stop)

    def _join(self, records: list[FrameRecord], segment, clock: StageClock) -> None:
        """Ids for a finished segment, in frame order, and its records handed on."""
        t0 = time.perf_counter()
        clock.busy_s += segment.stats.detect_s
        self.stats.stages["track"].busy_s += segment.stats.track_s
        tracked = self.tracker.join(segment)
        clock.busy_s += time.perf_counter() - t0
        self._hand_on(records, tracked, clock)

    def _hand_on(self, records: list[FrameRecord], tracked, clock: StageClock) -> None:
        for record, t in zip(records, tracked, strict=True):
            record.detections, record.ids, record.keyframe, record.dropped_ids = (
                t.faces, t.ids, t.keyframe, t.dropped)
            clock.items += 1
            self._put(self._q_detected, record, clock)

    def _crop(self, clock: StageClock) -> None:
        while (record := self._get(self._q_detected, clock)) is not _END:
            t0 = time.perf_counter()
            faces = record.detections
            if faces is not None and len(faces):
                # square crops from the unclipped boxes (a face at the edge stays centred, black beyond it);
                # upstream mode clips by design, as EmoNet's demo does
                boxes = faces.boxes_to_crop if self.opt.crop_mode == "square" else faces.boxes
                record.crops, record.regions = crop_faces(record.rgb, boxes, mode=self.opt.crop_mode)
            clock.busy_s += time.perf_counter() - t0
            clock.items += 1
            self._put(self._q_cropped, record, clock)
        self._put(self._q_cropped, _END, clock)

    def _infer(self, clock: StageClock) -> None:
        """Batch faces across frames: run when `max_batch` faces wait, when the oldest waiting frame has
        waited `max_wait_ms`, or when `queue_size` frames wait (frames without faces hold no crops, but
        must keep their place in the order)."""
        pending: list[FrameRecord] = []
        n_faces = 0
        deadline = 0.0
        ended = False
        while not ended:
            timeout = max(0.0, deadline - time.perf_counter()) if pending else None
            record = self._get(self._q_cropped, clock, timeout=timeout)
            if record is _END:
                ended = True
            elif record is not None:
                if not pending and not record.num_detections:
                    self._put(self._q_inferred, record, clock)  # nothing to wait for
                    continue
                if not pending:
                    deadline = time.perf_counter() + self.opt.max_wait_ms / 1000
                pending.append(record)
                n_faces += record.num_detections
            due = (ended or n_faces >= self.opt.max_batch or len(pending) >= self.opt.queue_size
                   or time.perf_counter() >= deadline)
            if pending and due:
                self._flush(pending, clock)
                pending, n_faces = [], 0
        self._put(self._q_inferred, _END, clock)

    def _flush(self, pending: list[FrameRecord], clock: StageClock) -> None:
        t0 = time.perf_counter()
        crops = np.concatenate([r.crops for r in pending if r.crops is not None])
        batch = self.model.predict(crops)
        clock.busy_s += time.perf_counter() - t0
        clock.items += len(crops)
        start = 0
        for record in pending:
            k = record.num_detections
            if k:
                record.predictions = batch.rows(start, start + k)
            record.crops = None   # EmoNet has seen them; a record waiting for the writer stays small
            start += k
            self._put(self._q_inferred, record, clock)

    def _render(self, clock: StageClock) -> None:
        while (record := self._get(self._q_inferred, clock)) is not _END:
            t0 = time.perf_counter()
            self.sink(record)
            clock.busy_s += time.perf_counter() - t0
            clock.items += 1
            k = record.num_detections
            self.stats.frames += 1
            self.stats.faces += k
            self.stats.frames_with_face += k > 0
            if self.on_frame:
                self.on_frame(self.stats)

    # ---- running --------------------------------------------------------------------------------
    def _stage(self, name: str, fn, done: threading.Event) -> None:
        cpu0 = time.thread_time()
        if name != "infer":
            lower_this_thread_priority()
        try:
            fn(self.stats.stages[name])
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001  forwarded to the caller's thread
            self._fail(name, e)
        finally:
            self.stats.stages[name].cpu_s += time.thread_time() - cpu0
            if name == "detect":   # the workers' CPU time: detection's, and the flow's (the track stage's)
                self.stats.stages[name].cpu_s += self.tracker.stats.detect_cpu_s - self._inline_cpu_s
                self.stats.stages["track"].cpu_s = self.tracker.stats.track_cpu_s
            done.set()

    def _fail(self, stage: str, error: BaseException) -> None:
        """Keep the first error (re-raised in the caller's thread) and stop every stage."""
        with self._lock:
            if self._error is None:
                self._error = (stage, error)
        self.stop.set()

    def run(self) -> PipelineStats:
        """Blocks until every stage thread has ended; never returns while one still runs.

        Ctrl-C on a live input (camera, stream) first ends the input and lets the run finish and write;
        a second Ctrl-C, or the first on a file, stops everything (the caller then removes temporaries).
        """
        stages = [("decode", self._decode), ("detect", self._detect), ("crop", self._crop),
                  ("infer", self._infer), ("render", self._render)]   # "track" runs in the detect thread
        # our own "done" events, not Thread.is_alive(): a join() interrupted by Ctrl-C can leave a thread's
        # state looking finished while it still runs (then closing the model under it aborts the process)
        done = [threading.Event() for _ in stages]
        threads = [threading.Thread(target=self._stage, args=(*s, d), name=f"emoengine-{s[0]}", daemon=True)
                   for s, d in zip(stages, done, strict=True)]
        started: list[threading.Event] = []
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            self._start_processes()
            t0, cpu0 = time.perf_counter(), time.process_time()
            for t, d in zip(threads, done, strict=True):
                t.start()
                started.append(d)
            self._wait(started)
        finally:
            self.stop.set()  # no-op after a clean end; after an interrupt, every stage leaves its loop
            self._wait(started, deadline_s=STOP_GRACE_S)
            self._close_processes()   # where the detect stage did not (it never started, or is stuck)
            self.stats.wall_s = time.perf_counter() - t0
            self.stats.process_cpu_s = time.process_time() - cpu0 + self._child_cpu_s
        if self._error is not None:
            stage, err = self._error
            if isinstance(err, EmoengineError):
                raise err
            message = str(err).splitlines()[0] if str(err) else ""
            raise RunFailure(f"{stage} stage failed: {type(err).__name__}: {message}") from err
        return self.stats

    def _wait(self, done: list[threading.Event], deadline_s: float | None = None) -> None:
        """Wait for every started stage; Ctrl-C here ends a live input gracefully once, then stops the run."""
        end = None if deadline_s is None else time.perf_counter() + deadline_s
        while not all(d.is_set() for d in done):
            if end is not None and time.perf_counter() > end:
                return  # a stage stuck in a blocking read; the caller's close() calls tolerate it
            try:
                next(d for d in done if not d.is_set()).wait(timeout=0.1)
            except KeyboardInterrupt:
                if self.live and not self.end_input.is_set() and not self.stop.is_set():
                    self.end_input.set()
                    self.stats.ended_by_user = True
                    log.warning("ending the input; finishing what was read (Ctrl-C again to abort)")
                    continue
                self.stats.interrupted = True
                self.stop.set()
                if deadline_s is None:
                    raise
