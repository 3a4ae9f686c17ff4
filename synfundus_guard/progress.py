"""Progress reporting without coupling library code to a terminal.

Library functions accept a :class:`Progress` observer (a no-op by default). The CLI passes one that renders
with rich. Usage::

    with progress.task("Embedding train", total=len(paths)) as t:
        for batch in batches:
            ...
            t.advance(len(batch))
"""

from __future__ import annotations

from types import TracebackType


class ProgressTask:
    """One unit of long work. The base class does nothing."""

    def advance(self, n: int = 1) -> None:
        """Record that ``n`` more items are done."""

    def close(self) -> None:
        """Mark the task finished."""

    def __enter__(self) -> "ProgressTask":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Progress:
    """Observer for long work. The base class is the silent default."""

    def task(self, description: str, total: int | None = None) -> ProgressTask:
        """Start a task; ``total`` is None when the amount of work is unknown."""
        return ProgressTask()

    def log(self, message: str) -> None:
        """A one-line note for the user (warnings such as a disabled check)."""


NULL_PROGRESS = Progress()
