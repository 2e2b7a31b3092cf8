"""Detection on keyframes, optical flow between them, stable ids throughout: the pipeline's detect-and-track stage.

With `every` = 1 the detector runs on every frame and nothing else happens (the reference for boxes). With
`every` = N > 1 the frames fall into *segments* of N: frames 0..N-1, N..2N-1, ... The detector runs on each
segment's first frame (the keyframe), and at once on a frame where a face is lost (too few corners followed it,
or it left the frame) or the scene cuts; between those frames each visible face is carried by
`flow.carry_boxes`. A face that enters the frame mid-shot is found at the next keyframe, at most N - 1 frames
late. A segment needs nothing from the frames before it, so segments can be detected and carried on a pool of
workers (engine.run.detect_pool); only the ids are sequential: `TrackIds` (IouTracker) matches each keyframe's
detections against the boxes carried up to it, so a face keeps its id across segments, whatever the number of
workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
    detect_cpu_s: float = 0.0     # the detecting threads' CPU time
    track_cpu_s: float = 0.0      # the flow's threads' CPU time

    def add(self, other: TrackStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class SegmentFaces:
    """A segment's faces, frame by frame, before ids: what a worker hands back."""

    faces: list[Faces]
    keyframes: list[bool]
    stats: TrackStats


def detect_faces(detector, frames: Sequence[np.ndarray], max_faces: int | None, stats: TrackStats) -> list[Faces]:
    """The detector on `frames` (one call), the largest `max_faces` kept; timed into `stats`."""
    t0, cpu0 = time.perf_counter(), time.thread_time()
    found = detector.detect(list(frames)) if len(frames) else []
    if max_faces is not None:
        found = [f.take(np.argsort(-f.areas, kind="stable")[:max_faces]) if len(f) > max_faces else f
                 for f in found]
    stats.detect_s += time.perf_counter() - t0
    stats.detect_cpu_s += time.thread_time() - cpu0
    stats.detect_frames += len(found)
    return found


class Segment:
    """Detection and flow over one segment, a frame at a time (`add`); its first frame is always detected."""

    def __init__(self, detect: Callable[[Sequence[np.ndarray], TrackStats], list[Faces]]) -> None:
        self.detect = detect
        self.stats = TrackStats()
        self._prev: FlowFrame | None = None
        self._visible = Faces.empty()

    def add(self, rgb: np.ndarray) -> tuple[Faces, bool]:
        """This frame's faces and whether the detector found them (False: the flow carried them)."""
        t0, cpu0 = time.perf_counter(), time.thread_time()
        cur = flow_frame(rgb)
        carried = None if self._prev is None else self._carry(self._prev, cur)
        self._prev = cur
        self.stats.track_s += time.perf_counter() - t0
        self.stats.track_cpu_s += time.thread_time() - cpu0
        if carried is None:
            self._visible = self.detect([rgb], self.stats)[0]
            return self._visible, True
        self.stats.tracked_frames += 1
        self._visible = carried
        return carried, False

    def _carry(self, prev: FlowFrame, cur: FlowFrame) -> Faces | None:
        """The visible faces moved from `prev` into `cur`, or None when this frame needs the detector."""
        if scene_cut(prev, cur):
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


class TrackIds:
    """Ids for frames in order: a keyframe's faces matched against the last boxes (IouTracker.update), a carried
    frame's faces keep the ids of the frame before (they are the same faces, in the same order)."""

    def __init__(self, every: int, independent: bool = False) -> None:
        self.independent = independent
        # a face the detector missed on one keyframe is no longer carried; it keeps its id if the next one finds it
        self.ids = IouTracker(max_missed=max(10, 2 * every))
        self._visible_ids = np.zeros(0, np.int64)

    def join(self, faces: Faces, keyframe: bool) -> Tracked:
        if not keyframe:
            dropped = self.ids.carry(self._visible_ids, faces.boxes)
            return Tracked(faces, self._visible_ids.copy(), False, dropped)
        if self.independent:
            ids, dropped = np.arange(len(faces), dtype=np.int64), []
        else:
            ids = self.ids.update(faces.boxes)
            dropped = self.ids.dropped_ids()
        self._visible_ids = ids
        return Tracked(faces, ids, True, dropped)


class KeyframeTracker:
    """`track(frames)` -> one `Tracked` per frame, in order. Frames are RGB uint8 (H, W, 3).

    The sequential form of what the pipeline's workers do: `segment_faces` (any thread, any order: it touches no
    state but the detector's) then `join` (in frame order). `independent=True` is for folders of unrelated
    images: every image is a keyframe and ids count the faces of each image (0, 1, ...). `max_faces` keeps the
    largest detections.
    """

    def __init__(self, detector, every: int = 1, max_faces: int | None = None, independent: bool = False) -> None:
        if every < 1:
            raise ValueError(f"detect every N frames needs N >= 1, got {every}")
        self.detector = detector
        self.every = 1 if independent else int(every)
        self.max_faces = max_faces
        self.independent = independent
        self.stats = TrackStats()
        self._ids = TrackIds(self.every, independent)
        self._segment: Segment | None = None
        self._position = 0   # frames seen: where the segments start (every `every`-th frame)

    def track(self, frames: Sequence[np.ndarray]) -> list[Tracked]:
        """Every frame detected in one batched call when every = 1 (the GPU path); else one frame at a time."""
        if self.every == 1:
            return self.join(self.segment_faces(frames))
        out = []
        for rgb in frames:
            segment = self._segment
            if segment is None or self._position % self.every == 0:   # (None: only before the first frame)
                segment = self._segment = Segment(self._detect)
            faces, keyframe = segment.add(rgb)
            self.stats.add(segment.stats)
            segment.stats = TrackStats()
            self._position += 1
            out.append(self._ids.join(faces, keyframe))
        return out

    def segment_faces(self, frames: Sequence[np.ndarray], stop: Callable[[], None] = lambda: None) -> SegmentFaces:
        """One segment's faces (with every = 1: a batch of keyframes, one detector call). `stop()` is called
        before each frame; what it raises ends the segment (a stopped run)."""
        if self.every == 1:
            stop()
            stats = TrackStats()
            found = self._detect(frames, stats)
            return SegmentFaces(found, [True] * len(found), stats)
        segment, faces, keyframes = Segment(self._detect), [], []
        for rgb in frames:
            stop()
            f, k = segment.add(rgb)
            faces.append(f)
            keyframes.append(k)
        return SegmentFaces(faces, keyframes, segment.stats)

    def join(self, segment: SegmentFaces) -> list[Tracked]:
        """Ids for a segment's faces; segments must come in frame order. Its stats are added to `stats`."""
        self.stats.add(segment.stats)
        segment.stats = TrackStats()
        return [self._ids.join(f, k) for f, k in zip(segment.faces, segment.keyframes, strict=True)]

    def _detect(self, frames: Sequence[np.ndarray], stats: TrackStats) -> list[Faces]:
        return detect_faces(self.detector, frames, self.max_faces, stats)
