"""The audit report: a public JSON document plus a private evidence folder.

``report.json`` is public: per-image verdicts, reasons and scores, the summary, policy and embedder
fingerprints. It never contains a training file name, path, image id or patient id. Evidence that names
training images (closest pairs) goes to ``private/evidence.json`` beside it, which must never be shipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..fsutil import atomic_write_json, make_private_dir
from ..results import PRIVATE_DIR, SCHEMA, Report
from ..safeload import read_json

__all__ = ["PRIVATE_DIR", "check_report_folder", "read_report", "write_report"]


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


def holds_document(folder: Path, name: str, schema: str) -> bool:
    """True when ``folder/name`` is a JSON document of guard's with ``schema`` (a report, fidelity results)."""
    try:
        return read_json(Path(folder) / name, expect=dict).get("schema") == schema
    except (OSError, InputError):
        return False


def is_report_folder(folder: Path) -> bool:
    """True when ``folder`` holds a report guard wrote (its ``report.json`` has the report schema)."""
    return holds_document(folder, "report.json", SCHEMA)


PRIVATE_FILES = ("evidence.json", "report.html")
"""What guard writes into ``private/`` before ``report.json``."""


def _cut_short(folder: Path) -> bool:
    """A report folder whose writing was cut short before ``report.json``: only guard's private files."""
    private = folder / PRIVATE_DIR
    try:
        return [p.name for p in folder.iterdir()] == [PRIVATE_DIR] and private.is_dir() and all(
            p.name in PRIVATE_FILES or p.name.startswith(".") for p in private.iterdir())
    except OSError:
        return False


def check_report_folder(folder: Path, *, option: str, accept: Callable[[Path], bool] = lambda _: False) -> None:
    """Refuse a report folder guard may not write into: a file, or a non-empty folder holding no guard report.

    ``accept`` recognises other guard state a caller may resume from (an audit's journal). Raises
    :class:`InputError` with one line naming ``option``.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {folder} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (is_report_folder(path) or _cut_short(path) or accept(path)):
        raise InputError(f"{option} {folder} is not empty and holds no guard report; use a new or empty folder "
                         "(guard never overwrites files it did not write)")
