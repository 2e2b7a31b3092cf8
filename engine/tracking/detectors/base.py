"""The detector contract: RGB frames in, one `Faces` record per frame out. Detectors never draw."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from emoengine.errors import UserInputError


@dataclass(frozen=True)
class Faces:
    """Faces found in one frame, in that frame's pixel coordinates.

    boxes: (K, 4) float32 x1, y1, x2, y2; scores: (K,) float32; landmarks: (K, 5, 2) float32
    (left eye, right eye, nose, left mouth corner, right mouth corner; NaN where a detector has none).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    # the boxes before clipping to the frame (None: same as `boxes`). A face cut by the frame edge is cropped
    # from this, so its crop is centred on the whole face (black beyond the edge), not on its visible part.
    crop_boxes: np.ndarray | None = None

    def __post_init__(self) -> None:
        k = len(self.boxes)
        if self.boxes.shape != (k, 4) or self.scores.shape != (k,) or self.landmarks.shape != (k, 5, 2):
            raise ValueError(
                f"Faces needs boxes (K,4), scores (K,), landmarks (K,5,2); got "
                f"{self.boxes.shape}, {self.scores.shape}, {self.landmarks.shape}"
            )
        if self.crop_boxes is not None and self.crop_boxes.shape != (k, 4):
            raise ValueError(f"Faces.crop_boxes must be (K,4) like boxes; got {self.crop_boxes.shape}")

    @classmethod
    def empty(cls) -> Faces:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, index) -> Faces:
        """A subset (index array, mask or slice), e.g. the largest `--max-faces`."""
        return Faces(self.boxes[index], self.scores[index], self.landmarks[index],
                     None if self.crop_boxes is None else self.crop_boxes[index])

    @property
    def boxes_to_crop(self) -> np.ndarray:
        """What the crop stage crops: the unclipped boxes where the detector kept them."""
        return self.boxes if self.crop_boxes is None else self.crop_boxes

    @property
    def areas(self) -> np.ndarray:
        return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])


class FaceDetector(Protocol):
    """Anything with `detect(frames) -> list[Faces]`; frames are RGB uint8 (H, W, 3) of any size."""

    name: str

    def detect(self, frames: Sequence[np.ndarray]) -> list[Faces]: ...

    def close(self) -> None: ...


def checked_min_face(value: float, smallest: float, detector: str, why: str = "") -> float:
    """`--min-face` in frame pixels, or one UserInputError line: not a finite number (nan would silently mean
    the smallest, inf would find nothing), or below the smallest face `detector` can find at all."""
    value = float(value)
    if not math.isfinite(value):
        raise UserInputError(f"min_face must be a number of pixels, not {value}", options=("min_face",))
    if value < smallest:
        raise UserInputError(f"min_face {value:g} is below {detector}'s smallest face, {smallest:g} px{why}",
                             options=("min_face",))
    return value
