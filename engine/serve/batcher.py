"""Dynamic batching: the crops of every concurrent request on a replica go to EmoNet in one call.

A request hands its crops to `CropBatcher.submit` and awaits its share. One loop collects submissions until
`max_batch` crops wait or the oldest has waited `wait_ms`, runs the model once on a free runner's thread (the
event loop stays free to take more requests meanwhile), and slices the batch back per request. We count crops, not
requests (which is what `@serve.batch` counts), so `--max-batch` means what `run --max-batch` means.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("emoengine.serve.batcher")


@dataclass
class BatchInfo:
    """Which EmoNet call answered a request: its number on this replica and how many crops it held."""

    batch_id: str
    size: int
    model_s: float


@dataclass
class _Pending:
    crops: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class CropBatcher:
    """`predict(crops) -> EmoNetBatch` (blocking calls, e.g. lent EmoNetModels') behind an async `submit`.

    `predicts`: one callable, or several that run side by side (one EmoNet call each at a time): on a CPU a
    replica runs one single-threaded session per core, which kept ~7 faces/s on 2 cores where one two-threaded
    session fell to ~6 whenever another process took a core (its ops wait for the preempted thread). `alone`: a
    callable that uses every core (the two-threaded session), taken for a lone request while every runner is
    idle, so one client's latency is not that of one core; the others wait until it is done."""

    def __init__(self, predicts, max_batch: int = 32, wait_ms: float = 10.0, name: str = "replica",
                 alone=None) -> None:
        self._predicts = list(predicts) if isinstance(predicts, (list, tuple)) else [predicts]
        self._alone = alone
        self.max_batch = max(1, int(max_batch))
        self.wait_s = max(0.0, float(wait_ms)) / 1000.0
        self._name = name
        self._queue: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._idle: list = []                        # the predicts not running a call now
        self._freed: asyncio.Event | None = None     # set when a call ends
        self._task: asyncio.Task | None = None
        self._calls: set[asyncio.Task] = set()
        self._pool = ThreadPoolExecutor(len(self._predicts), thread_name_prefix="emoengine-serve-model")
        self._seq = itertools.count()
        self.queued_crops = 0

    @property
    def runners(self) -> int:
        return len(self._predicts)

    def _ensure_loop(self) -> None:
        if self._task is None or self._task.done():
            self._wake, self._freed = asyncio.Event(), asyncio.Event()
            self._idle = list(self._predicts)
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, crops: np.ndarray):
        """(EmoNetBatch of these crops, BatchInfo of the call that ran them)."""
        self._ensure_loop()
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(crops, future))
        self.queued_crops += len(crops)
        assert self._wake is not None
        self._wake.set()
        return await future

    async def _run(self) -> None:
        assert self._wake is not None and self._freed is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            while not self._idle:                # every runner busy: the next batch keeps growing meanwhile
                self._freed.clear()
                await self._freed.wait()
            deadline = self._queue[0].queued_at + self.wait_s
            while self.queued_crops < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            taken = self._take()
            lone = self._alone is not None and len(taken) == 1 and not self._queue and \
                len(self._idle) == len(self._predicts)
            held = list(self._idle) if lone else [self._idle.pop()]
            if lone:
                self._idle.clear()
            call = asyncio.get_running_loop().create_task(self._flush(taken, self._alone if lone else held[0], held))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    def _take(self) -> list[_Pending]:
        """The oldest submissions up to max_batch crops (one over-sized request alone: the runner splits it)."""
        taken, n = [self._queue.popleft()], 0
        n = len(taken[0].crops)
        while self._queue and n + len(self._queue[0].crops) <= self.max_batch:
            taken.append(self._queue.popleft())
            n += len(taken[-1].crops)
        self.queued_crops -= n
        return [p for p in taken if not p.future.cancelled()]

    async def _flush(self, taken: list[_Pending], predict, held: list) -> None:
        """Run the call, then hand back the runners it held (one, or all for a lone request)."""
        try:
            await self._call(taken, predict)
        finally:
            self._idle.extend(held)
            if self._freed is not None:
                self._freed.set()

    async def _call(self, taken: list[_Pending], predict) -> None:
        if not taken:
            return
        crops = np.concatenate([p.crops for p in taken]) if len(taken) > 1 else taken[0].crops
        t0 = time.perf_counter()
        try:
            batch = await asyncio.get_running_loop().run_in_executor(self._pool, predict, crops)
        except Exception as e:  # noqa: BLE001  every request of the batch gets the error; the loop goes on
            log.warning("EmoNet call of %d crops failed: %s", len(crops), e)
            for p in taken:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        info = BatchInfo(f"{self._name}-{next(self._seq)}", len(crops), time.perf_counter() - t0)
        start = 0
        for p in taken:
            n = len(p.crops)
            if not p.future.done():
                p.future.set_result((batch.rows(start, start + n), info))
            start += n

    def close(self) -> None:
        for task in (self._task, *self._calls):
            if task is not None:
                task.cancel()
        self._pool.shutdown(wait=True)
