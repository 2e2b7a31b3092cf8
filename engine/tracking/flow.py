"""Carrying face boxes from one frame to the next with sparse optical flow (the "median flow" idea).

Between keyframes the detector does not run: each face's box moves by the median displacement of corners
(`goodFeaturesToTrack`) followed inside it with pyramidal Lucas-Kanade, and scales by the median change of the
distances between those corners (Kalal, Mikolajczyk, Matas: "Forward-Backward Error", ICPR 2010). A corner
counts only if following it forward and then back lands within `FB_MAX_PX` of where it started; a box with
fewer than `MIN_POINTS` such corners is lost, and so is one that leaves the frame. A grey copy of the frame,
downscaled so that its long side is at most `FLOW_LONG_SIDE`, is all this needs: face boxes move by whole
pixels, and a 1080p frame's flow costs what a 640x360 one does.

Scene cuts are found on a 32x18 thumbnail: a mean absolute grey difference above `CUT_MEAN_DIFF` between two
consecutive frames means a new shot (a pan or a zoom changes a thumbnail far less than a cut does).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

FLOW_LONG_SIDE = 640
# measured (CPU time, 720p, 96 frames carried with no keyframe): window 15 / 3 levels / 20 iterations 4.8 ms a
# frame for one face, 9.6 for six, IoU with per-frame detection 0.912 median; 11 / 2 / 10: 3.9 and 7.2 ms, 0.905
LK_WINDOW = (11, 11)
LK_LEVELS = 2                 # follows up to about 20 flow pixels a frame; a faster face fails the check: detected
LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.03)
MAX_CORNERS = 40
MIN_POINTS = 6
FB_MAX_PX = 1.0               # forward-backward error allowed, in flow-image pixels
MIN_VISIBLE = 0.5             # a box with less than half of itself inside the frame has left it
THUMB_SIZE = (32, 18)
CUT_MEAN_DIFF = 40.0          # grey levels; measured: pans and zooms < 15, cuts between faces > 50


@dataclass
class FlowFrame:
    """One frame as the flow sees it: a downscaled grey image and a thumbnail for cuts."""

    grey: np.ndarray
    scale: float                  # flow-image pixels per frame pixel
    size: tuple[int, int]         # the frame's (w, h)
    thumb: np.ndarray


def flow_frame(rgb: np.ndarray) -> FlowFrame:
    h, w = rgb.shape[:2]
    scale = min(1.0, FLOW_LONG_SIDE / max(h, w))
    small = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                                               interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    thumb = cv2.resize(grey, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.int16)
    return FlowFrame(grey, scale, (w, h), thumb)


def scene_cut(prev: FlowFrame, cur: FlowFrame) -> bool:
    """True when `cur` starts a new shot (or the frame size changed)."""
    if prev.size != cur.size:
        return True
    return float(np.abs(prev.thumb - cur.thumb).mean()) > CUT_MEAN_DIFF


def _corners(grey: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Up to MAX_CORNERS corners inside the inner 80 % of `box` (flow pixels): the face, not the background."""
    h, w = grey.shape
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = 0.4 * (box[2] - box[0]), 0.4 * (box[3] - box[1])
    x1, y1 = int(max(0, np.floor(cx - hw))), int(max(0, np.floor(cy - hh)))
    x2, y2 = int(min(w, np.ceil(cx + hw))), int(min(h, np.ceil(cy + hh)))
    if x2 - x1 < 4 or y2 - y1 < 4:
        return np.zeros((0, 2), np.float32)
    spacing = max(2.0, min(x2 - x1, y2 - y1) / 10)
    found = cv2.goodFeaturesToTrack(grey[y1:y2, x1:x2], MAX_CORNERS, 0.01, spacing)
    if found is None:
        return np.zeros((0, 2), np.float32)
    return found.reshape(-1, 2) + np.array([x1, y1], np.float32)


@functools.lru_cache(maxsize=MAX_CORNERS + 1)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def _median_motion(p0: np.ndarray, p1: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, scale) of a point set: median shift, and the median ratio of pairwise distances (taken on
    squared distances, whose median ratio is the square of it: no square roots)."""
    dx, dy = np.median(p1 - p0, axis=0)
    i, j = _pairs(len(p0))
    d0, d1 = p0[i] - p0[j], p1[i] - p1[j]
    n0, n1 = np.einsum("ij,ij->i", d0, d0), np.einsum("ij,ij->i", d1, d1)
    ok = n0 > 1.0
    scale = float(np.sqrt(np.median(n1[ok] / n0[ok]))) if ok.any() else 1.0
    return float(dx), float(dy), scale


def carry_boxes(prev: FlowFrame, cur: FlowFrame, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where `boxes` (K, 4, frame pixels, unclipped) of `prev` are in `cur`.

    Returns (K, 3) motions (dx, dy in frame pixels about the box centre, scale) and (K,) ok; a box that is not
    ok is lost (too few corners followed it) and its motion is meaningless.
    """
    k = len(boxes)
    motion = np.tile(np.array([0.0, 0.0, 1.0], np.float64), (k, 1))
    ok = np.zeros(k, bool)
    if not k:
        return motion, ok
    s = prev.scale
    points = [_corners(prev.grey, b * s) for b in np.asarray(boxes, np.float64)]
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(points)])
    p0 = np.concatenate(points).astype(np.float32).reshape(-1, 1, 2)
    if not len(p0):
        return motion, ok
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev.grey, cur.grey, p0, None, winSize=LK_WINDOW,
                                          maxLevel=LK_LEVELS, criteria=LK_CRITERIA)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(cur.grey, prev.grey, p1, None, winSize=LK_WINDOW,
                                            maxLevel=LK_LEVELS, criteria=LK_CRITERIA)
    fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
    good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < FB_MAX_PX)
    p0, p1 = p0.reshape(-1, 2), p1.reshape(-1, 2)
    for i in range(k):
        mine = good & (owner == i)
        if mine.sum() < MIN_POINTS:
            continue
        dx, dy, scale = _median_motion(p0[mine], p1[mine])
        motion[i] = (dx / s, dy / s, scale)
        ok[i] = True
    return motion, ok


def move_boxes(boxes: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """Boxes (K, 4) shifted by (dx, dy) and scaled about their centres."""
    boxes = np.asarray(boxes, np.float64)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + motion[:, :2]
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * motion[:, 2:3]
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


def move_points(points: np.ndarray, boxes: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """Points (K, P, 2) of each box moved as the box moves (e.g. a detector's five landmarks)."""
    boxes = np.asarray(boxes, np.float64)
    centre = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2
    moved = centre + motion[:, None, :2] + (np.asarray(points, np.float64) - centre) * motion[:, None, 2:3]
    return moved.astype(np.float32)


def left_frame(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(K,) True for boxes with less than MIN_VISIBLE of their area inside the frame."""
    boxes = np.asarray(boxes, np.float64)
    area = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 0), axis=1)
    inside = np.prod(np.maximum(np.minimum(boxes[:, 2:], [width, height]) - np.maximum(boxes[:, :2], 0), 0), axis=1)
    return inside < MIN_VISIBLE * np.maximum(area, 1e-9)
