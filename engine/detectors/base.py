"""The detector contract: RGB frames in, one `Faces` record per frame out. Detectors never draw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Faces:
    """Faces found in one frame, in that frame's pixel coordinates.

    boxes: (K, 4) float32 x1, y1, x2, y2; scores: (K,) float32; landmarks: (K, 5, 2) float32
    (left eye, right eye, nose, left mouth corner, right mouth corner; NaN where a detector has none).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.boxes)
        if self.boxes.shape != (k, 4) or self.scores.shape != (k,) or self.landmarks.shape != (k, 5, 2):
            raise ValueError(
                f"Faces needs boxes (K,4), scores (K,), landmarks (K,5,2); got "
                f"{self.boxes.shape}, {self.scores.shape}, {self.landmarks.shape}"
            )

    @classmethod
    def empty(cls) -> "Faces":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, index) -> "Faces":
        """A subset (index array, mask or slice), e.g. the largest `--max-faces`."""
        return Faces(self.boxes[index], self.scores[index], self.landmarks[index])

    @property
    def areas(self) -> np.ndarray:
        return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])


class FaceDetector(Protocol):
    """Anything with `detect(frames) -> list[Faces]`; frames are RGB uint8 (H, W, 3) of any size."""

    name: str

    def detect(self, frames: Sequence[np.ndarray]) -> list[Faces]: ...

    def close(self) -> None: ...
