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
HMAC is symmetric (whoever can check it can forge it), so a manifest can also carry an Ed25519 ``signature`` made
with a private key (``save_manifest(signing_key=...)``, or the key file named by ``GUARD_SIGNING_KEY``) over the
same bytes, checked with the public key (``verify_release(public_key=...)``); see :mod:`.signing`.

What a release may hold: the listed images, ``manifest.json``, ``metadata.jsonl`` and the top-level files named in
:data:`ALLOWED_EXTRA` (``README.md``, ``LICENSE``, ``croissant.json``: dataset cards that hubs and loaders look
for; allowed, not hashed, and verification notes that they are not covered). Verification reports every other
file as *added*, whatever its extension, hidden or not: a ``patients.csv`` or a ``.notes.txt`` dropped into a
published folder leaks as surely as an extra image. Hidden files are never sealed: :func:`build_manifest` skips
them (the release writer seals while its own ``.guard/`` state folder still exists, and removes it right after)
and :func:`write_manifest` refuses them, so a folder it seals always verifies.

Symbolic links are never followed. :func:`build_manifest` refuses a link (to a file or a folder) by name before
any file is opened; :func:`verify_release` reports it as added and as a problem without reading through it. A
link's target can change after sealing, or be a patient image outside the release. Manifest paths come from an
untrusted file: each is validated with :mod:`~synfundus_guard.fsutil` before anything is read, and JSON is parsed
with :mod:`~synfundus_guard.safeload` (size and nesting bounds), so a hostile manifest or metadata file is a
one-line :class:`~synfundus_guard.errors.ManifestError`, never a crash.

:func:`save_manifest` publishes the pair all-or-nothing: both files are staged as hidden temp files beside their
final names, then renamed metadata first, manifest second; if the second rename fails, the previous
``metadata.jsonl`` is put back (or the new one removed). Only a power cut between the two renames can leave new
metadata beside an old manifest, and verification then reports the metadata hash mismatch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import secrets
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .. import __version__
from ..data.images import IMAGE_EXTENSIONS, is_image_file, walk_folder
from ..errors import ImageError, InputError, ManifestError
from ..fsutil import fsync_dir, safe_join, safe_relpath, sha256_bytes, sha256_file
from ..progress import NULL_PROGRESS, Progress
from ..safeload import MAX_JSON_BYTES, parse_json, read_json
from .report import PRIVATE_DIR
from .signing import (SIGNATURE_FIELDS, Ed25519PrivateKey, Ed25519PublicKey, canonical_bytes, env_signing_key,
                      sign_manifest, signature_problems)

SCHEMA = "synfundus-guard/manifest/v1"
MANIFEST_NAME = "manifest.json"
METADATA_NAME = "metadata.jsonl"
KEY_ENV = "GUARD_MANIFEST_KEY"
RESERVED_FIELDS = frozenset({"file_name", "sha256", "size", "width", "height"})
"""Keys of a manifest file entry that per-image fields may not use."""
PRIVATE_MARKERS = (f"{PRIVATE_DIR}/evidence.json", "reasons.jsonl")
"""Files that belong to a private report or a quarantine; a release holding one is refused."""
ALLOWED_EXTRA = ("README.md", "LICENSE", "croissant.json")
"""Top-level regular files a release may hold beside its images without being listed (dataset cards). They are
not hashed, so verification notes each one as not covered by the manifest. Keep this list short."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_release`."""

    ok: bool
    """True when nothing was added, removed or modified and there is no problem."""
    added: tuple[str, ...] = ()
    """Files in the release the manifest does not list: any extension, hidden files and links included."""
    removed: tuple[str, ...] = ()
    """Files the manifest lists that are missing."""
    modified: tuple[str, ...] = ()
    """Listed files whose size or sha256 differs, or that are no longer regular files (a link, a folder)."""
    problems: tuple[str, ...] = ()
    """Other failures, one line each: root hash, metadata, signature, links, private files inside the release."""
    notes: tuple[str, ...] = ()
    """Information that does not fail verification (allow-listed files not covered, signature not checked)."""


@dataclass(frozen=True)
class ReleaseContents:
    """Everything under a release folder, sorted by kind; found without opening or following anything."""

    images: tuple[str, ...]
    """Visible regular files with an image extension: what a manifest seals."""
    hidden: tuple[str, ...]
    """Regular files with a part of their path starting with ``.`` (never sealed)."""
    extras: tuple[str, ...]
    """Visible regular files that are not images, the manifest pair or in :data:`ALLOWED_EXTRA`."""
    links: tuple[str, ...]
    """Symbolic links to anything (never followed)."""
    others: tuple[str, ...]
    """FIFOs, sockets, devices (never opened: reading one can block)."""
    allowed: tuple[str, ...]
    """The :data:`ALLOWED_EXTRA` files present."""

    def unlisted(self, listed: set[str]) -> tuple[str, ...]:
        """Every path that is not listed, not the manifest pair and not an allowed extra."""
        every = set(self.images + self.hidden + self.extras + self.links + self.others)
        return tuple(sorted(every - listed))


def root_sha256(files: list[dict[str, Any]]) -> str:
    """Release identity: sha256 over the sorted ``[file_name, sha256, size]`` triples (see module docstring)."""
    triples = sorted([f["file_name"], f["sha256"], f["size"]] for f in files)
    return sha256_bytes(json.dumps(triples, separators=(",", ":"), ensure_ascii=True).encode("ascii"))


def _parquet_safe(value: Any) -> Any:
    """``value`` without empty objects, at any depth (an empty object inside a list becomes null).

    Parquet cannot store a struct with no fields, so one unconditional model's ``labels: {}`` on every row made
    ``load_dataset("imagefolder", ...)["train"].to_parquet(...)`` fail. An absent key loads as null; empty lists
    and nulls are fine.
    """
    if isinstance(value, dict):
        pruned = {k: _parquet_safe(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v != {}}
    if isinstance(value, list):
        return [None if item == {} else item for item in map(_parquet_safe, value)]
    return value


def render_metadata(manifest: dict[str, Any], *, legacy: bool = False) -> bytes:
    """The ``metadata.jsonl`` bytes for a manifest: one line per file, ``file_name`` plus per-image fields.

    Rows are Parquet-safe (:func:`_parquet_safe`); the manifest keeps the fields as given. ``legacy=True``
    renders them unpruned, as releases sealed before that change were, so those still verify.
    """
    lines = []
    for f in manifest["files"]:
        row = {"file_name": f["file_name"]}
        row.update({k: v for k, v in f.items() if k not in RESERVED_FIELDS})
        row = row if legacy else _parquet_safe(row)
        lines.append(json.dumps(row, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")
    return "".join(lines).encode("utf-8")


def _metadata_for(manifest: dict[str, Any]) -> bytes:
    """The rendering the manifest's metadata hash names: the legacy one for a release sealed before Parquet-safe
    rows (so re-saving it, e.g. to sign it, keeps it verifiable), the current one otherwise."""
    current = render_metadata(manifest)
    expected = _section(manifest, "metadata").get("sha256")
    if expected != sha256_bytes(current):
        legacy = render_metadata(manifest, legacy=True)
        if sha256_bytes(legacy) == expected:
            return legacy
    return current


def _read_bounded_text(path: Path) -> str:
    """The UTF-8 text of a metadata file; a link or a file too large to be one of ours is refused unread."""
    try:
        if path.is_symlink():
            raise ManifestError(f"{path} is a symbolic link; a release holds regular files only")
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ManifestError(f"{path}: file too large ({size} bytes; at most {MAX_JSON_BYTES})")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def read_metadata(release_dir: Path) -> dict[str, dict[str, Any]]:
    """Read an existing ``metadata.jsonl`` into ``{file_name: fields}``.

    Raises :class:`ManifestError` for a link, a file too large, a line that is not JSON or is nested too deeply,
    and a missing or repeated ``file_name``.
    """
    path = Path(release_dir) / METADATA_NAME
    rows: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(_read_bounded_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        row = parse_json(line, f"{path}: line {lineno}", error=ManifestError)
        name = row.get("file_name") if isinstance(row, dict) else None
        if not isinstance(name, str) or name in rows:
            raise ManifestError(f"{path}: line {lineno} has a missing or repeated file_name")
        rows[name] = {k: v for k, v in row.items() if k != "file_name"}
    return rows


def signature(manifest: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of the canonical JSON of ``manifest`` without its ``hmac_sha256`` and ``signature`` fields."""
    return hmac.new(key, canonical_bytes(manifest), hashlib.sha256).hexdigest()


def _env_key() -> bytes | None:
    value = os.environ.get(KEY_ENV, "")
    return value.encode("utf-8", "surrogateescape") if value else None  # a key of undecodable bytes is a key too


def _image_size(path: Path, name: str) -> tuple[int, int]:
    """Width and height from the image header (the pixels are not decoded).

    A multi-frame image (animated GIF/WebP/PNG, multi-page TIFF) is refused here too, as everywhere: a sealed
    release holds single pictures, and extra frames are a place to hide a training image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                frames = getattr(im, "n_frames", 1)
                if frames > 1:
                    raise ImageError(f"{name!r}: multi-frame image ({frames} frames); only single-frame images "
                                     "can be released")
                return im.size
    except UnidentifiedImageError:
        raise ImageError(f"{name!r}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name!r}: unreadable image header ({exc})") from None


def _kind_of(rel: str, kind: str) -> str | None:
    """The :class:`ReleaseContents` field for one walked entry; None for the manifest pair itself."""
    if kind != "file":
        return "links" if kind == "link" else "others"
    if any(part.startswith(".") for part in rel.split("/")):
        return "hidden"
    if rel in (MANIFEST_NAME, METADATA_NAME):
        return None
    if rel in ALLOWED_EXTRA:
        return "allowed"
    return "images" if is_image_file(Path(rel)) else "extras"


def release_contents(release_dir: Path) -> ReleaseContents:
    """Classify everything under ``release_dir`` (see :class:`ReleaseContents`); nothing is opened or followed.

    Raises :class:`InputError` when the folder is missing, is not a folder, or a subfolder cannot be listed.
    """
    root = Path(release_dir)
    if not root.is_dir():
        raise InputError(f"{'not a folder' if root.exists() else 'folder not found'}: {root}")
    kinds: dict[str, list[str]] = {k: [] for k in ("images", "hidden", "extras", "links", "others", "allowed")}
    for rel, kind in walk_folder(root):
        field = _kind_of(rel, kind)
        if field is not None:
            kinds[field].append(rel)
    return ReleaseContents(**{k: tuple(sorted(v)) for k, v in kinds.items()})


def _private_files(contents: ReleaseContents) -> list[str]:
    every = contents.extras + contents.hidden
    return sorted(f for f in every if any(f == m or f.endswith("/" + m) for m in PRIVATE_MARKERS))


def _sealable(contents: ReleaseContents) -> list[str]:
    """The images to seal; raises for anything a sealed release may not hold, before any file is opened."""
    if contents.links:
        raise ManifestError(f"{contents.links[0]!r} is a symbolic link; a release holds regular files only "
                            "(links are never followed): copy the file in instead")
    private = _private_files(contents)
    if private:
        raise ManifestError(f"private file inside the release: {private[0]!r}; move it out first")
    stray = contents.extras + contents.others
    if stray:
        raise InputError(f"{stray[0]!r} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor an allowed extra "
                         f"({', '.join(ALLOWED_EXTRA)}); move it out of the release first")
    for name in contents.images:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"file name {ascii(name)} is not valid UTF-8; rename it") from None
    return list(contents.images)


def _check_entries(entries: dict[str, dict[str, Any]], names: set[str]) -> None:
    unknown = sorted(set(entries) - names)
    if unknown:
        raise InputError(f"entries name {len(unknown)} file(s) not in the release, e.g. {unknown[0]!r}")
    for name, fields in entries.items():
        clash = sorted(RESERVED_FIELDS & set(fields))
        if clash:
            raise InputError(f"entry for {name!r} uses reserved field(s) {', '.join(clash)}")


def _file_entry(root: Path, name: str) -> dict[str, Any]:
    """Hash, size and pixel size of one release file (the scan showed no part of its path is a link)."""
    path = root / name
    width, height = _image_size(path, name)
    return {"file_name": name, "sha256": sha256_file(path), "size": path.stat().st_size,
            "width": width, "height": height}


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
    ``run`` are stored as given. Hidden files are skipped (see the module docstring). Raises
    :class:`InputError` for a missing or image-less folder, a file that is neither an image nor an allowed extra,
    or bad entries; :class:`ImageError` for an unreadable image; :class:`ManifestError` for a symbolic link or a
    private report / quarantine file inside the release. Links and stray files are refused before any file is
    opened.
    """
    root = Path(release_dir)
    entries = entries or {}
    names = _sealable(release_contents(root))
    if not names:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    _check_entries(entries, set(names))
    files = []
    with progress.task("Hashing release images", total=len(names)) as task:
        for name in names:
            files.append({**entries.get(name, {}), **_file_entry(root, name)})
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


def _render_pair(manifest: dict[str, Any], signing_key: Ed25519PrivateKey | None) -> tuple[bytes, bytes]:
    """``metadata.jsonl`` and ``manifest.json`` bytes (the manifest signed when a key is set)."""
    manifest = {k: v for k, v in manifest.items() if k not in SIGNATURE_FIELDS}
    key = _env_key()
    try:
        metadata = _metadata_for(manifest)
        if key is not None:
            manifest["hmac_sha256"] = signature(manifest, key)
        if signing_key is not None:
            manifest["signature"] = sign_manifest(manifest, private_key=signing_key)
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise InputError(f"manifest is not JSON-serialisable: {exc}") from None
    return metadata, text.encode("utf-8")


def _stage(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new hidden temp file beside ``path`` and fsync it; returns the temp path.

    ``open(..., "xb")`` creates it exclusively with the usual permissions (0666 less the umask). A leftover of a
    crash matches the release writer's cleanup pattern (``.manifest.json.*.tmp``, ``.metadata.jsonl.*.tmp``).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _keep_previous(path: Path) -> Path | None:
    """A hard link (or copy) of the current ``path`` to put back on failure; None when there is none to keep."""
    if not os.path.lexists(path) or (path.is_dir() and not path.is_symlink()):
        return None
    backup = path.with_name(f".{path.name}.{secrets.token_hex(8)}.prev.tmp")
    try:
        os.link(path, backup, follow_symlinks=False)
    except OSError:  # a file system without hard links
        shutil.copyfile(path, backup, follow_symlinks=False)
    return backup


def _replace_or_restore(staged: Path, dest: Path, meta: Path, backup: Path | None) -> None:
    """Rename the staged manifest into place; when that fails, put the previous metadata back and re-raise.

    Only errors and Ctrl-C restore: a process that dies here runs no code, and the release writer's resume
    removes the lone metadata (the crash tests simulate death with a bare ``BaseException``).
    """
    try:
        os.replace(staged, dest)
    except (Exception, KeyboardInterrupt):
        if backup is not None:
            os.replace(backup, meta)
        else:
            meta.unlink(missing_ok=True)
        raise


def save_manifest(release_dir: Path, manifest: dict[str, Any], *,
                  signing_key: Ed25519PrivateKey | None = None) -> Path:
    """Write ``metadata.jsonl`` and ``manifest.json`` all-or-nothing (signed when ``GUARD_MANIFEST_KEY`` is set).

    ``signing_key`` (default: the key file named by ``GUARD_SIGNING_KEY``, if set) adds an Ed25519 signature; a
    missing or bad key file is an :class:`InputError` before anything is written.

    Returns the manifest path. Both files are staged and fsynced first; then metadata is renamed into place and
    the folder fsynced (so the metadata is durable before any manifest names its hash), then the manifest. If
    the manifest step fails, the previous ``metadata.jsonl`` is restored (or the new one removed). Raises
    :class:`InputError` for a manifest that is not JSON-serialisable and :class:`ManifestError` when the files
    cannot be written (the previous pair is kept); no temp file is left behind either way.
    """
    root = Path(release_dir)
    metadata, body = _render_pair(manifest, signing_key if signing_key is not None else env_signing_key())
    try:
        _publish(root, metadata, body)
    except OSError as exc:
        raise ManifestError(f"cannot write {MANIFEST_NAME} and {METADATA_NAME} in {root}: "
                            f"{exc.strerror or exc}; the previous files were kept") from None
    return root / MANIFEST_NAME


def _publish(root: Path, metadata: bytes, body: bytes) -> None:
    """Stage both files, rename metadata then manifest, restore the metadata if the manifest step fails."""
    meta, dest = root / METADATA_NAME, root / MANIFEST_NAME
    leftovers: list[Path | None] = []
    try:
        leftovers.append(_stage(meta, metadata))
        leftovers.append(_stage(dest, body))
        leftovers.append(_keep_previous(meta))
        staged_meta, staged_manifest, backup = leftovers
        os.replace(staged_meta, meta)
        fsync_dir(root)
        _replace_or_restore(staged_manifest, dest, meta, backup)
    finally:
        for tmp in leftovers:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
    fsync_dir(root)


def write_manifest(
    release_dir: Path,
    *,
    entries: dict[str, dict[str, Any]] | None = None,
    fingerprints: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
    progress: Progress = NULL_PROGRESS,
    signing_key: Ed25519PrivateKey | None = None,
) -> Path:
    """:func:`refuse_hidden` and :func:`build_manifest`, then :func:`save_manifest`; returns the manifest path."""
    refuse_hidden(release_dir)
    signing_key = signing_key if signing_key is not None else env_signing_key()  # a bad key fails before hashing
    manifest = build_manifest(release_dir, entries=entries, fingerprints=fingerprints, run=run, progress=progress)
    return save_manifest(release_dir, manifest, signing_key=signing_key)


def refuse_hidden(release_dir: Path) -> None:
    """Refuse a folder holding a hidden file before sealing it (:class:`InputError` naming it).

    :func:`build_manifest` skips hidden files (the release writer seals beside its own ``.guard/`` state), but a
    hidden file is never sealed and verification reports it, so a folder sealed with one would not verify.
    """
    hidden = release_contents(release_dir).hidden
    if hidden:
        raise InputError(f"hidden file {hidden[0]!r} in the release: hidden files are never sealed and verify "
                         "reports them; remove it first")


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


def _load_manifest(root: Path) -> Any:
    """Parse ``manifest.json`` with size and nesting bounds; a link is refused unread."""
    path = root / MANIFEST_NAME
    if path.is_symlink():
        raise ManifestError(f"{path} is a symbolic link; a release holds regular files only")
    try:
        return read_json(path, error=ManifestError)
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in {root}; run `guard manifest {root}` first") from None


def read_manifest(release_dir: Path) -> dict[str, Any]:
    """Load and validate ``manifest.json``; every listed path is checked to stay inside the release.

    Raises :class:`ManifestError` when the file is missing, a link, too large, not JSON or too deeply nested, of
    another schema, malformed, or lists an unsafe path (absolute, ``..``, backslash, or a link resolving outside
    the release or in a loop).
    """
    root = Path(release_dir)
    if not root.is_dir():
        raise InputError(f"{'not a folder' if root.exists() else 'folder not found'}: {root}")
    manifest = _load_manifest(root)
    path = root / MANIFEST_NAME
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ManifestError(f"{path}: not a synfundus-guard manifest (expected schema {SCHEMA!r})")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise ManifestError(f"{path}: malformed manifest (no files list)")
    seen: set[str] = set()
    for i, f in enumerate(files):
        name = _check_file_entry(i, f, seen)
        try:
            safe_join(root, name)
        except RuntimeError:  # pathlib's symlink-loop error
            raise ManifestError(f"unsafe path in manifest: {name!r} (symbolic link loop)") from None
    return manifest


def _compare_file(root: Path, f: dict[str, Any], regular: set[str], links: set[str]) -> str | None:
    """``"removed"``, ``"modified"`` or None for one listed file; nothing behind a link is opened."""
    name = f["file_name"]
    if name not in regular:
        parts = name.split("/")
        through_link = any("/".join(parts[: i + 1]) in links for i in range(len(parts)))
        return "modified" if through_link or os.path.lexists(root / name) else "removed"
    path = root / name
    if path.stat().st_size != f["size"] or sha256_file(path) != f["sha256"]:
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


def _metadata_problems(root: Path, manifest: dict[str, Any], contents: ReleaseContents) -> list[str]:
    problems = []
    expected = _section(manifest, "metadata").get("sha256")
    try:  # either rendering: releases sealed before rows were made Parquet-safe still verify
        rendered = {sha256_bytes(render_metadata(manifest, legacy=legacy)) for legacy in (False, True)}
    except (TypeError, ValueError):  # NaN or other values JSON allows in, but a manifest never holds
        rendered = set()
    meta = root / METADATA_NAME
    if METADATA_NAME in contents.links:
        problems.append(f"{METADATA_NAME} is a symbolic link (not followed)")
    elif not meta.is_file():
        problems.append(f"{METADATA_NAME} is missing")
    elif sha256_file(meta) != expected:
        problems.append(f"{METADATA_NAME} differs from the manifest's hash")
    if expected not in rendered:
        problems.append("per-image fields in the manifest were edited (they no longer match the metadata hash)")
    return problems


def _signature_problems(manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    key, sig = _env_key(), manifest.get("hmac_sha256")
    if key is not None and sig is None:
        return [f"manifest is not signed but {KEY_ENV} is set"], []
    if key is not None and not hmac.compare_digest(str(sig), _signature_or_empty(manifest, key)):
        return [f"manifest signature does not match (wrong {KEY_ENV} or the manifest was edited)"], []
    if sig is not None and key is None:
        return [], [f"manifest is signed; set {KEY_ENV} to check the signature"]
    return [], []


def _document_problems(root: Path, manifest: dict[str, Any], contents: ReleaseContents,
                       public_key: Ed25519PublicKey | None) -> tuple[list, list]:
    """Problems and notes about the manifest, its metadata, its signature and what else the folder holds."""
    files = manifest["files"]
    problems = []
    if manifest.get("root_sha256") != root_sha256(files):
        problems.append("root_sha256 does not match the file list (manifest entries were edited)")
    problems += _metadata_problems(root, manifest, contents)
    if _section(manifest, "counts").get("images") != len(files):
        problems.append("counts.images does not match the file list")
    sig_problems, notes = _signature_problems(manifest)
    problems += sig_problems
    sig_problems, sig_notes = signature_problems(manifest, public_key=public_key)
    problems += sig_problems
    notes += sig_notes
    problems += [f"symbolic link in the release (not followed): {p}" for p in contents.links]
    problems += [f"not a regular file (FIFO, socket or device): {p}" for p in contents.others]
    problems += [f"private file inside the release: {p}" for p in _private_files(contents)]
    notes += [f"{p} is allowed beside the images but not covered by the manifest" for p in contents.allowed]
    return problems, notes


def verify_release(release_dir: Path, *, progress: Progress = NULL_PROGRESS,
                   public_key: Ed25519PublicKey | None = None) -> VerifyResult:
    """Re-hash every listed file and compare the release with its manifest.

    With ``public_key``, the manifest must also carry a valid Ed25519 signature by that key (a problem otherwise).

    Returns a :class:`VerifyResult` (a difference is data, not an exception): every unlisted file is *added*,
    links and special files are also problems and are never read through. Raises :class:`ManifestError` when
    ``manifest.json`` is missing, malformed or lists an unsafe path; nothing is hashed in that case.
    """
    root = Path(release_dir)
    manifest = read_manifest(root)
    contents = release_contents(root)
    regular = set(contents.images + contents.hidden + contents.extras + contents.allowed)
    changes: dict[str, list[str]] = {"removed": [], "modified": []}
    with progress.task("Verifying release", total=len(manifest["files"])) as task:
        for f in manifest["files"]:
            change = _compare_file(root, f, regular, set(contents.links))
            if change:
                changes[change].append(f["file_name"])
            task.advance()
    problems, notes = _document_problems(root, manifest, contents, public_key)
    added = contents.unlisted({f["file_name"] for f in manifest["files"]})
    removed, modified = tuple(sorted(changes["removed"])), tuple(sorted(changes["modified"]))
    ok = not (added or removed or modified or problems)
    return VerifyResult(ok, added, removed, modified, tuple(problems), tuple(notes))
