"""Frame sources: one iterator of owned RGB frames over a video file, an image, a folder, a camera or a stream.

`open_source` picks the source for what the user named: video files and streams (engine.sources.video,
with engine.sources.container_checks refusing files cut short), images and folders of images
(engine.sources.images), cameras.
Every frame handed out is a fresh C-contiguous (H, W, 3) uint8 array (engine.sources.frame_source). Bad input is a
`UserInputError` with one line that says what is wrong with which file.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from emoengine.engine.sources.container_checks import container_truncation
from emoengine.engine.sources.frame_source import Frame, FrameSource
from emoengine.engine.sources.images import IMAGE_SUFFIXES, ImageFileSource, ImageFolderSource
from emoengine.engine.sources.video import CameraSource, OpenCVVideoSource, PyAVSource, _CannotOpen
from emoengine.errors import UserInputError

__all__ = ["Frame", "FrameSource", "open_source", "open_video_file"]

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "file")


def open_source(spec: str | os.PathLike, *, fps: float | None = None) -> FrameSource:
    """Open what the user named. `fps` sets the frame rate of image inputs (default 1.0); videos keep theirs."""
    spec = os.fspath(spec)
    scheme = urlparse(spec).scheme.lower() if "://" in spec else ""
    if scheme in STREAM_SCHEMES:
        return PyAVSource(spec, kind="stream")
    if scheme:
        raise UserInputError(f"unsupported stream URL scheme {scheme!r}: {spec} "
                             f"(supported: {', '.join(STREAM_SCHEMES)})")
    if spec.isdigit() and not Path(spec).exists():
        return CameraSource(int(spec))
    path = Path(spec)
    if not path.exists():
        raise UserInputError(f"no such file or folder: {spec}")
    if path.is_dir():
        return ImageFolderSource(path, fps=fps)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFileSource(path, fps=fps)
    return open_video_file(path)


def open_video_file(path: Path) -> FrameSource:
    """PyAV first (frame threading, exact pts); OpenCV when PyAV cannot open the file at all."""
    if path.stat().st_size == 0:
        raise UserInputError(f"not a readable video: {path} (empty file)")
    cut = container_truncation(path)
    if cut:
        raise UserInputError(f"truncated video: {path} ({cut}); it was probably cut off while being written")
    try:
        return PyAVSource(str(path), kind="video")
    except _CannotOpen as e:
        # OpenCV bundles its own FFmpeg build: worth a try when PyAV lacks a decoder, not when the data
        # itself is unrecognisable (the same probe would only fail again, noisily).
        cv_source = None if e.final else OpenCVVideoSource.try_open(path)
        if cv_source is not None:
            return cv_source
        raise UserInputError(f"not a readable video: {path} ({e})") from None
