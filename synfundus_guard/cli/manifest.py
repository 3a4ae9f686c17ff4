"""``guard manifest`` and ``guard verify``: seal a folder of images as a release, and check it later.

``guard manifest DIR`` writes ``metadata.jsonl`` and ``manifest.json`` (keeping the per-image fields of an
existing ``metadata.jsonl``, e.g. a downloaded imagefolder set); it refuses, with exit 2 and nothing written, a
folder holding a link, a hidden file or a file that is neither an image nor an allowed extra. ``guard verify DIR``
exits 0 when the release is intact, 1 when anything differs from its manifest (any unlisted file, whatever its
extension, hidden or behind a link), 2 when the manifest is missing, malformed, too large, too deeply nested or
unsafe.
File names come from disk or an untrusted manifest, so they are printed as plain text with non-printable
characters escaped: no rich markup or terminal escape sequence gets through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from ..release.manifest import MANIFEST_NAME, METADATA_NAME, VerifyResult, read_metadata, verify_release
from ..release.manifest import write_manifest
from .errors import EXIT_FAIL, EXIT_PASS, fail_usage, guarded
from .progress import RichProgressObserver

_SHOWN = 50
"""At most this many names per list; the rest is counted."""


def _plain(value: object) -> str:
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(value))


@guarded
def manifest(
    folder: Annotated[Path, typer.Argument(help="Folder of images to seal as a release.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing manifest.json.")] = False,
) -> None:
    """Write manifest.json and metadata.jsonl (imagefolder) for a folder of images; exit 2 on bad input."""
    if (folder / MANIFEST_NAME).exists() and not force:
        raise fail_usage(f"{folder / MANIFEST_NAME} exists; use --force to seal the folder's current content")
    entries = read_metadata(folder) if (folder / METADATA_NAME).is_file() else None
    with RichProgressObserver() as progress:
        path = write_manifest(folder, entries=entries, progress=progress)
    console = Console(highlight=False, soft_wrap=True)
    console.print(Text(f"wrote {_plain(path)} and {METADATA_NAME}"))


def _render(result: VerifyResult, folder: Path) -> None:
    console = Console(highlight=False, soft_wrap=True)
    sections = (("added", result.added, "red"), ("removed", result.removed, "red"),
                ("modified", result.modified, "red"), ("problem", result.problems, "red"),
                ("note", result.notes, "yellow"))
    for label, items, style in sections:
        for item in items[:_SHOWN]:
            console.print(Text.assemble((f"{label:>8} ", style), _plain(item)))
        if len(items) > _SHOWN:
            console.print(Text(f"{label:>8} ... and {len(items) - _SHOWN} more", style=style))
    if result.ok:
        console.print(Text(f"release {_plain(folder)} is intact", style="bold green"))
    else:
        counts = f"{len(result.added)} added, {len(result.removed)} removed, {len(result.modified)} modified, " \
                 f"{len(result.problems)} problem(s)"
        console.print(Text(f"release {_plain(folder)} differs from its manifest: {counts}", style="bold red"))


@guarded
def verify(
    folder: Annotated[Path, typer.Argument(help="Release folder holding manifest.json.")],
) -> None:
    """Re-hash a release against its manifest; exit 0 intact, 1 changed, 2 missing or unsafe manifest."""
    with RichProgressObserver() as progress:
        result = verify_release(folder, progress=progress)
    _render(result, folder)
    raise typer.Exit(EXIT_PASS if result.ok else EXIT_FAIL)


def register(app: typer.Typer) -> None:
    """Add ``guard manifest`` and ``guard verify`` to the ``guard`` app."""
    app.command("manifest")(manifest)
    app.command("verify")(verify)
