"""The dynamic batcher of `emoengine serve` on its own: crops of concurrent requests share calls, each request
gets its own rows back, and a failing call fails only its own requests.

The model here is a stand-in (`RowsBatch`, a predict that sleeps): what is tested is the batching, which needs
no EmoNet; the real replicas are tested against the golden weights in test_serve.py (slow tier)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from emoengine.engine.serve.batcher import CropBatcher


class RowsBatch:
    """What EmoNetBatch offers the batcher: `rows(start, stop)`."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.values[start:stop]


def slow_predict(calls: list, seconds: float = 0.05, fail_on: int | None = None):
    def predict(crops: np.ndarray) -> RowsBatch:
        calls.append((threading.get_ident(), len(crops)))
        time.sleep(seconds)
        if fail_on is not None and fail_on in crops[:, 0, 0, 0]:
            raise RuntimeError("stand-in model failed")
        return RowsBatch(crops[:, 0, 0, 0].astype(np.int64) * 10)
    return predict


def crops_of(*ids: int) -> np.ndarray:
    out = np.zeros((len(ids), 4, 4, 3), np.uint8)
    out[:, 0, 0, 0] = ids
    return out


async def submit_all(batcher: CropBatcher, requests: list[np.ndarray]):
    try:
        return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
    finally:
        batcher.close()


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    calls: list = []
    batcher = CropBatcher(slow_predict(calls), max_batch=3, wait_ms=20)
    requests = [crops_of(i) for i in range(1, 10)] + [crops_of(20, 21)]
    answers = asyncio.run(submit_all(batcher, requests))
    for request, (rows, info) in zip(requests, answers, strict=True):
        assert list(rows) == [10 * int(i) for i in request[:, 0, 0, 0]]   # its own rows, in its order
        assert 1 <= info.size <= 3
    assert sum(n for _, n in calls) == 11 and max(n for _, n in calls) == 3 and len(calls) < 10


def test_a_failing_call_fails_its_own_requests_only_and_the_batcher_goes_on():
    calls: list = []

    async def scenario():
        batcher = CropBatcher(slow_predict(calls, fail_on=7), max_batch=1, wait_ms=0)
        try:
            bad, good = await asyncio.gather(batcher.submit(crops_of(7)), batcher.submit(crops_of(3)),
                                             return_exceptions=True)
            again = await batcher.submit(crops_of(4))
            return bad, good, again
        finally:
            batcher.close()

    bad, good, again = asyncio.run(scenario())
    assert isinstance(bad, RuntimeError) and "stand-in" in str(bad)
    assert list(good[0]) == [30] and list(again[0]) == [40]


def test_an_oversized_request_runs_alone():
    calls: list = []
    batcher = CropBatcher(slow_predict(calls, 0.0), max_batch=2, wait_ms=5)
    (rows, info), = asyncio.run(submit_all(batcher, [crops_of(1, 2, 3, 4, 5)]))
    assert list(rows) == [10, 20, 30, 40, 50] and info.size == 5
