"""On-disk cache of per-image arrays keyed by (file content sha256, function fingerprint).

SQLite (stdlib, atomic commits, one file) holds ``.npy``-encoded blobs. The cache lives in a private folder:
it holds features of training images. Concurrent readers are fine; writes are batched in transactions.

Privacy: the folder is the boundary. A missing folder is created 0700; the database file is created 0600
before SQLite opens it (and an older, looser one is tightened), and SQLite gives its ``-journal`` and
``-wal`` files the mode of the database file, so no file of the cache is readable by others.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import InputError
from ..fsutil import create_private_file


def _encode(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _decode(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


class ArrayCache:
    """Cache of arrays; ``None`` path gives an in-memory cache (tests, one-off runs)."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        try:
            if self.path is not None:
                create_private_file(self.path)
            self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", timeout=60)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS arrays (fp TEXT NOT NULL, sha TEXT NOT NULL, value BLOB NOT NULL,"
                " PRIMARY KEY (fp, sha))"
            )
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"cannot open cache {self.path}: {exc}") from None
        except OSError as exc:
            raise InputError(f"cannot open cache {self.path}: {exc.strerror or exc}") from None

    def get_many(self, fp: str, shas: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached arrays for the given content hashes (missing ones are absent from the result)."""
        shas = list(shas)
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(shas), 500):
            chunk = shas[i : i + 500]
            q = f"SELECT sha, value FROM arrays WHERE fp = ? AND sha IN ({','.join('?' * len(chunk))})"
            try:
                for sha, blob in self._db.execute(q, [fp, *chunk]):
                    out[sha] = _decode(blob)
            except (sqlite3.DatabaseError, ValueError):
                return out  # a damaged cache is a miss, never an error: values are recomputed
        return out

    def put_many(self, fp: str, items: dict[str, np.ndarray]) -> None:
        """Store arrays in one transaction."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO arrays (fp, sha, value) VALUES (?, ?, ?)",
                [(fp, sha, _encode(a)) for sha, a in items.items()],
            )

    def close(self) -> None:
        """Close the database."""
        self._db.close()
