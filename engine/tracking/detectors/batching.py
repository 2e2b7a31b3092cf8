"""Keyframes that wait are detected together: one detector call for the frames of every `detect` call that came
in while the previous call ran.

Why: the detect stage's workers each hand one keyframe at a time to the detector (engine.run.segments); on a GPU
one call over many frames costs about what one frame costs, so the workers' waiting keyframes should travel as
one batch. No timer and no thread of its own: the first caller to find the detector idle runs every waiting
request in one call (the "leader"), the others sleep until their faces are back, so a lone caller never waits
and the batch is exactly what piled up. Results and errors go back to the caller that asked.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from emoengine.engine.tracking.detectors.base import Faces


class _Request:
    __slots__ = ("frames", "result", "error", "done")

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self.result: list[Faces] = []              # set, with error, when done
        self.error: BaseException | None = None
        self.done = False


class BatchedDetector:
    """`detector` behind the same contract, with concurrent `detect` calls merged (at most `max_frames` a call;
    a single call's frames are never split). `calls` / `frames`: how many detector calls ran on how many frames."""

    def __init__(self, detector, max_frames: int = 32) -> None:
        self.detector = detector
        self.max_frames = max(1, int(max_frames))
        self.name = detector.name
        self.calls = self.frames = 0
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._busy = False

    def __getattr__(self, name: str):   # min_face, device, ... read through to the detector
        if name.startswith("__") or name == "detector":
            raise AttributeError(name)
        return getattr(self.detector, name)

    def detect(self, frames: Sequence[np.ndarray]) -> list[Faces]:
        request = _Request(list(frames))
        with self._cond:
            self._pending.append(request)
        while True:
            with self._cond:
                while self._busy and not request.done:
                    self._cond.wait()
                if request.done:
                    break
                self._busy = True          # the detector is idle: this caller runs the oldest waiting requests
                batch = self._take()
            self._run(batch)
        if request.error is not None:
            raise request.error
        return request.result

    def _take(self) -> list[_Request]:
        """The oldest waiting requests, up to max_frames frames (always at least one request)."""
        batch, total = [], 0
        while self._pending and (not batch or total + len(self._pending[0].frames) <= self.max_frames):
            total += len(self._pending[0].frames)
            batch.append(self._pending.pop(0))
        return batch

    def _run(self, batch: list[_Request]) -> None:
        try:
            found = self.detector.detect([f for r in batch for f in r.frames])
            error = None
        except BaseException as e:  # noqa: BLE001  handed to every caller of this batch, raised in each
            found, error = [], e
        with self._cond:
            start = 0
            for r in batch:
                r.result, r.error = found[start:start + len(r.frames)], error
                start += len(r.frames)
                r.done = True
            self.calls += 1
            self.frames += sum(len(r.frames) for r in batch)
            self._busy = False
            self._cond.notify_all()

    def close(self) -> None:
        self.detector.close()
