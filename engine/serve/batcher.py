"""Dynamic batching: the crops of every concurrent request on a replica go to EmoNet in one call.

A request hands its crops to `CropBatcher.submit` and awaits its share. One loop collects submissions until
`max_batch` crops wait or the oldest has waited `wait_ms`, runs the model once in a worker thread (the event
loop stays free to take more requests meanwhile), and slices the batch back per request. We count crops, not
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
    """`predict(crops) -> EmoNetBatch` (a blocking call, e.g. a lent EmoNetModel's) behind an async `submit`."""

    def __init__(self, predict, max_batch: int = 32, wait_ms: float = 10.0, name: str = "replica") -> None:
        self._predict = predict
        self.max_batch = max(1, int(max_batch))
        self.wait_s = max(0.0, float(wait_ms)) / 1000.0
        self._name = name
        self._queue: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="emoengine-serve-model")
        self._seq = itertools.count()
        self.queued_crops = 0

    def _ensure_loop(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
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
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._queue[0].queued_at + self.wait_s
            while self.queued_crops < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            await self._flush(self._take())

    def _take(self) -> list[_Pending]:
        """The oldest submissions up to max_batch crops (one over-sized request alone: the runner splits it)."""
        taken, n = [self._queue.popleft()], 0
        n = len(taken[0].crops)
        while self._queue and n + len(self._queue[0].crops) <= self.max_batch:
            taken.append(self._queue.popleft())
            n += len(taken[-1].crops)
        self.queued_crops -= n
        return [p for p in taken if not p.future.cancelled()]

    async def _flush(self, taken: list[_Pending]) -> None:
        if not taken:
            return
        crops = np.concatenate([p.crops for p in taken]) if len(taken) > 1 else taken[0].crops
        t0 = time.perf_counter()
        try:
            batch = await asyncio.get_running_loop().run_in_executor(self._pool, self._predict, crops)
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
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=True)
