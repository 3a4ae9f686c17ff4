"""The one interface every report format implements, and the registry formats add themselves to.

A format turns a :class:`ReportView` (the stored report, the verdict a policy gave it, and, where the caller has
them, the release folder and the private evidence) into bytes. ``render`` makes the public document: it may show
release images and every public score, never a training image, file name, image id or patient id. A format with
a private tier (HTML: flagged images beside the training images they copy) also implements ``render_private``;
its output goes only to the report's owner-only ``private/`` folder.

Adding a format is one module in this package that subclasses :class:`ReportFormat` and decorates it with
:func:`register`: the package imports every module in it, and :data:`~synfundus_guard.formats.OutputFormat`
(the enum the CLI's ``--format`` takes) is built from the registry.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import GuardError
from ..fsutil import safe_join
from ..results import Report, ReleaseVerdict


@dataclass(frozen=True)
class ReportView:
    """Everything a format may render."""

    report: Report
    verdict: ReleaseVerdict
    release_dir: Path | None = None
    """The audited release folder, when it is at hand: the HTML page shows thumbnails of flagged images."""
    evidence: Mapping[str, Any] | None = None
    """The private evidence (``private/evidence.json``): names training images, private tier only."""
    train_dir: Path | None = None
    """The private training folder: the private HTML page shows each copy beside its training image."""
    quarantine_dir: Path | None = None
    """Where a guarded generation run put the samples it withheld (private), looked up after the release."""

    def image_file(self, name: str) -> Path | None:
        """The file of image ``name`` in the release (or the quarantine), or None when neither holds it."""
        for folder in (self.release_dir, self.quarantine_dir):
            if folder is None:
                continue
            try:
                path = safe_join(folder, name)
            except GuardError:
                return None
            if path.is_file():
                return path
        return None


class ReportFormat(abc.ABC):
    """A report format: a name for ``--format``, a file name in the report folder, and a renderer."""

    name: ClassVar[str]
    """The ``--format`` value, e.g. ``"sarif"``."""
    file_name: ClassVar[str]
    """Its file in a report folder, e.g. ``"report.sarif"``."""
    description: ClassVar[str]
    """One line for ``--help``."""

    @abc.abstractmethod
    def render(self, view: ReportView) -> bytes:
        """The public document (UTF-8 text for the text formats)."""

    def render_private(self, view: ReportView) -> bytes | None:
        """The owner-only document, or None when the format has no private tier."""
        return None


_REGISTRY: dict[str, ReportFormat] = {}
F = TypeVar("F", bound=type[ReportFormat])


def register(cls: F) -> F:
    """Class decorator: add one instance of ``cls`` to the registry under ``cls.name`` (once)."""
    if cls.name in _REGISTRY:
        raise RuntimeError(f"report format {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def registered() -> dict[str, ReportFormat]:
    """Every registered format by name (a copy)."""
    return dict(_REGISTRY)
