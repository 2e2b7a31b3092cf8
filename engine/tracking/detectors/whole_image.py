"""The `none` detector: the whole frame is one face, for inputs that are already face crops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emoengine.engine.tracking.detectors.base import Faces


class WholeImageDetector:
    """Box = the full frame (0, 0, W, H), score 1, landmarks NaN (nothing was detected)."""

    name = "none"

    def detect(self, frames: Sequence[np.ndarray]) -> list[Faces]:
        out = []
        for frame in frames:
            h, w = np.asarray(frame).shape[:2]
            out.append(Faces(np.array([[0, 0, w, h]], np.float32), np.ones(1, np.float32),
                             np.full((1, 5, 2), np.nan, np.float32)))
        return out

    def close(self) -> None:
        pass
