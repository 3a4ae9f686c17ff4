"""Release manifest: write ``metadata.jsonl`` + ``manifest.json`` for a folder of images, and verify it later.

A release is a folder of images that loads with common tools: ``metadata.jsonl`` follows the Hugging Face
``imagefolder`` convention (one JSON object per line, a ``file_name`` column relative to the folder, then the
per-image fields such as seed, labels, scores and verdict). ``manifest.json`` pins the release down:

* ``files``: one entry per image, sorted by name: ``file_name``, ``sha256``, ``size`` (bytes), ``width``,
  ``height`` and the same per-image fields as ``metadata.jsonl``;
* ``root_sha256``: sha256 of ``json.dumps([[file_name, sha256, size], ...], separators=(",", ":"),
  ensure_ascii=True)`` over the entries sorted by name, so anyone can recompute the release identity;
* ``metadata``: the sha256 of ``metadata.jsonl``. It is rendered from ``files``, so verification re-renders it
  and notices edits to per-image fields (a verdict changed by hand) as well as edits to the file itself;
* ``fingerprints`` (model, policy, embedder ... given by the caller), ``counts``, tool version, creation time and,
  for releases written by :class:`~synfundus_guard.release.writer.ReleaseWriter`, a ``run`` record.

Signing: when the environment variable ``GUARD_MANIFEST_KEY`` is set (non-empty), :func:`save_manifest` adds
``hmac_sha256``, an HMAC-SHA256 keyed with the variable's UTF-8 bytes over the canonical JSON of the whole
manifest without that field (so it covers ``root_sha256`` and also verdicts, fingerprints and the metadata hash).
:func:`verify_release` checks it when the key is set; a wrong or missing signature is a problem (not ok).

Files whose name starts with ``.`` are not part of a release (common loaders skip them); verification reports
them as notes. Manifest paths come from an untrusted file: each is validated with :mod:`~synfundus_guard.fsutil`
before anything is read, and no file outside the release is ever opened.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .. import __version__
from ..data.images import is_image_file, list_images
from ..errors import ImageError, InputError, ManifestError
from ..fsutil import atomic_write_bytes, atomic_write_json, safe_join, safe_relpath, sha256_bytes, sha256_file
from ..progress import NULL_PROGRESS, Progress
from .report import PRIVATE_DIR

SCHEMA = "synfundus-guard/manifest/v1"
MANIFEST_NAME = "manifest.json"
METADATA_NAME = "metadata.jsonl"
KEY_ENV = "GUARD_MANIFEST_KEY"
RESERVED_FIELDS = frozenset({"file_name", "sha256", "size", "width", "height"})
"""Keys of a manifest file entry that per-image fields may not use."""
PRIVATE_MARKERS = (f"{PRIVATE_DIR}/evidence.json", "reasons.jsonl")
"""Files that belong to a private report or a quarantine; a release holding one is refused."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_release`."""

    ok: bool
    """True when nothing was added, removed or modified and there is no problem."""
    added: tuple[str, ...] = ()
    """Image files in the release that the manifest does not list."""
    removed: tuple[str, ...] = ()
    """Files the manifest lists that are missing."""
    modified: tuple[str, ...] = ()
    """Listed files whose size or sha256 differs (or that are no longer regular files)."""
    problems: tuple[str, ...] = ()
    """Other failures, one line each: root hash, metadata, signature, private files inside the release."""
    notes: tuple[str, ...] = ()
    """Information that does not fail verification (hidden files ignored, signature not checked)."""


def root_sha256(files: list[dict[str, Any]]) -> str:
    """Release identity: sha256 over the sorted ``[file_name, sha256, size]`` triples (see module docstring)."""
    triples = sorted([f["file_name"], f["sha256"], f["size"]] for f in files)
    return sha256_bytes(json.dumps(triples, separators=(",", ":"), ensure_ascii=True).encode("ascii"))


def render_metadata(manifest: dict[str, Any]) -> bytes:
    """The ``metadata.jsonl`` bytes for a manifest: one line per file, ``file_name`` plus per-image fields."""
    lines = []
    for f in manifest["files"]:
        row = {"file_name": f["file_name"]}
        row.update({k: v for k, v in f.items() if k not in RESERVED_FIELDS})
        lines.append(json.dumps(row, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")
    return "".join(lines).encode("utf-8")


def read_metadata(release_dir: Path) -> dict[str, dict[str, Any]]:
    """Read an existing ``metadata.jsonl`` into ``{file_name: fields}``. Raises :class:`ManifestError`."""
    path = Path(release_dir) / METADATA_NAME
    rows: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: line {lineno} is not JSON ({exc.msg})") from None
        name = row.get("file_name") if isinstance(row, dict) else None
        if not isinstance(name, str) or name in rows:
            raise ManifestError(f"{path}: line {lineno} has a missing or repeated file_name")
        rows[name] = {k: v for k, v in row.items() if k != "file_name"}
    return rows


def signature(manifest: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of the canonical JSON of ``manifest`` without its ``hmac_sha256`` field."""
    body = {k: v for k, v in manifest.items() if k != "hmac_sha256"}
    msg = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hmac.new(key, msg.encode("ascii"), hashlib.sha256).hexdigest()


def _env_key() -> bytes | None:
    value = os.environ.get(KEY_ENV, "")
    return value.encode("utf-8") if value else None


def _image_size(path: Path, name: str) -> tuple[int, int]:
    """Width and height from the image header (the pixels are not decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except UnidentifiedImageError:
        raise ImageError(f"{name!r}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name!r}: unreadable image header ({exc})") from None


def _inside(root: Path, name: str) -> Path:
    """Resolve a scanned file; a link that points outside the release is refused, never read."""
    full = (root / name).resolve()
    if root.resolve() not in full.parents:
        raise ManifestError(f"{name!r} is a link that points outside the release; copy the file in instead")
    return full


def _private_files(root: Path) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            rel = (Path(dirpath) / f).relative_to(root).as_posix()
            if any(rel == m or rel.endswith("/" + m) for m in PRIVATE_MARKERS):
                found.append(rel)
    return sorted(found)


def _check_entries(entries: dict[str, dict[str, Any]], names: set[str]) -> None:
    unknown = sorted(set(entries) - names)
    if unknown:
        raise InputError(f"entries name {len(unknown)} file(s) not in the release, e.g. {unknown[0]!r}")
    for name, fields in entries.items():
        clash = sorted(RESERVED_FIELDS & set(fields))
        if clash:
            raise InputError(f"entry for {name!r} uses reserved field(s) {', '.join(clash)}")


def build_manifest(
    release_dir: Path,
    *,
    entries: dict[str, dict[str, Any]] | None = None,
    fingerprints: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """Hash every image of ``release_dir`` and return the manifest dict (nothing is written).

    ``entries`` maps file names to per-image fields (verdict, seed, labels, scores); ``fingerprints`` and
    ``run`` are stored as given. Raises :class:`InputError` for a missing or image-less folder or bad entries,
    :class:`ImageError` for an unreadable image, :class:`ManifestError` for a link pointing outside the release
    or a private report / quarantine file inside it.
    """
    root = Path(release_dir)
    entries = entries or {}
    names = [p.as_posix() for p in list_images(root)]
    private = _private_files(root)
    if private:
        raise ManifestError(f"private file inside the release: {private[0]!r}; move it out first")
    _check_entries(entries, set(names))
    files = []
    with progress.task("Hashing release images", total=len(names)) as task:
        for name in names:
            path = _inside(root, name)
            width, height = _image_size(path, name)
            entry = {"file_name": name, "sha256": sha256_file(path), "size": path.stat().st_size}
            files.append({**entries.get(name, {}), **entry, "width": width, "height": height})
            task.advance()
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "tool": {"name": "synfundus-guard", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fingerprints": dict(fingerprints or {}),
        "counts": {
            "images": len(files),
            "bytes": sum(f["size"] for f in files),
            "verdicts": dict(Counter(str(f["verdict"]) for f in files if "verdict" in f)),
        },
        "files": files,
        "root_sha256": root_sha256(files),
    }
    if run is not None:
        manifest["run"] = dict(run)
    try:
        metadata = render_metadata(manifest)
    except (TypeError, ValueError) as exc:
        raise InputError(f"per-image fields are not JSON-serialisable: {exc}") from None
    manifest["metadata"] = {"file_name": METADATA_NAME, "sha256": sha256_bytes(metadata)}
    return manifest


def save_manifest(release_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``metadata.jsonl`` then ``manifest.json`` atomically (signed when ``GUARD_MANIFEST_KEY`` is set).

    Returns the manifest path. The metadata goes first: a crash in between leaves no manifest, never a
    manifest whose metadata hash points at a missing file.
    """
    root = Path(release_dir)
    manifest = {k: v for k, v in manifest.items() if k != "hmac_sha256"}
    key = _env_key()
    try:
        metadata = render_metadata(manifest)
        if key is not None:
            manifest["hmac_sha256"] = signature(manifest, key)
    except (TypeError, ValueError) as exc:
        raise InputError(f"manifest is not JSON-serialisable: {exc}") from None
    atomic_write_bytes(root / METADATA_NAME, metadata)
    path = root / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def write_manifest(
    release_dir: Path,
    *,
    entries: dict[str, dict[str, Any]] | None = None,
    fingerprints: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> Path:
    """:func:`build_manifest` then :func:`save_manifest`; returns the ``manifest.json`` path."""
    manifest = build_manifest(release_dir, entries=entries, fingerprints=fingerprints, run=run, progress=progress)
    return save_manifest(release_dir, manifest)


def _check_file_entry(i: int, f: Any, seen: set[str]) -> str:
    if not isinstance(f, dict) or not isinstance(f.get("file_name"), str):
        raise ManifestError(f"malformed manifest: files[{i}] has no file_name")
    name = f["file_name"]
    plain = safe_relpath(name).as_posix() == name and "." not in name.split("/")
    if not plain or name in (MANIFEST_NAME, METADATA_NAME):
        raise ManifestError(f"unsafe path in manifest: {name!r} (not a plain release-relative path)")
    sha, size = f.get("sha256"), f.get("size")
    if not (isinstance(sha, str) and len(sha) == 64) or not (isinstance(size, int) and size >= 0):
        raise ManifestError(f"malformed manifest: {name!r} lacks a valid sha256 or size")
    if name in seen:
        raise ManifestError(f"malformed manifest: {name!r} is listed twice")
    seen.add(name)
    return name


def read_manifest(release_dir: Path) -> dict[str, Any]:
    """Load and validate ``manifest.json``; every listed path is checked to stay inside the release.

    Raises :class:`ManifestError` when the file is missing, not JSON, of another schema, malformed, or lists
    an unsafe path (absolute, ``..``, backslash, or a link resolving outside the release).
    """
    root = Path(release_dir)
    if not root.is_dir():
        raise InputError(f"{'not a folder' if root.exists() else 'folder not found'}: {root}")
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in {root}; run `guard manifest {root}` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ManifestError(f"{path}: not a synfundus-guard manifest (expected schema {SCHEMA!r})")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise ManifestError(f"{path}: malformed manifest (no files list)")
    seen: set[str] = set()
    for i, f in enumerate(files):
        safe_join(root, _check_file_entry(i, f, seen))
    return manifest


def _scan(root: Path) -> tuple[set[str], list[str]]:
    """Image files present (by name, links not followed or read) and hidden files that are ignored."""
    present, hidden = set(), []
    for dirpath, dirs, files in os.walk(root):
        for f in files:
            rel = (Path(dirpath) / f).relative_to(root)
            if any(part.startswith(".") for part in rel.parts):
                hidden.append(rel.as_posix())
            elif is_image_file(rel):
                present.add(rel.as_posix())
    return present, sorted(hidden)


def _compare_file(root: Path, f: dict[str, Any]) -> str | None:
    """``"removed"``, ``"modified"`` or None for one listed file (the path was validated before)."""
    path = safe_join(root, f["file_name"])
    if not path.exists():
        return "removed"
    if not path.is_file() or path.stat().st_size != f["size"] or sha256_file(path) != f["sha256"]:
        return "modified"
    return None


def _section(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    value = manifest.get(key)
    return value if isinstance(value, dict) else {}


def _signature_or_empty(manifest: dict[str, Any], key: bytes) -> str:
    try:
        return signature(manifest, key)
    except ValueError:  # NaN in the document: it cannot be the one that was signed
        return ""


def _document_problems(root: Path, manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    files = manifest["files"]
    if manifest.get("root_sha256") != root_sha256(files):
        problems.append("root_sha256 does not match the file list (manifest entries were edited)")
    expected = _section(manifest, "metadata").get("sha256")
    try:
        rendered = sha256_bytes(render_metadata(manifest))
    except (TypeError, ValueError):  # NaN or other values JSON allows in, but a manifest never holds
        rendered = None
    meta = root / METADATA_NAME
    if not meta.is_file():
        problems.append(f"{METADATA_NAME} is missing")
    elif sha256_file(meta) != expected:
        problems.append(f"{METADATA_NAME} differs from the manifest's hash")
    if rendered != expected:
        problems.append("per-image fields in the manifest were edited (they no longer match the metadata hash)")
    if _section(manifest, "counts").get("images") != len(files):
        problems.append("counts.images does not match the file list")
    key, sig = _env_key(), manifest.get("hmac_sha256")
    if key is not None and sig is None:
        problems.append(f"manifest is not signed but {KEY_ENV} is set")
    elif key is not None and not hmac.compare_digest(str(sig), _signature_or_empty(manifest, key)):
        problems.append(f"manifest signature does not match (wrong {KEY_ENV} or the manifest was edited)")
    elif sig is not None and key is None:
        notes.append(f"manifest is signed; set {KEY_ENV} to check the signature")
    problems += [f"private file inside the release: {p}" for p in _private_files(root)]
    return problems, notes


def verify_release(release_dir: Path, *, progress: Progress = NULL_PROGRESS) -> VerifyResult:
    """Re-hash every listed file and compare the release with its manifest.

    Returns a :class:`VerifyResult` (a difference is data, not an exception). Raises :class:`ManifestError`
    when ``manifest.json`` is missing, malformed or lists an unsafe path; nothing is hashed in that case.
    """
    root = Path(release_dir)
    manifest = read_manifest(root)
    present, hidden = _scan(root)
    listed = {f["file_name"] for f in manifest["files"]}
    changes: dict[str, list[str]] = {"removed": [], "modified": []}
    with progress.task("Verifying release", total=len(listed)) as task:
        for f in manifest["files"]:
            change = _compare_file(root, f)
            if change:
                changes[change].append(f["file_name"])
            task.advance()
    problems, notes = _document_problems(root, manifest)
    if hidden:
        notes.append(f"{len(hidden)} hidden file(s) ignored (not part of the release), e.g. {hidden[0]}")
    added = tuple(sorted(present - listed))
    removed, modified = tuple(sorted(changes["removed"])), tuple(sorted(changes["modified"]))
    ok = not (added or removed or modified or problems)
    return VerifyResult(ok, added, removed, modified, tuple(problems), tuple(notes))
