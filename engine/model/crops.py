"""Face crops for EmoNet (256 x 256 RGB) and the way back from crop pixels to frame pixels.

Coordinates are continuous: pixel i covers [i, i + 1). A crop of `size` pixels shows the frame region
(x1, y1, x2, y2), so a point p in the crop is at region[:2] + p * (region size / size) in the frame. That is
exact for cv2.resize, which aligns pixel centres.

Two modes:
- "square" (default): a square around the detection's centre, side = max(w, h) * (1 + margin), rounded to whole
  pixels so that an unscaled crop is an exact copy; black (0) where it leaves the frame; INTER_LINEAR to size.
- "upstream": what EmoNet's own demo does - the detection box truncated to integers (after clipping it to the
  frame), `frame[y1:y2, x1:x2]` resized to size x size, stretching a non-square box. Its region is that box, so the
  map back is per axis.
"""

from __future__ import annotations

import cv2
import numpy as np

from emoengine.contract import CROP_SIZE
from emoengine.engine.tracking.detectors.nms import finite_boxes

# Detector boxes are tight (MTCNN's end at the eyebrows and chin, SCRFD's close to that); EmoNet was trained on
# face-alignment style crops that also hold the forehead, jaw line and a little background. 20% more side gives
# that context without making the face small in the crop.
DEFAULT_MARGIN = 0.2
CROP_MODES = ("square", "upstream")
MAX_PADDED_BYTES = 16 << 20   # above this, a region mostly outside the frame is warped, not padded


def square_regions(boxes: np.ndarray, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """(K, 4) whole-pixel squares centred on the boxes, side max(w, h) * (1 + margin), at least 1 px."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = np.maximum(np.round((boxes[:, 2:] - boxes[:, :2]).max(axis=1) * (1 + margin)), 1)
    x1y1 = np.round(centre - side[:, None] / 2)
    return np.concatenate([x1y1, x1y1 + side[:, None]], axis=1).astype(np.float32)


def upstream_regions(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(K, 4) boxes clipped to the frame and truncated to integers as upstream does, at least 1 px each way."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1 = boxes[:, 0].clip(0, width - 1).astype(np.int64)
    y1 = boxes[:, 1].clip(0, height - 1).astype(np.int64)
    x2 = np.maximum(boxes[:, 2].clip(0, width).astype(np.int64), x1 + 1)
    y2 = np.maximum(boxes[:, 3].clip(0, height).astype(np.int64), y1 + 1)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)


def _padded_patch(frame: np.ndarray, region: np.ndarray) -> np.ndarray:
    """frame[y1:y2, x1:x2] for an integer region that may leave the frame; black outside."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in region)
    patch = np.zeros((y2 - y1, x2 - x1, frame.shape[2]), frame.dtype)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if sx1 < sx2 and sy1 < sy2:
        patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = frame[sy1:sy2, sx1:sx2]
    return patch


def _warped_crop(frame: np.ndarray, region: np.ndarray, size: int) -> np.ndarray:
    """The same sampling as resizing the padded patch (pixel centres aligned, black outside), done as one affine
    warp so that no (side x side) patch is ever allocated."""
    x1, y1, x2, y2 = (float(v) for v in region)
    sx, sy = (x2 - x1) / size, (y2 - y1) / size
    m = np.array([[sx, 0, x1 + 0.5 * sx - 0.5], [0, sy, y1 + 0.5 * sy - 0.5]], np.float64)
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_faces(frame: np.ndarray, boxes: np.ndarray, size: int = CROP_SIZE, margin: float = DEFAULT_MARGIN,
               mode: str = "square") -> tuple[np.ndarray, np.ndarray]:
    """Crops (K, size, size, 3) uint8 of an RGB frame and their frame regions (K, 4) float32 x1, y1, x2, y2.

    Regions may extend beyond the frame (square mode); `regions_to_frame` maps crop points back.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, not {mode!r}")
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"crop_faces needs an RGB frame (H, W, 3); got {frame.shape}")
    h, w = frame.shape[:2]
    boxes = finite_boxes(boxes)   # a detector never should, but a NaN/inf box must not become a crash
    regions = square_regions(boxes, margin) if mode == "square" else upstream_regions(boxes, w, h)
    crops = np.empty((len(regions), size, size, 3), np.uint8)
    for i, region in enumerate(regions):
        x1, y1, x2, y2 = (int(v) for v in region)
        inside = x1 >= 0 and y1 >= 0 and x2 <= w and y2 <= h
        if not inside and (x2 - x1) * (y2 - y1) * 3 > max(4 * frame.nbytes, MAX_PADDED_BYTES):
            crops[i] = _warped_crop(frame, region, size)   # a region far larger than the frame: no huge patch
            continue
        patch = frame[y1:y2, x1:x2] if inside else _padded_patch(frame, region)
        if patch.shape[:2] == (size, size):
            crops[i] = patch
        else:
            crops[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    return crops, regions


def regions_to_frame(points: np.ndarray, regions: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Points (K, P, 2) in crop pixels -> frame pixels, per axis (square and stretched regions alike)."""
    regions = np.asarray(regions, np.float32).reshape(-1, 4)
    scale = (regions[:, 2:] - regions[:, :2]) / size
    return regions[:, None, :2] + np.asarray(points, np.float32) * scale[:, None, :]
