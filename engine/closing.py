"""`Closing`: the one way a resource holder (a runner, a frame source) is closed: `close()`, or leave a `with`."""

from __future__ import annotations


class Closing:
    """Subclasses release what they hold in `close()` (safe to call twice); `with obj:` calls it on the way out."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
