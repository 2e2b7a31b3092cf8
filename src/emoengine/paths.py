"""Where artifacts live: `models/` under the working directory, or $EMOENGINE_MODELS."""

from __future__ import annotations

import os
from pathlib import Path


def models_dir() -> Path:
    return Path(os.environ.get("EMOENGINE_MODELS", "models"))
