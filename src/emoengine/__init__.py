"""emoengine: EmoNet facial-emotion inference for video, with conv1 / emo-conv1 feature-map outputs."""

import os as _os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("emoengine")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# OpenCV's bundled FFmpeg (our fallback decoder) logs demuxer warnings straight to stderr, which breaks the
# one-line error promise; it reads this before cv2 is first imported. A user may still set it to debug.
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

CLASS_NAMES_8 = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")


def class_names(num_classes: int) -> tuple[str, ...]:
    """Upstream EmoNet's class names: the 5-class model uses the first five of the 8-class list."""
    if num_classes not in (5, 8):
        raise ValueError(f"EmoNet has 5 or 8 classes, not {num_classes}")
    return CLASS_NAMES_8[:num_classes]
