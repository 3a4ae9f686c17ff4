"""Rich rendering of the library's progress observer (stderr, so stdout stays machine-readable)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from ..progress import Progress, ProgressTask

console = Console(stderr=True)


class _RichTask(ProgressTask):
    def __init__(self, bar: RichProgress, description: str, total: int | None):
        self._bar = bar
        self._id = bar.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._id, n)

    def close(self) -> None:
        self._bar.update(self._id, visible=True)
        self._bar.stop_task(self._id)


class RichProgressObserver(Progress):
    """Progress bars on stderr; use as a context manager around the library call."""

    def __init__(self) -> None:
        self._bar = RichProgress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )

    def __enter__(self) -> "RichProgressObserver":
        self._started = False  # started by the first task or log line: an early error prints only itself
        return self

    def _start(self) -> None:
        if not getattr(self, "_started", False):
            self._bar.start()
            self._started = True

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "_started", False):
            self._bar.stop()
            self._started = False

    def task(self, description: str, total: int | None = None) -> ProgressTask:
        self._start()
        return _RichTask(self._bar, description, total)

    def log(self, message: str) -> None:
        self._start()
        self._bar.console.print(message)
