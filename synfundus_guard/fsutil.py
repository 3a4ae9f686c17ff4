"""Atomic file writes, content hashing and safe path joins.

Every file the toolkit publishes is written to a temporary sibling and renamed into place, so a crash never
leaves a half-written report, manifest or image behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ManifestError

_CHUNK = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it survives power loss (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename, fsync folder).

    Files get the usual permissions (0666 less the umask); ``private=True`` keeps them owner-only (0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if not private:
                os.fchmod(fh.fileno(), _FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, private: bool = False) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), private=private)


def atomic_write_json(path: Path, obj: Any, *, private: bool = False) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n", private=private)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_relpath(rel: str) -> PurePosixPath:
    """Validate a release-relative path from an untrusted file (manifest, metadata).

    Returns the normalised relative path. Raises :class:`ManifestError` for absolute paths, ``..`` parts,
    backslashes, empty names or NUL bytes: a manifest may never point outside its release.
    """
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise ManifestError(f"unsafe path in manifest: {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or any(part in ("..", "") for part in rel.split("/")) or rel.startswith("~"):
        raise ManifestError(f"unsafe path in manifest: {rel!r} (absolute or '..' paths are not allowed)")
    return p


def safe_join(root: Path, rel: str) -> Path:
    """Join an untrusted relative path onto ``root``; it must stay inside ``root`` after resolving links."""
    p = safe_relpath(rel)
    root_resolved = Path(root).resolve()
    full = (root_resolved / p).resolve()
    if full != root_resolved and root_resolved not in full.parents:
        raise ManifestError(f"unsafe path in manifest: {rel!r} resolves outside the release")
    return full
