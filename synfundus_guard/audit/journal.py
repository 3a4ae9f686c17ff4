"""A resumable audit: each checked batch is committed to ``OUT/private/journal.sqlite`` as soon as it is done.

A killed audit (``kill -9``, power loss, Ctrl-C) leaves the journal behind; the same command again finds it,
re-reads each journaled file, and reuses its findings when the file's sha256 is the one that was checked, so
finished work is not redone. Findings are reused only under the same audit configuration (the ``key``: policy,
check fingerprints and thresholds, training index); under another one the journal is started afresh. When the
report is written the journal is removed. It names training images (private evidence), so it lives in the
owner-only ``private/`` folder and is written 0600.

SQLite (stdlib) commits each batch atomically: a kill between commits loses at most the batch in flight.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..fsutil import create_private_file
from ..results import PRIVATE_DIR
from .base import Finding

NAME = "journal.sqlite"


def journal_path(out_dir: Path) -> Path:
    return Path(out_dir) / PRIVATE_DIR / NAME


def holds_journal(out_dir: Path) -> bool:
    """True when ``out_dir`` holds an unfinished audit's journal (and so may be resumed into)."""
    path = journal_path(out_dir)
    if not path.is_file() or path.is_symlink():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute("SELECT value FROM meta WHERE name = 'kind'").fetchone() == ("guard-audit-journal",)
    except sqlite3.Error:
        return False


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def encode_findings(findings: Iterable[Finding]) -> str:
    return json.dumps([{"check": f.check, "flagged": f.flagged, "reasons": list(f.reasons), "scores": f.scores,
                        "private": f.private, "error": f.error} for f in findings], default=_plain)


def decode_findings(text: str) -> list[Finding]:
    return [Finding(check=d["check"], flagged=bool(d["flagged"]), reasons=tuple(d["reasons"]),
                    scores=dict(d["scores"]), private=dict(d["private"]), error=d["error"])
            for d in json.loads(text)]


class Journal:
    """The journal of one audit configuration ``key`` under ``out_dir``."""

    def __init__(self, out_dir: Path, key: str):
        Path(out_dir).mkdir(parents=True, exist_ok=True)  # the report folder is public: the usual mode
        self.path = journal_path(out_dir)
        create_private_file(self.path)  # private/ 0700 when made here, the file 0600 (and so SQLite's side files)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            self.db.execute("CREATE TABLE IF NOT EXISTS done (file_name TEXT PRIMARY KEY, sha256 TEXT, "
                            "findings TEXT)")
            old = self.db.execute("SELECT value FROM meta WHERE name = 'key'").fetchone()
            if old != (key,):
                self.db.execute("DELETE FROM done")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('kind', 'guard-audit-journal'), ('key', ?)", (key,))

    def finished(self) -> dict[str, tuple[str, str]]:
        """``file_name -> (sha256, encoded findings)`` of every journaled image."""
        return {n: (s, f) for n, s, f in self.db.execute("SELECT file_name, sha256, findings FROM done")}

    def add(self, rows: Iterable[tuple[str, str, list[Finding]]]) -> None:
        """Commit one checked batch: (file name, sha256 of the checked bytes, findings) per image."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO done VALUES (?, ?, ?)",
                                [(n, s, encode_findings(f)) for n, s, f in rows])

    def close(self) -> None:
        self.db.close()

    def remove(self) -> None:
        """Close and delete the journal (and SQLite's side files): the report now holds its results."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
