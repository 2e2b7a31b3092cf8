"""Detection on keyframes, optical flow between them, stable ids throughout: the pipeline's detect-and-track stage.

With `every` = 1 the detector runs on every frame and nothing else happens (the reference for boxes). With
`every` = N > 1 it runs on every N-th frame, and at once on the frame where a face is lost (too few corners
followed it, or it left the frame) or the scene cuts; between those frames each visible face is carried by
`flow.carry_boxes`. A face that enters the frame mid-shot is found at the next keyframe, at most N - 1 frames
late. `IouTracker` gives the ids: a keyframe's detections are matched against the boxes the flow carried up to
that frame, so a face keeps its id through keyframes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from emoengine.engine.tracking.detectors.base import Faces
from emoengine.engine.tracking.detectors.nms import clip_boxes
from emoengine.engine.tracking.flow import (
    FlowFrame,
    carry_boxes,
    flow_frame,
    left_frame,
    move_boxes,
    move_points,
    scene_cut,
)
from emoengine.engine.tracking.tracker import IouTracker


@dataclass
class Tracked:
    """One frame's faces as the stage hands them on."""

    faces: Faces
    ids: np.ndarray                       # (K,) int64 track ids, aligned with faces
    keyframe: bool                        # the detector ran on this frame
    dropped: list[int] = field(default_factory=list)   # track ids that ended here (for the smoother)


@dataclass
class TrackStats:
    detect_frames: int = 0
    tracked_frames: int = 0
    detect_s: float = 0.0
    track_s: float = 0.0
    track_cpu_s: float = 0.0      # the calling thread's CPU time in the flow


class KeyframeTracker:
    """`track(frames)` -> one `Tracked` per frame, in order. Frames are RGB uint8 (H, W, 3).

    `independent=True` is for folders of unrelated images: every image is a keyframe and ids count the faces
    of each image (0, 1, ...). `max_faces` keeps the largest detections.
    """

    def __init__(self, detector, every: int = 1, max_faces: int | None = None, independent: bool = False) -> None:
        if every < 1:
            raise ValueError(f"detect every N frames needs N >= 1, got {every}")
        self.detector = detector
        self.every = 1 if independent else int(every)
        self.max_faces = max_faces
        self.independent = independent
        # a face the detector missed on one keyframe is no longer carried; it keeps its id if the next one finds it
        self.ids = IouTracker(max_missed=max(10, 2 * self.every))
        self.stats = TrackStats()
        self._prev: FlowFrame | None = None
        self._visible = Faces.empty()
        self._visible_ids = np.zeros(0, np.int64)
        self._since_detect = 0

    def track(self, frames: Sequence[np.ndarray]) -> list[Tracked]:
        """Every frame detected in one batched call when every = 1 (the GPU path); else one frame at a time."""
        if self.every == 1:
            return [self._detected(faces) for faces in self._detect(frames)]
        return [self._one(rgb) for rgb in frames]

    # -- per frame ------------------------------------------------------------------------------------------
    def _one(self, rgb: np.ndarray) -> Tracked:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        cur = flow_frame(rgb)
        carried = self._carry(cur) if self._since_detect + 1 < self.every else None
        self._prev = cur
        self.stats.track_s += time.perf_counter() - t0
        self.stats.track_cpu_s += time.thread_time() - cpu0
        if carried is None:
            return self._detected(self._detect([rgb])[0])
        self._since_detect += 1
        self.stats.tracked_frames += 1
        dropped = self.ids.carry(self._visible_ids, carried.boxes)
        self._visible = carried
        return Tracked(carried, self._visible_ids.copy(), False, dropped)

    def _carry(self, cur: FlowFrame) -> Faces | None:
        """The visible faces moved into `cur`, or None when this frame needs the detector."""
        prev = self._prev
        if prev is None or scene_cut(prev, cur):
            return None
        faces = self._visible
        if not len(faces):
            return Faces.empty()
        full = faces.boxes_to_crop
        motion, ok = carry_boxes(prev, cur, full)
        moved = move_boxes(full, motion)
        w, h = cur.size
        if not ok.all() or left_frame(moved, w, h).any():
            return None
        landmarks = move_points(faces.landmarks, full, motion)
        return Faces(clip_boxes(moved, w, h), faces.scores.copy(), landmarks, crop_boxes=moved)

    def _detect(self, frames: Sequence[np.ndarray]) -> list[Faces]:
        t0 = time.perf_counter()
        found = self.detector.detect(list(frames)) if len(frames) else []
        if self.max_faces is not None:
            found = [f.take(np.argsort(-f.areas, kind="stable")[: self.max_faces]) if len(f) > self.max_faces
                     else f for f in found]
        self.stats.detect_s += time.perf_counter() - t0
        self.stats.detect_frames += len(found)
        return found

    def _detected(self, faces: Faces) -> Tracked:
        self._since_detect = 0
        if self.independent:
            ids, dropped = np.arange(len(faces), dtype=np.int64), []
        else:
            ids = self.ids.update(faces.boxes)
            dropped = self.ids.dropped_ids()
        self._visible, self._visible_ids = faces, ids
        return Tracked(faces, ids, True, dropped)
