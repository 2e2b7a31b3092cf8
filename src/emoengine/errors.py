"""Errors the CLI turns into one line on stderr and an exit status (see CONTRACT.md)."""


class EmoengineError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UserInputError(EmoengineError, ValueError):
    """Bad usage or bad input: a missing file, not a video, a wrong checkpoint... (exit 2).

    Also a ValueError, so Python callers catch bad input the usual way (CONTRACT.md, Python API). `options`: the
    Python names of the options the message names (`min_face`), which the CLI shows as its flags (`--min-face`)."""

    exit_code = 2

    def __init__(self, message: str = "", options: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.options = tuple(options)


class RunFailure(EmoengineError):
    """Something broke while running on good input (exit 1)."""

    exit_code = 1


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, else its type name: what a one-line error report shows."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def warn_random_weights(seed: int = 0) -> None:
    """What loading `weights="random"` says, also where a cached export of those weights is reused instead."""
    import logging

    logging.getLogger("emoengine.weights").warning(
        f"WARNING: weights random: seeded RANDOM EmoNet weights (seed {seed}); its predictions MEAN NOTHING",
        extra={"options": ("weights",)})
