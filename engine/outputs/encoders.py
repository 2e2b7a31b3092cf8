"""Video encoders on their own threads, so drawing and x264 run beside inference instead of inside the render stage.

The render stage hands each encoder the frame's record (or a feature map) through a bounded queue and moves on;
the encoder's thread draws the picture and encodes it. The queue bounds memory (a slow encoder slows the
pipeline down rather than piling up frames), the thread keeps frame order, and an error in the thread comes
back as the next `put`'s or `finish`'s exception, so a full disk still fails the run at once.

Settings, measured (benchmarks/encoder_settings.py, results in benchmarks/results/): x264 `superfast` at CRF 23
with one thread per encoder; see VIDEO_PRESET below for the numbers.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from emoengine.engine.outputs.writers import VideoWriter
from emoengine.engine.run.pipeline import lower_this_thread_priority
from emoengine.engine.run.records import StageClock, queue_frames
from emoengine.engine.run.segments import default_workers

VIDEO_PRESET = "superfast"
VIDEO_CRF = 23
ENCODER_THREADS = 1           # x264 threads per encoder: the pipeline has threads enough, x264's own cost CPU
BIG_VIDEO_PIXELS = 1280 * 720   # ... except a big video (the annotated one) where cores are plenty
CORES_PER_X264_THREAD = 4       # with 16 cores: 4 x264 threads for the annotated video, 1 for feature maps
MAX_X264_THREADS = 4
QUEUE_FRAMES = 4   # frames waiting for an encoder, fewer for big frames (queue_frames)
# over 1080p no B-frames: x264 holds a frame and its lookahead copies for each, 250 MB at 4K (measured: a 48-frame
# 4K run's x264 rose by 535 MB with them, 281 without); same CRF, so the same look, in a somewhat bigger file
NO_BFRAMES_PIXELS = 1920 * 1080
_END = object()
_POLL_S = 0.05


def encoder_threads(size: tuple[int, int]) -> int:
    """x264 threads for a video of `size`: one (the pipeline's other threads fill the cores of a small machine),
    more for a video of 720p or more where this process may use many cores (a GPU host: its encoder would
    otherwise be the slowest stage)."""
    if size[0] * size[1] < BIG_VIDEO_PIXELS:
        return ENCODER_THREADS
    return int(np.clip(default_workers() // CORES_PER_X264_THREAD, ENCODER_THREADS, MAX_X264_THREADS))


def encoder_bframes(size: tuple[int, int]) -> int | None:
    """x264's B-frames for a video of `size`: the preset's (None), none over 1080p (NO_BFRAMES_PIXELS)."""
    return 0 if size[0] * size[1] > NO_BFRAMES_PIXELS else None


class EncoderThread:
    """A `VideoWriter` fed from its own thread: `put(item)`, then `finish()` + `commit()`, or `abort()`.

    `picture(item)` makes the (H, W, 3) uint8 RGB frame to encode; it runs in the thread.
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction, size: tuple[int, int],
                 picture: Callable[[object], np.ndarray]) -> None:
        self.writer = VideoWriter(path, fps, size, crf=VIDEO_CRF, preset=VIDEO_PRESET, threads=encoder_threads(size),
                                  bframes=encoder_bframes(size))
        self.final_path = self.writer.final_path
        self.picture = picture
        self.clock = StageClock()
        self._queue: queue.Queue = queue.Queue(queue_frames(size, most=QUEUE_FRAMES))
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"emoengine-encode-{Path(path).stem}", daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        """Hand one item over, in order; blocks while the queue is full; raises the thread's error."""
        t0 = time.perf_counter()
        while True:
            self._raise_error()
            try:
                self._queue.put(item, timeout=_POLL_S)
                break
            except queue.Full:
                if not self._thread.is_alive():
                    self._raise_error()
                    raise RuntimeError(f"the encoder of {self.final_path.name} stopped") from None
        self.clock.wait_out_s += time.perf_counter() - t0

    def finish(self) -> bool:
        """Encode what is queued, flush, close the temporary file (not yet renamed); False if no frame came."""
        if self._thread.is_alive():
            self.put(_END)
            self._thread.join()
        self._raise_error()
        return self.writer.finish()

    def commit(self) -> Path:
        return self.writer.commit()

    def abort(self) -> None:
        """Stop the thread without encoding what waits, and remove the temporary file."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.writer.abort()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        lower_this_thread_priority()
        clock, cpu0 = self.clock, time.thread_time()
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    item = self._queue.get(timeout=_POLL_S)
                except queue.Empty:
                    clock.wait_in_s += time.perf_counter() - t0
                    continue
                t1 = time.perf_counter()
                clock.wait_in_s += t1 - t0
                if item is _END:
                    return
                self.writer.write(self.picture(item))
                clock.busy_s += time.perf_counter() - t1
                clock.items += 1
        except Exception as e:  # noqa: BLE001  handed to the thread that puts or finishes
            self._error = e
        finally:
            clock.cpu_s = time.thread_time() - cpu0
