"""Helpers the detectors share: greedy NMS, box geometry, and turning any frame into RGB uint8.

Boxes are float arrays (K, 4) x1, y1, x2, y2 in continuous pixel coordinates (no "+1" convention).
"""

from __future__ import annotations

import cv2
import numpy as np

from emoengine.errors import UserInputError


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first.

    mode "union" is IoU; "min" divides the overlap by the smaller area (MTCNN's last stage uses it so that a
    small box lying inside a bigger face box is dropped even when their IoU is low).
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', not {mode!r}")
    boxes = np.asarray(boxes, np.float32)
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        denom = areas[i] + areas[rest] - inter if mode == "union" else np.minimum(areas[i], areas[rest])
        overlap = inter / np.maximum(denom, 1e-9)
        order = rest[overlap <= threshold]
    return np.asarray(keep, np.int64)


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square of side max(w, h) around the same centre."""
    boxes = np.asarray(boxes, np.float32)
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    side = wh.max(axis=1, keepdims=True)
    x1y1 = boxes[:, 0:2] + (wh - side) / 2
    return np.concatenate([x1y1, x1y1 + side], axis=1)


def finite_boxes(boxes) -> np.ndarray:
    """(K, 4) float64 with NaN/inf coordinates (never from a sane detector) set to 0: a box at the origin that
    crops like any other and matches no track, instead of a crash."""
    return np.nan_to_num(np.asarray(boxes, np.float64).reshape(-1, 4), nan=0.0, posinf=0.0, neginf=0.0)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip boxes to the frame [0, width] x [0, height]."""
    out = np.asarray(boxes, np.float32).copy()
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def ensure_rgb(frame: np.ndarray) -> np.ndarray:
    """Any frame a user may hand us -> contiguous RGB uint8 (H, W, 3).

    Takes grayscale (H, W) or (H, W, 1), RGB, and RGBA (alpha dropped). Other dtypes are clipped to 0..255,
    because detectors are trained on 8-bit images.
    """
    a = np.asarray(frame)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or min(a.shape[:2]) < 1:
        raise UserInputError(f"a frame must be (H,W), (H,W,1), (H,W,3) or (H,W,4); got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2RGB)
    if a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_RGBA2RGB)
    return np.ascontiguousarray(a)
