"""Where artifacts live: `models/` under the working directory, or $EMOENGINE_MODELS; and the one check that a
model file given by name exists."""

from __future__ import annotations

import os
from pathlib import Path


def models_dir() -> Path:
    return Path(os.environ.get("EMOENGINE_MODELS", "models"))


def model_file(path: str | os.PathLike) -> Path:
    """`path` as a Path where it is a file; else the one "no such model file" refusal (exit 2)."""
    if not Path(path).is_file():
        from emoengine.errors import UserInputError

        raise UserInputError(f"no such model file: {path}")
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints and engines are large)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
