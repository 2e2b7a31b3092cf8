"""`emoengine`: EmoNet facial-emotion inference for video, with conv1 / emo-conv1 feature-map outputs.

The package's face (src/emoengine): the version, the outside contract in code (contract.py: crop size, tensor
names and shapes, taps), one comparator and tolerance table (compare.py), errors and where artifacts live, and
the Python API (api.py: `emoengine.Engine`, imported on first use) and the options of a run
(settings.py: `emoengine.RunSettings`).
Its subpackages come from the top-level folders: `emoengine.export` (build time), `emoengine.engine` (run time),
`emoengine.cli` (the command), `emoengine.benchmarks`.
"""

import os as _os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING as _TYPE_CHECKING

try:
    __version__ = _version("emoengine")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# OpenCV's bundled FFmpeg (our fallback decoder) logs demuxer warnings straight to stderr, which breaks the
# one-line error promise; it reads this before cv2 is first imported. A user may still set it to debug.
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

from emoengine.contract import CLASS_NAMES_8, class_names  # noqa: F401 - the package's face

# the Python API, imported on first use so that `import emoengine` stays fast (no numpy, typer, ONNX Runtime)
_API = ("Engine", "Analysis", "FrameStream", "Activations")

if _TYPE_CHECKING:   # what __getattr__ hands out, by its own type
    from emoengine.api import Activations as Activations
    from emoengine.api import Analysis as Analysis
    from emoengine.api import Engine as Engine
    from emoengine.api import FrameStream as FrameStream
    from emoengine.client import Client as Client
    from emoengine.settings import RunSettings as RunSettings


def __getattr__(name: str):
    if name in _API:
        from emoengine import api

        return getattr(api, name)
    if name == "RunSettings":   # every option of a run, as data (settings.py)
        from emoengine.settings import RunSettings

        return RunSettings
    if name == "Client":   # `emoengine serve`'s client (standard library only)
        from emoengine.client import Client

        return Client
    raise AttributeError(f"module 'emoengine' has no attribute {name!r}")
