"""What a Pipeline is asked to do (PipelineOptions) and what it reports (PipelineStats)."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field

from emoengine.engine.run.records import StageClock
from emoengine.engine.run.segment_processes import SEGMENTS_IN_PROCESSES

log = logging.getLogger(__name__)

def picklable(recipe: Callable | None) -> bool:
    """A recipe a child can be sent (a detector patched in by a test or a notebook may not be: threads then)."""
    if recipe is None:
        return False
    try:
        pickle.dumps(recipe)
    except Exception as e:  # noqa: BLE001  pickling raises whatever the object's reducer raises
        log.debug(f"the detector's recipe cannot go to a worker process ({e}); the segments run on threads")
        return False
    return True


SEGMENT_BYTES = 256 << 20   # 720p: up to 11 segments of 8 frames in flight; 1080p: 5; 4K: 1


@dataclass
class PipelineOptions:
    max_batch: int = 32           # faces per inference call
    max_wait_ms: float = 40.0     # how long a partial batch may wait for more faces
    max_faces: int | None = None  # keep the largest K faces per frame
    crop_mode: str = "square"
    queue_size: int = 8
    detect_every: int = 1         # run the detector on every N-th frame, carry faces by optical flow between
    detect_batch: int = 1         # with detect_every 1: frames per detector call (a GPU detector's batch)
    independent_frames: bool = False   # a folder of unrelated images: no tracking, ids per image
    workers: int = 1              # processes (or threads) that detect and carry segments side by side
    segment_bytes: int = SEGMENT_BYTES   # decoded frames the detect stage may hold in segments in flight
    detector_recipe: Callable | None = None   # picklable: makes the detector again in a worker process
    frame_size: tuple[int, int] | None = None   # the input's (w, h) where known: no processes for 4K (one segment)

    def segments_in_flight(self, frame_bytes: int, every: int) -> int:
        """Segments handed to the workers at once: one more than the workers, fewer for big frames."""
        segment_bytes = max(1, frame_bytes * max(every, self.detect_batch))
        return max(1, min(self.workers + 1, self.segment_bytes // segment_bytes))

    def segment_processes(self, every: int) -> bool:
        """Segments in worker processes: several workers, a detector a child can make, frames that allow it."""
        w, h = self.frame_size or (0, 0)
        return (SEGMENTS_IN_PROCESSES and self.workers > 1 and picklable(self.detector_recipe)
                and self.segments_in_flight(w * h * 3, every) >= 2)


@dataclass
class PipelineStats:
    frames: int = 0
    faces: int = 0
    frames_with_face: int = 0
    detect_frames: int = 0        # frames the detector ran on
    tracked_frames: int = 0       # frames whose faces the optical flow carried
    wall_s: float = 0.0
    process_cpu_s: float = 0.0    # CPU time of every thread of the process over wall_s (pools and encoders too)
    child_peak_rss_mb: float = 0.0   # the encoder processes' peaks, added to this process's in summary.json
    stages: dict[str, StageClock] = field(default_factory=dict)
    interrupted: bool = False
    ended_by_user: bool = False   # a live input ended with Ctrl-C (the run still completed)
