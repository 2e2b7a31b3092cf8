"""The record of one frame on its way from the decoder to the writers, the per-face results it gathers, and the
clock each stage keeps.

One `FrameRecord` per frame travels the whole pipeline; each stage adds its part and none makes a new shape:
decode (index, time, pixels) -> detect/track (detections, ids) -> crop (crops, regions) -> infer (predictions)
-> assemble (faces: `FaceResult`s in frame pixels, what annotators and writers read). Stages drop what later
ones no longer need (crops after inference, predictions after assembly), so a queued record stays small.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from emoengine.engine.model.emonet_model import EmoNetBatch
    from emoengine.engine.tracking.detectors.base import Faces

# every thread but inference runs at nice +BACKGROUND_NICE (the run's child processes too): where threads outnumber
# cores, a core goes to EmoNet (ONNX Runtime's pool, nice 0) whenever it wants one, the other stages fill the gaps
BACKGROUND_NICE = 5
QUEUE_BYTES = 16 << 20   # decoded frames one queue of records may hold (see queue_frames)


def queue_frames(size: tuple[int, int], most: int = 8) -> int:
    """Records of `size` frames a queue may hold: `most`, fewer for big frames, so that each queue stays near
    QUEUE_BYTES (640x360: 8 frames; 720p: 6; 1080p: 2; 4K: 2, never fewer: one in, one out)."""
    frame_bytes = max(1, size[0] * size[1] * 3)
    return max(2, min(most, QUEUE_BYTES // frame_bytes))


@dataclass
class FaceResult:
    """One face in one frame, everything in that frame's pixel coordinates.

    probs are softmax(expression logits) (after temporal smoothing when it is on); valence/arousal unclamped.
    taps: the run's taps (`run --taps`, the defaults among them) by module path: this face's channel-mean map
    (2-D float32) for a map tap, its vector (1-D float32) for a vector tap (engine.model.tapset). channels: each map
    tap's per-channel spatial means (C,) float32, where the run keeps them (activations.npz's `<stem>_channels`).
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
    taps: Mapping[str, np.ndarray] = field(default_factory=dict)
    channels: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass
class FrameRecord:
    """One frame and everything the stages found in it so far (see the module docstring for who adds what)."""

    index: int
    time_s: float
    rgb: np.ndarray                 # (H,W,3) uint8, owned by this record (never a decoder's reused buffer)
    faces: list[FaceResult] = field(default_factory=list)          # assembled: what the writers read
    detections: Faces | None = None                                 # detect/track: boxes in frame pixels
    ids: np.ndarray | None = None                                   # track ids, aligned with detections
    keyframe: bool = False                                          # the detector ran on this frame
    dropped_ids: list[int] = field(default_factory=list)           # tracks that ended at this frame
    crops: np.ndarray | None = None                                 # crop: (K,256,256,3) uint8
    regions: np.ndarray | None = None                               # the frame square each crop shows
    predictions: EmoNetBatch | None = None                          # infer
    # by face id, module path -> the tap untouched (--full-taps, --tap-view grid): only while the writers need it
    full_maps: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def num_detections(self) -> int:
        return 0 if self.detections is None else len(self.detections)


@dataclass
class StageClock:
    """Busy seconds (doing a stage's own work) and seconds waiting on the queues around it; the pipeline's
    stages and the encoders' threads each keep one. cpu_s: the CPU time of the stage's thread (busy seconds
    include waiting for a core when other processes or threads have them; CPU seconds do not)."""

    busy_s: float = 0.0
    cpu_s: float = 0.0
    wait_in_s: float = 0.0
    wait_out_s: float = 0.0
    items: int = 0
