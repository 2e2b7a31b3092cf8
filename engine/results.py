"""What inference gives per face and per frame; the records that trackers, annotators and writers share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FaceResult:
    """One face in one frame, everything in that frame's pixel coordinates.

    probs are softmax(expression logits) (after temporal smoothing when it is on); valence/arousal unclamped.
    conv1_mean (128,128) / emo_conv1_mean (64,64): channel-mean feature maps of this face's crop (None if taps off).
    """

    box: np.ndarray                 # (4,) float32 x1 y1 x2 y2
    det_score: float
    landmarks5: np.ndarray          # (5,2) from the detector (NaN if none)
    logits: np.ndarray              # (C,)
    probs: np.ndarray               # (C,)
    expression: str                 # argmax class name
    valence: float
    arousal: float
    landmarks68: np.ndarray         # (68,2) from EmoNet's heatmap, frame pixels
    face_id: int = -1
    conv1_mean: np.ndarray | None = None
    emo_conv1_mean: np.ndarray | None = None


@dataclass
class FrameResult:
    index: int
    time_s: float
    rgb: np.ndarray                 # (H,W,3) uint8, owned by this record (never a decoder's reused buffer)
    faces: list[FaceResult] = field(default_factory=list)
