"""Atomic file writes, all-or-nothing folders, private folders, content hashing and safe path joins.

Every file the toolkit publishes is written to a temporary sibling and renamed into place, so a crash never
leaves a half-written report, manifest or image behind; a folder of outputs (a phantom dataset, a split) is
built in a hidden sibling and renamed into place the same way (:func:`staged_dir`). Artefacts that name or hold
training data (quarantines, feature caches, private evidence, training cards) live in owner-only folders made
by :func:`make_private_dir` and are written with ``private=True`` (0600).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterator

from .errors import InputError, ManifestError

_CHUNK = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
PRIVATE_DIR_MODE = 0o700
"""Mode of the folders :func:`make_private_dir` creates."""
PRIVATE_FILE_MODE = 0o600
"""Mode of files written with ``private=True``."""


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
    """Write ``data`` to ``path`` atomically (:func:`atomic_write_with`)."""
    atomic_write_with(path, lambda fh: fh.write(data), private=private)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], Any], *, private: bool = False) -> None:
    """Write ``path`` atomically with ``write(fh)`` (streaming into a temp file in the same folder, fsync, rename,
    fsync folder); a failed write leaves nothing behind.

    Files get the usual permissions (0666 less the umask); ``private=True`` keeps them owner-only (0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if not private:
                os.fchmod(fh.fileno(), _FILE_MODE)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_durable(path: Path, data: bytes, *, append: bool = False, private: bool = False) -> None:
    """Write (or append) ``data`` in place with one write loop and an fsync; the parent folder must exist.

    Not atomic on its own: meant for files inside a folder that is itself staged (:func:`staged_dir`) or
    journaled, where a torn file is never seen. New files get the usual permissions; ``private=True`` makes
    the file 0600, also when it already existed with a looser mode (an append to an older file).
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE_MODE if private else 0o666)
    try:
        if private:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(folder: Path, mode: int) -> list[Path]:
    """Create ``folder`` and its missing parents (``mode`` before the umask); returns those created, top first.

    Folders that already exist are left alone, so a caller can undo exactly what it made.
    """
    missing = []
    p = Path(os.path.abspath(folder))
    while not p.is_dir() and p != p.parent:
        missing.append(p)
        p = p.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # made by a concurrent run meanwhile: not ours to change or remove
        created.append(d)
    return created


def make_private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) owner-only (0700) and return it.

    Only folders this call creates get the mode, exactly (chmod after mkdir, whatever the umask); an existing
    folder keeps its mode, because it may be the user's (``--cache-dir /tmp``) and changing the mode of a
    folder the tool did not make is not the tool's call. Files inside are written 0600 (``private=True``)
    either way, so their content is protected even there. Raises OSError when ``path`` is a file.
    """
    path = Path(path)
    for folder in _make_dirs(path, PRIVATE_DIR_MODE):
        os.chmod(folder, PRIVATE_DIR_MODE)
    return path


def create_private_file(path: Path) -> None:
    """Make a database's folder (0700 when created) and its file, 0600, before SQLite touches either.

    Created here rather than by SQLite, which would use the umask's mode for the file and, after it, for its
    journals. Raises OSError when the folder or file cannot be made.
    """
    make_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        if os.fstat(fd).st_uid == os.getuid():  # another user's shared cache keeps its mode: not ours to change
            os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)


def require_new_dir(out: Path) -> None:
    """Refuse an output folder that is not absent or empty, so nothing the user made is ever replaced.

    Raises :class:`InputError` for a file or symbolic link at ``out``, or a folder that holds anything.
    """
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(f"output path is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"output folder is not empty: {out}")


def _publish_dir(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` folder to ``out`` (absent or empty) and make the rename durable."""
    fsync_dir(staging)
    try:
        os.rename(staging, out)  # POSIX: replaces ``out`` only when it is an empty folder
    except OSError:
        require_new_dir(out)  # filled meanwhile: say so, and leave it as it is
        if os.name != "nt" or not out.is_dir():
            raise
        out.rmdir()  # Windows never renames onto a folder; ``out`` is empty, checked just above
        os.rename(staging, out)
    fsync_dir(out.parent)


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Build the folder ``out`` all or nothing: yields an empty hidden sibling to fill, then renames it to ``out``.

    ``out`` must be absent or an empty folder (:func:`require_new_dir`, checked before and again at the
    rename). On any exception, KeyboardInterrupt included, the sibling and the parent folders this call
    created are removed and ``out`` is left as it was: readers see a complete folder or none. The sibling is
    ``.NAME.partial-<random>``: concurrent runs never share one, and its mode is the usual one (unlike
    mkdtemp's 0700), which the finished folder keeps.
    """
    require_new_dir(out)
    target = Path(os.path.abspath(out))  # "." or "a/.." have no name of their own to put a sibling beside
    created: list[Path] = []
    staging = target.parent / f".{target.name}.partial-{secrets.token_hex(6)}"
    try:
        created += _make_dirs(target.parent, 0o777)
        staging.mkdir()
        yield staging
        _publish_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:  # no longer empty: someone else uses it now
                pass
        raise


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
