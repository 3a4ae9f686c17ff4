"""Report formats behind one interface (:mod:`.interface`), one module per format, selected by an enum.

Every module of this package that does not start with an underscore is imported here, so a format registers
itself by existing; :data:`OutputFormat` is built from the registry. :func:`render_files` renders the formats
asked for into bytes (nothing is written), :func:`write_files` writes them all-or-nothing.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
from pathlib import Path

from ..fsutil import atomic_write_bytes, make_private_dir
from ..results import PRIVATE_DIR
from .interface import ReportFormat, ReportView, register, registered

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "interface":
        importlib.import_module(f"{__name__}.{_module.name}")

OutputFormat = enum.Enum("OutputFormat", {name.upper(): name for name in sorted(registered())}, type=str)
"""The ``--format`` choices: one member per registered format, valued by its name."""

__all__ = ["OutputFormat", "ReportFormat", "ReportView", "get_format", "register", "render_files", "write_files"]


def get_format(fmt: "OutputFormat | str") -> ReportFormat:
    """The registered format for an enum member or its name; raises KeyError for an unknown name."""
    return registered()[fmt.value if isinstance(fmt, enum.Enum) else str(fmt)]


def render_files(view: ReportView, formats: "list[OutputFormat | str]", *,
                 private: bool = False) -> dict[str, tuple[bytes, bool]]:
    """Render ``formats`` into ``{relative path: (bytes, is_private)}``; nothing is written.

    With ``private`` (the caller holds the evidence), formats with a private tier also render
    ``private/<file_name>``.
    """
    out: dict[str, tuple[bytes, bool]] = {}
    for fmt in dict.fromkeys(formats):
        impl = get_format(fmt)
        out[impl.file_name] = (impl.render(view), False)
        if private and (secret := impl.render_private(view)) is not None:
            out[f"{PRIVATE_DIR}/{impl.file_name}"] = (secret, True)
    return out


def write_files(out_dir: Path, files: dict[str, tuple[bytes, bool]]) -> list[Path]:
    """Write rendered files under ``out_dir`` atomically (private ones owner-only); returns the paths.

    If one write fails, the files this call wrote are removed before the error propagates.
    """
    written: list[Path] = []
    try:
        for rel, (data, secret) in files.items():
            path = Path(out_dir) / rel
            if secret:
                make_private_dir(path.parent)
            atomic_write_bytes(path, data, private=secret)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
