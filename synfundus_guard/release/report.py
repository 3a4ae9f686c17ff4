"""The audit report: a public JSON document plus a private evidence folder.

``report.json`` is public: per-image verdicts, reasons and scores, the summary, policy and embedder
fingerprints. It never contains a training file name, path, image id or patient id. Evidence that names
training images (closest pairs) goes to ``private/evidence.json`` beside it, which must never be shipped.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError
from ..fsutil import atomic_write_json, make_private_dir
from ..safeload import read_json

SCHEMA = "synfundus-guard/report/v1"
PRIVATE_DIR = "private"


@dataclass
class ImageResult:
    """Public outcome for one image."""

    file_name: str
    verdict: str
    """``"pass"`` or ``"fail"``."""
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """Flags from checks whose policy action is ``warn``: reported, not blocking."""
    checks: dict[str, str] = field(default_factory=dict)
    """Per check name: ``"pass"``, ``"flag"`` or ``"error"`` (so a gate can re-apply a policy's actions)."""


@dataclass
class Report:
    """Machine-readable result of an audit (``report.json``)."""

    policy: dict[str, str]
    embedder: dict[str, Any]
    images: list[ImageResult]
    verdict: str
    """Release verdict: ``"pass"`` or ``"fail"``."""
    summary: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    """Fingerprints of the per-image checks that ran (thresholds included)."""
    calibration: dict[str, Any] = field(default_factory=dict)
    release_checks: dict[str, Any] = field(default_factory=dict)
    """Release-level results, e.g. ``{"membership": {...}}``."""
    violations: list[str] = field(default_factory=list)
    """Release-level policy violations, one line each."""
    release: dict[str, Any] = field(default_factory=dict)
    tool: dict[str, str] = field(default_factory=lambda: {"name": "synfundus-guard", "version": __version__})
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """Inverse of :meth:`to_dict`; raises :class:`InputError` on a document that is not a report."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise InputError(f"not a synfundus-guard report (expected schema {SCHEMA!r})")
        if not isinstance(data.get("images"), list):
            raise InputError("malformed report: 'images' must be a list")
        try:
            images = [ImageResult(**img) for img in data["images"]]
            rest = {k: v for k, v in data.items() if k != "images"}
            return cls(images=images, **rest)
        except (KeyError, TypeError) as exc:
            raise InputError(f"malformed report: {exc}") from None


def write_report(report: Report, out_dir: Path, *, private: dict[str, Any] | None = None) -> Path:
    """Write ``report.json`` (public) and ``private/evidence.json`` atomically; returns the report path.

    The private file is written first so a crash never leaves a public report without its evidence. It names
    training images, so ``private/`` is made owner-only (0700, :func:`~synfundus_guard.fsutil.make_private_dir`)
    and the evidence 0600; ``out_dir`` and ``report.json`` keep the usual modes, being meant to be shared.
    """
    out_dir = Path(out_dir)
    if private is not None:
        out_dir.mkdir(parents=True, exist_ok=True)  # public: the usual mode, not the private folder's
        make_private_dir(out_dir / PRIVATE_DIR)
        atomic_write_json(out_dir / PRIVATE_DIR / "evidence.json", private, private=True)
    path = out_dir / "report.json"
    atomic_write_json(path, report.to_dict())
    return path


def read_report(path: Path) -> Report:
    """Load a ``report.json`` (bounded: see :mod:`~synfundus_guard.safeload`).

    Raises :class:`InputError` when missing, too large, too deeply nested or malformed.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = read_json(path, error=InputError, expect=dict)
    except FileNotFoundError:
        raise InputError(f"report not found: {path}") from None
    return Report.from_dict(data)
