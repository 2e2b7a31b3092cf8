"""Feature maps as pictures: a tap's channel mean of the main face (`--tap-view mean`), or its channels side by
side (`--tap-view grid`), one video frame each.

Each map (each tile of a grid) is min-max scaled on its own (absolute activations vary a lot from face to face;
the pattern is what is of interest), coloured with viridis (perceptually uniform, readable in grey), and upscaled
with nearest neighbour by default so that one map cell stays one visible block (a grid tile larger than its
square is shrunk by area averaging instead).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from emoengine.engine.outputs.writers import write_png

COLORMAP = cv2.COLORMAP_VIRIDIS
_INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
# --tap-view grid: the first GRID_MAX_TILES channels, GRID_TILE px squares GRID_GAP px apart on black, in a
# near-square grid of ceil(sqrt(n)) columns (64 or more channels: 8 x 8 tiles, a 526 x 526 video)
GRID_MAX_TILES = 64
GRID_TILE = 64
GRID_GAP = 2
# COLORMAP as an RGB lookup table: one np.take instead of applyColorMap + a BGR -> RGB conversion
_RGB_LUT = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(1, 256), COLORMAP)[0, :, ::-1].copy()


def normalise(fmap: np.ndarray) -> np.ndarray:
    """uint8 0..255 after per-map min-max; a constant (or all non-finite) map is all 0, never a 0/0."""
    # float64: a float32 range near its limits (±3e38, or a subnormal width) would overflow to inf
    a = np.nan_to_num(np.asarray(fmap, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.round((a - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def colorize(fmap: np.ndarray, out_size: tuple[int, int], interpolation: str = "nearest") -> np.ndarray:
    """(h, w) float map -> (H, W, 3) RGB uint8 of `out_size` (w, h). Nearest: coloured at the map's own size,
    then enlarged (the same pixels, 4x less colouring for a 128² map shown at 256²)."""
    if np.ndim(fmap) != 2:
        raise ValueError(f"a feature map is 2-D (h, w), got shape {np.shape(fmap)}")
    size = tuple(int(v) for v in out_size)
    gray = normalise(fmap)
    if interpolation == "nearest":
        return cv2.resize(np.take(_RGB_LUT, gray, axis=0), size, interpolation=cv2.INTER_NEAREST)
    resized = cast(np.ndarray, cv2.resize(gray, size, interpolation=_INTERPOLATION[interpolation]))   # cv2: MatLike
    return np.take(_RGB_LUT, resized, axis=0)


def feature_map_frame(fmap: np.ndarray | None, out_size: tuple[int, int],
                      interpolation: str = "nearest") -> np.ndarray:
    """One video frame for one map; black when there is no face (`fmap is None`)."""
    if fmap is None:
        w, h = out_size
        return np.zeros((int(h), int(w), 3), np.uint8)
    return colorize(fmap, out_size, interpolation)


def grid_columns_rows(channels: int) -> tuple[int, int]:
    """The grid for a tap of `channels` channels: (columns, rows) of the tiles shown."""
    n = max(1, min(int(channels), GRID_MAX_TILES))
    cols = int(np.ceil(np.sqrt(n)))
    return cols, int(np.ceil(n / cols))


def grid_size(channels: int) -> tuple[int, int]:
    """(width, height) in pixels of the grid picture of a tap of `channels` channels (always even)."""
    cols, rows = grid_columns_rows(channels)
    return cols * GRID_TILE + (cols - 1) * GRID_GAP, rows * GRID_TILE + (rows - 1) * GRID_GAP


def grid_frame(tensor: np.ndarray | None, channels: int) -> np.ndarray:
    """One video frame of `--tap-view grid`: the first channels of a (C, H, W) tap as tiles, each min-max scaled
    on its own (as the seed notebook's per-channel pictures); black when there is no face (`tensor is None`)."""
    w, h = grid_size(channels)
    out = np.zeros((h, w, 3), np.uint8)
    if tensor is None:
        return out
    maps = np.asarray(tensor)
    maps = maps[None] if maps.ndim == 2 else maps
    cols, _ = grid_columns_rows(channels)
    for i, fmap in enumerate(maps[:GRID_MAX_TILES]):
        row, col = divmod(i, cols)
        y, x = row * (GRID_TILE + GRID_GAP), col * (GRID_TILE + GRID_GAP)
        shrink = max(fmap.shape) > GRID_TILE
        out[y:y + GRID_TILE, x:x + GRID_TILE] = colorize(fmap, (GRID_TILE, GRID_TILE), "area" if shrink else "nearest")
    return out


class MeanMapAccumulator:
    """Running mean of raw (un-normalised) maps over the frames that had a face (a (C, H, W) stack of maps too)."""

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self.count = 0

    def add(self, fmap: np.ndarray | None) -> None:
        """Add one map; None (no face in that frame) is skipped."""
        if fmap is None:
            return
        a = np.asarray(fmap, np.float64)
        if not np.isfinite(a).all():
            a = np.nan_to_num(a)
        if self._sum is None:
            self._sum = a.copy()
        elif a.shape != self._sum.shape:
            raise ValueError(f"feature map shape changed from {self._sum.shape} to {a.shape}")
        else:
            self._sum += a
        self.count += 1

    def mean(self) -> np.ndarray | None:
        return None if self._sum is None else (self._sum / self.count).astype(np.float32)

    def save_png(self, path: str | os.PathLike, size: tuple[int, int],
                 interpolation: str = "nearest") -> Path:
        """The mean map, min-max scaled and coloured, atomically; black if no frame had a face."""
        return write_png(path, feature_map_frame(self.mean(), size, interpolation))
