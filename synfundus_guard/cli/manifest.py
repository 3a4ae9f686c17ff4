"""``guard manifest`` and ``guard verify``: seal a folder of images as a release, and check it later.

``guard manifest DIR`` writes ``metadata.jsonl`` and ``manifest.json`` (keeping the per-image fields of an
existing ``metadata.jsonl``, e.g. a downloaded imagefolder set); it refuses, with exit 2 and nothing written, a
folder holding a link, a hidden file or a file that is neither an image nor an allowed extra. ``guard verify DIR``
exits 0 when the release is intact, 1 when anything differs from its manifest (any unlisted file, whatever its
extension, hidden or behind a link), 2 when the manifest is missing, malformed, too large, too deeply nested or
unsafe.

Signatures (Ed25519, see :mod:`synfundus_guard.release.signing`): ``guard keygen --out PREFIX`` writes
``PREFIX.key`` (private, 0600, never overwritten) and ``PREFIX.pub``; ``guard manifest DIR --sign-key PREFIX.key``
(or ``GUARD_SIGNING_KEY=PREFIX.key``) signs the manifest; ``guard verify DIR --key PREFIX.pub`` also exits 1 when
the manifest is unsigned, signed by another key, or its signature does not verify. A missing or garbled key file
is exit 2. Without ``--key`` a signature is checked against the public key the manifest names (a note says
which): that catches edits, but only ``--key`` shows who signed.
File names come from disk or an untrusted manifest, so they are printed as plain text with non-printable
characters escaped: no rich markup or terminal escape sequence gets through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from ..release.croissant import CROISSANT_NAME, write_croissant
from ..release.manifest import MANIFEST_NAME, METADATA_NAME, VerifyResult, read_metadata, verify_release
from ..release.manifest import write_manifest
from ..release.signing import SIGNING_KEY_ENV, env_signing_key, fingerprint, generate_keypair
from ..release.signing import load_private_key, load_public_key
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
    sign_key: Annotated[Path | None, typer.Option(
        "--sign-key", metavar="PRIV.key",
        help=f"Sign the manifest with this Ed25519 private key (guard keygen); default: ${SIGNING_KEY_ENV}.")] = None,
) -> None:
    """Write manifest.json and metadata.jsonl (imagefolder) for a folder of images; exit 2 on bad input."""
    key = load_private_key(path=sign_key) if sign_key is not None else env_signing_key()
    if (folder / MANIFEST_NAME).exists() and not force:
        raise fail_usage(f"{folder / MANIFEST_NAME} exists; use --force to seal the folder's current content")
    entries = read_metadata(folder) if (folder / METADATA_NAME).is_file() else None
    with RichProgressObserver() as progress:
        path = write_manifest(folder, entries=entries, progress=progress, signing_key=key)
    croissant = write_croissant(folder)  # Croissant 1.1 + RAI metadata, from the manifest just written
    console = Console(highlight=False, soft_wrap=True)
    extra = f", {croissant.name}" if croissant else f" (kept your own {CROISSANT_NAME})"
    console.print(Text(f"wrote {_plain(path)} and {METADATA_NAME}{extra}"))
    if key is not None:
        console.print(Text(f"signed with ed25519 key sha256:{fingerprint(key.public_key())}"))


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
    key: Annotated[Path | None, typer.Option(
        "--key", metavar="PUB.pub", help="Also require a valid Ed25519 signature by this public key.")] = None,
) -> None:
    """Re-hash a release against its manifest; exit 0 intact, 1 changed, 2 missing or unsafe manifest."""
    public_key = load_public_key(path=key) if key is not None else None
    with RichProgressObserver() as progress:
        result = verify_release(folder, progress=progress, public_key=public_key)
    _render(result, folder)
    raise typer.Exit(EXIT_PASS if result.ok else EXIT_FAIL)


@guarded
def keygen(
    out: Annotated[Path, typer.Option("--out", metavar="PREFIX",
                                      help="Write PREFIX.key (private, 0600) and PREFIX.pub (public).")],
) -> None:
    """Make an Ed25519 key pair for signing release manifests; never overwrites a key file (exit 2)."""
    pair = generate_keypair(prefix=out)
    console = Console(highlight=False, soft_wrap=True)
    console.print(Text(f"wrote {_plain(pair.private_path)} (private: keep it secret, owner-only) and "
                       f"{_plain(pair.public_path)} (publish it)"))
    console.print(Text(f"key sha256:{pair.fingerprint}"))


def register(app: typer.Typer) -> None:
    """Add ``guard manifest``, ``guard verify`` and ``guard keygen`` to the ``guard`` app."""
    app.command("manifest")(manifest)
    app.command("verify")(verify)
    app.command("keygen")(keygen)
