"""A pool of workers that takes work in order and hands the results back in that order (the detect stage's).

The detect stage cuts the frames into segments (engine.tracking.keyframes: a keyframe and the frames up to the
next), hands each to the pool, and joins their ids in frame order as the oldest segment completes. A worker's
error is reported at once through `on_error` (the pipeline then stops every stage), not when its turn comes.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections import deque
from collections.abc import Callable

_POLL_S = 0.05


def default_workers() -> int:
    """The cores this process may use (os.sched_getaffinity, so a pinned or containerised run sees its share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not Linux
        return max(1, os.cpu_count() or 1)


class OrderedPool:
    """`submit(item)` runs `work(item)` on one of `workers` threads; `oldest(stop)` waits for the result of the
    oldest item still held and returns (item, result). `close()` cancels what has not started and joins every
    thread. `quiet`: the exception type a stopped worker raises, which is no error of its own."""

    def __init__(self, work: Callable, workers: int, on_error: Callable[[BaseException], None],
                 quiet: type[BaseException], name: str = "emoengine-worker",
                 initializer: Callable[[], None] | None = None) -> None:
        self.work = work
        self.on_error = on_error
        self.quiet = quiet
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(workers)),
                                                           thread_name_prefix=name, initializer=initializer)
        self._held: deque = deque()

    def __len__(self) -> int:
        return len(self._held)

    def submit(self, item) -> None:
        future = self._pool.submit(self.work, item)
        future.add_done_callback(self._report)
        self._held.append((item, future))

    def oldest(self, stop: threading.Event, stopped: type[BaseException]):
        """(item, result) of the oldest item; raises `stopped` once `stop` is set, the work's error if it failed."""
        item, future = self._held[0]
        while True:
            if stop.is_set():
                raise stopped
            try:
                result = future.result(timeout=_POLL_S)
                break
            except concurrent.futures.TimeoutError:
                continue
        self._held.popleft()
        return item, result

    def close(self) -> None:
        self._held.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _report(self, future: concurrent.futures.Future) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None and not isinstance(error, self.quiet):
            self.on_error(error)
