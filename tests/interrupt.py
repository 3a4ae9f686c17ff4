"""A progress observer that interrupts guarded generation after a given number of batches (resume tests)."""

from __future__ import annotations

from synfundus_guard.progress import Progress, ProgressTask


class StopAfterBatches(Progress):
    """Raises KeyboardInterrupt at the ``batches + 1``-th advance of the "Generating" task (the first call only
    reports the resume point), as Ctrl-C between two committed batches would."""

    def __init__(self, batches: int) -> None:
        self.batches = batches

    def task(self, description: str, total: int | None = None) -> ProgressTask:
        outer = self

        class _Task(ProgressTask):
            calls = 0

            def advance(self, k: int = 1) -> None:
                self.calls += 1
                if description.startswith("Generating") and self.calls > outer.batches:
                    raise KeyboardInterrupt

        return _Task()
