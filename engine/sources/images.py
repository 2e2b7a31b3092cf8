"""Images as frame sources: one image file, or a folder of images in natural order."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from emoengine.engine.sources.frame_source import Frame, FrameSource
from emoengine.errors import UserInputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2",
     ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic"}
)


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from any image OpenCV reads; unicode paths, grey/alpha/16-bit, EXIF orientation."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UserInputError(f"cannot read image {path}: {e.strerror or e}") from None
    return decode_image(data, path)


def decode_image(data: np.ndarray, name) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an encoded image's bytes (a file's, or an upload's: `emoengine serve`)."""
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None  # gray->3ch, alpha dropped, 16->8 bit
    if bgr is None:
        raise UserInputError(f"not a readable image: {name}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def natural_key(name: str) -> list:
    """'img2' before 'img10', case-insensitive."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class ImageFileSource(FrameSource):
    kind = "image"

    def __init__(self, path: Path, fps: float | None = None) -> None:
        self.name = str(path)
        self.fps = float(fps or 1.0)
        self.frame_count = 1
        self._rgb = read_image(path)
        self.size = (self._rgb.shape[1], self._rgb.shape[0])

    def _frames(self) -> Iterator[Frame]:
        rgb, self._rgb = self._rgb, None
        if rgb is not None:   # the one frame, handed out once
            yield Frame(0, 0.0, rgb)


class ImageFolderSource(FrameSource):
    """Images of a folder in natural order (hidden files and non-images skipped); time = index / fps."""

    kind = "images"

    def __init__(self, folder: Path, fps: float | None = None) -> None:
        self.name = str(folder)
        self.fps = float(fps or 1.0)
        self.paths = sorted(
            (p for p in folder.iterdir()
             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
            key=lambda p: natural_key(p.name),
        )
        if not self.paths:
            raise UserInputError(f"no images in folder: {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        self.frame_count = len(self.paths)
        self.skipped: list[str] = []
        self._first = None
        for path in self.paths:  # the first readable image gives the size
            self._first = self._read_or_skip(path)
            if self._first is not None:
                break
        if self._first is None:
            raise UserInputError(f"no readable image in folder: {folder}")
        self.size = (self._first.shape[1], self._first.shape[0])

    def _read_or_skip(self, path: Path) -> np.ndarray | None:
        """One unreadable file must not sink a 100,000-image dataset run: warn, skip, remember it."""
        try:
            return read_image(path)
        except UserInputError as e:
            self.skipped.append(path.name)
            log.warning(f"warning: skipping {path.name}: {e}")
            return None

    def _frames(self) -> Iterator[Frame]:
        """Frame index = position in `paths` (kept for skipped files, so index → file stays exact)."""
        first, self._first = self._first, None   # the first readable file, already read in __init__
        for i, path in enumerate(self.paths):
            if path.name in self.skipped:
                continue
            if first is not None:
                rgb, first = first, None
            else:
                rgb = self._read_or_skip(path)
                if rgb is None:
                    continue
            yield Frame(i, i / self.fps, rgb)
