"""The frame source contract: one iterator of owned RGB frames (engine.sources.opener opens the right source).

Every frame handed out is a fresh C-contiguous (H, W, 3) uint8 array, so later stages may keep it, queue it
or draw on a copy of it without caring what the decoder does with its own buffers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from emoengine.engine.closing import Closing

DEFAULT_STREAM_FPS = 25.0


class Frame(NamedTuple):
    index: int          # 0-based position in the source
    time_s: float       # presentation time from the source start (pts where known)
    rgb: np.ndarray     # (H, W, 3) uint8, owned by this frame


class FrameSource(Closing):
    """Base class. Iterate once for `Frame`s; `close()` (or `with`) releases the decoder."""

    kind: str = "?"                 # "video" | "image" | "images" | "stream"
    fps: float = DEFAULT_STREAM_FPS
    frame_count: int | None = None  # None when unknown (streams, cameras)
    size: tuple[int, int] = (0, 0)  # (w, h) of the first frame
    name: str = ""

    _iterated = False

    def __iter__(self) -> Iterator[Frame]:
        if self._iterated:
            raise RuntimeError(f"{self.name}: a FrameSource can be iterated only once")
        self._iterated = True
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError


    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, name={self.name!r}, fps={self.fps:g}, "
                f"frame_count={self.frame_count}, size={self.size})")
