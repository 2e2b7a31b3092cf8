"""The library's voice: every module logs to its child of the `emoengine` logger (`logging.getLogger(__name__)`);
nothing in the library prints. The CLI (and a batch worker process, its own entry point) installs the one-line
stderr handler below, which writes `emoengine: <message>` as the command always has.

Levels: WARNING for what a user must see even from Python with no handler installed (Python's last-resort
handler shows it: random weights, a skipped image, a face id never seen); INFO for progress and notices that
only the command shows (an export being made, a run skipped by resume, a batch's per-video lines).
"""

from __future__ import annotations

import logging
import sys

ROOT = "emoengine"


class OneLineHandler(logging.Handler):
    """`emoengine: <first line of the message>` on the current sys.stderr (looked up at each record, so a
    test's captured stderr or a redirected one gets it). A record may name options by their Python names
    (`extra={"options": ("resume",)}`); `rename(text, names)` (the CLI's: names to flags) rewrites them."""

    def __init__(self, rename=None) -> None:
        super().__init__()
        self.rename = rename

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            names = getattr(record, "options", ())
            if self.rename is not None and names:
                text = self.rename(text, names)
            lines = text.strip().splitlines()
            sys.stderr.write(f"emoengine: {lines[0] if lines else ''}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001  logging's own rule: a failing handler must not end the program
            self.handleError(record)


def install_stderr_handler(level: int = logging.INFO, rename=None) -> logging.Logger:
    """The command's handler on the `emoengine` logger, once per process (calling again changes only the level,
    and `rename` where given)."""
    logger = logging.getLogger(ROOT)
    handler = next((h for h in logger.handlers if isinstance(h, OneLineHandler)), None)
    if handler is None:
        handler = OneLineHandler(rename)
        logger.addHandler(handler)
    elif rename is not None:
        handler.rename = rename
    logger.setLevel(level)
    return logger
