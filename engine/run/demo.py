"""`emoengine demo`: a clip made from photos that ship inside our dependencies, run end to end offline.

insightface's wheel carries `t1.jpg` (six people) and `Tom_Hanks_54745.png`; we pan and zoom over the
group photo and move and grow the single face over a plain background, so faces travel and change size.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from emoengine.errors import UserInputError

DEMO_SIZE = (640, 360)


def shipped_photo(name: str) -> np.ndarray:
    """An RGB photo from insightface's wheel (`t1.jpg`, `Tom_Hanks_54745.png`)."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError("the demo uses photos shipped in the insightface package: pip install insightface")
    path = Path(spec.submodule_search_locations[0]) / "data" / "images" / name
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserInputError(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def group_pan_frames(n: int, size=DEMO_SIZE):
    """A window sliding and zooming over t1.jpg: six faces moving across the frame."""
    photo = shipped_photo("t1.jpg")
    ph, pw = photo.shape[:2]
    w, h = size
    for i in range(n):
        t = i / max(n - 1, 1)
        zoom = 1.0 - 0.25 * t                      # window shrinks → faces grow
        win_w = pw * zoom
        win_h = win_w * h / w
        x0 = (pw - win_w) * t
        y0 = min((ph - win_h) * 0.5, max(0.0, ph - win_h))
        m = np.array([[w / win_w, 0, -x0 * w / win_w], [0, h / win_h, -y0 * h / win_h]], np.float32)
        yield cv2.warpAffine(photo, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def group_in_view_frames(n: int, size=DEMO_SIZE):
    """A camera zooming in on t1.jpg (window 1.25x to 0.94x the photo's width) while panning from side to side,
    with all six faces in view in every frame (black beyond the photo): for tracking, unlike the demo's pan."""
    photo = shipped_photo("t1.jpg")
    ph, pw = photo.shape[:2]
    w, h = size
    left, right, centre_y = 0.045 * pw, 0.97 * pw, 0.3 * ph     # the faces' extent in the photo, and middle
    for i in range(n):
        t = i / max(n - 1, 1)
        win_w = pw * (1.25 - 0.31 * t)
        win_h = win_w * h / w
        lo, hi = right - win_w, left                              # x0 range that keeps every face in the window
        x0 = (lo + hi) / 2 + 0.4 * (hi - lo) * np.sin(2 * np.pi * t)
        y0 = centre_y - win_h / 2
        m = np.array([[w / win_w, 0, -x0 * w / win_w], [0, h / win_h, -y0 * h / win_h]], np.float32)
        yield cv2.warpAffine(photo, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def single_face_frames(n: int, size=DEMO_SIZE, face_px=(110, 220)):
    """Tom Hanks' face travelling left to right and growing, over a soft gradient background."""
    face = shipped_photo("Tom_Hanks_54745.png")
    w, h = size
    gx = np.linspace(60, 170, w, dtype=np.float32)[None, :, None]
    gy = np.linspace(0, 40, h, dtype=np.float32)[:, None, None]
    background = np.clip(gx + gy + np.array([10, 20, 30], np.float32), 0, 255).astype(np.uint8)
    for i in range(n):
        t = i / max(n - 1, 1)
        side = int(face_px[0] + (face_px[1] - face_px[0]) * t)
        f = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
        x = int(20 + (w - side - 40) * t)
        y = int((h - side) / 2 + 20 * np.sin(2 * np.pi * t))
        frame = background.copy()
        frame[y:y + side, x:x + side] = f
        yield frame


def demo_frames(n: int = 96, size=DEMO_SIZE):
    """The whole demo clip: half single face, half group pan."""
    yield from single_face_frames(n // 2, size)
    yield from group_pan_frames(n - n // 2, size)


def write_clip(path: Path, frames, fps: float = 24.0) -> Path:
    from emoengine.engine.outputs.writers import VideoWriter

    writer = None
    try:
        for frame in frames:
            if writer is None:
                writer = VideoWriter(path, fps, (frame.shape[1], frame.shape[0]))
            writer.write(frame)
        if writer is None:
            raise ValueError(f"no frames to write to {path}")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return Path(path)
