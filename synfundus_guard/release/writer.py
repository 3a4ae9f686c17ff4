"""Crash-safe, resumable release writer for the guarded sampler.

Promise: ``kill -9`` at any moment never leaves an image in the release without its journal (and, after
finalize, manifest) entry, never puts a quarantined image in the release, and re-running the same command
resumes and ends in a release that passes ``guard verify``.

State lives in ``RELEASE/.guard/`` (hidden, so loaders and :func:`~.manifest.build_manifest` skip it):
``state.json`` (hash of the run config), ``lock`` (flock: one writer per release), ``journal.jsonl`` (one line
per committed batch) and ``staging/<batch>/``. :meth:`ReleaseWriter.commit_batch` proceeds in this order:

1. quarantine: reason lines are appended to ``QUARANTINE/reasons.jsonl`` (fsync), then the rejected images are
   written there (fsync). The quarantine must lie outside the release, so a rejected image never enters it.
   It is private (a rejected image may be a near-copy of a training photograph): folders the writer makes
   there are 0700, its files 0600;
2. accepted images are written to ``.guard/staging/<batch>/`` and fsynced;
3. **commit point**: one JSON line (names, sha256, sizes, per-image fields, ``next_index``) is appended to the
   journal with a single write and fsync. A last line without its newline or that is not JSON is torn: the
   batch never happened;
4. staged images are renamed into the release (same file system, atomic), the folders fsynced, staging removed.

Recovery on open makes the journal the truth. A journaled batch rolls forward: images still in staging are
renamed into place. A batch that was not journaled rolls back: its staged files, quarantine lines and images
are deleted, and ``next_index`` is the journal's, so the sampler regenerates exactly the same samples from the
same seeds. Images in the release that no journal line names are deleted. Should a journaled image be gone
from both the release and staging (damage from outside), the journal is cut before that batch and the index
rewound, which again regenerates the same images.

:meth:`ReleaseWriter.finalize` writes ``metadata.jsonl`` and ``manifest.json`` from the journal, then
``croissant.json`` (:mod:`.croissant`, built from the manifest; re-opening a release sealed without it writes
it), then removes ``.guard/``: the shipped folder holds only images and those three files. The manifest keeps a
small ``run`` record (config hash, counts, ``next_index``) so a re-run recognises the finished release. The run
config itself is not published: it may hold local paths, and public files never name training data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.images import is_image_file
from ..errors import InputError, ManifestError
from ..fsutil import (atomic_write_json, atomic_write_text, make_private_dir, safe_join, safe_relpath, sha256_bytes,
                      sha256_file, write_durable)
from ..progress import NULL_PROGRESS, Progress
from .croissant import CROISSANT_NAME, write_croissant
from .manifest import MANIFEST_NAME, METADATA_NAME, RESERVED_FIELDS, build_manifest, save_manifest

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

STATE_DIR = ".guard"
REASONS_NAME = "reasons.jsonl"
STATE_SCHEMA = "synfundus-guard/writer-state/v1"
_TMP_LEFTOVER = re.compile(r"^\.(manifest\.json|metadata\.jsonl|croissant\.json)\..*\.tmp$")

Accepted = tuple[str, bytes, dict[str, Any]]
Rejected = tuple[str, bytes, dict[str, Any]]


@dataclass(frozen=True)
class WriterState:
    """Progress of a release run: what is done, and where the sampler resumes."""

    accepted: int
    """Images committed to the release."""
    quarantined: int
    """Images committed to the quarantine."""
    next_index: int
    """Sample index the sampler continues from."""
    batches: int
    """Committed batches."""
    finalized: bool = False
    """True when the manifest is written; nothing more can be committed."""
    repairs: tuple[str, ...] = ()
    """What recovery did on open (rolled forward, rolled back, rewound), one line each."""


def config_sha256(run_config: dict[str, Any]) -> str:
    """Hash of the canonical JSON of a run config; two runs write the same release only when it matches."""
    try:
        text = json.dumps(run_config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"run config is not JSON-serialisable: {exc}") from None
    return sha256_bytes(text.encode("ascii"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes, *, append: bool = False, private: bool = False) -> None:
    """Write (or append) with one write loop and an fsync, making the parent folder first.

    Release and state files get the usual umask permissions; ``private=True`` (the quarantine) makes any
    missing folder 0700 and the file 0600.
    """
    if private:
        make_private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    write_durable(path, data, append=append, private=private)


def _read_lines(path: Path, check: Any) -> tuple[list[dict[str, Any]], bool]:
    """Parse a JSON-lines file written by :func:`_write_durable`; returns (rows, torn_tail).

    ``check(row, rows_so_far)`` raises ValueError for an invalid row. Only the last line may be torn (no
    newline, or not valid); a bad line followed by more lines is corruption.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], False
    rows: list[dict[str, Any]] = []
    pos = 0
    while (nl := data.find(b"\n", pos)) >= 0:
        try:
            row = json.loads(data[pos:nl])
            check(row, rows)
        except (ValueError, TypeError, KeyError, ManifestError):
            if data.find(b"\n", nl + 1) >= 0:
                raise InputError(f"{path} is corrupt at line {len(rows) + 1}; remove its folder to start over")
            return rows, True
        rows.append(row)
        pos = nl + 1
    return rows, pos < len(data)


def _check_record(rec: dict[str, Any], done: list[dict[str, Any]]) -> None:
    start = done[-1]["next_index"] if done else 0
    if rec["batch"] != len(done) or rec["start"] != start or not rec["next_index"] >= start:
        raise ValueError("journal out of sequence")
    for a in rec["accepted"]:
        safe_relpath(a["file_name"])
        if not (isinstance(a["sha256"], str) and isinstance(a["size"], int) and isinstance(a["entry"], dict)):
            raise ValueError("bad journal entry")
    for name in rec["rejected"]:
        safe_relpath(name)


def _check_reason(row: dict[str, Any], _done: list[dict[str, Any]]) -> None:
    safe_relpath(row["file_name"])
    int(row["batch"])


def _json_line(obj: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is not JSON-serialisable: {exc}") from None


class ReleaseWriter:
    """Writes a release batch by batch so that a crash at any moment can be resumed (see module docstring).

    Opening a folder: empty (or missing) starts a run; one holding ``.guard/`` state of the same run config
    resumes it (recovering an interrupted batch); one finalized by the same config opens finalized. Raises
    :class:`InputError` for a folder holding a different release or other files, a quarantine inside the
    release, or a release locked by another process. Use as a context manager (or call :meth:`close`).
    """

    def __init__(self, release_dir: Path, quarantine_dir: Path, *, run_config: dict[str, Any],
                 progress: Progress = NULL_PROGRESS):
        self.release_dir = Path(release_dir)
        self.quarantine_dir = Path(quarantine_dir)
        self.config_sha256 = config_sha256(run_config)
        self._progress = progress
        self._guard = self.release_dir / STATE_DIR
        self._lock_fd: int | None = None
        self._records: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._rejected: set[str] = set()
        self._final: WriterState | None = None
        self._repairs: tuple[str, ...] = ()
        self._open()

    # -- opening and recovery -------------------------------------------------------------------------------

    def _open(self) -> None:
        release, quarantine = self.release_dir.resolve(), self.quarantine_dir.resolve()
        if quarantine == release or release in quarantine.parents:
            raise InputError(f"the quarantine {self.quarantine_dir} must lie outside the release {self.release_dir}")
        self.release_dir.mkdir(parents=True, exist_ok=True)
        different = InputError(f"{self.release_dir} holds a different release (its run config differs); "
                               "use another folder or remove it")
        run = self._finished_run()
        if run is not None and run.get("config_sha256") == self.config_sha256:
            self._complete_finalize()
            shutil.rmtree(self._guard, ignore_errors=True)  # left over by a finalize cut short
            self.close()
            self._final = WriterState(int(run.get("accepted", 0)), int(run.get("quarantined", 0)),
                                      int(run.get("next_index", 0)), int(run.get("batches", 0)), finalized=True)
            return
        state_file = self._guard / "state.json"
        if state_file.exists():
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise InputError(f"{state_file} is unreadable; remove {self._guard} to start over") from None
            if not isinstance(state, dict) or state.get("config_sha256") != self.config_sha256:
                raise different
            self._lock()
            self._recover()
        elif run is not None:
            raise different
        elif any(p.name != STATE_DIR for p in self.release_dir.iterdir()):
            raise InputError(f"{self.release_dir} is not empty and holds no run to resume; use an empty folder")
        else:
            self._lock()
            shutil.rmtree(self._guard / "staging", ignore_errors=True)
            (self._guard / "journal.jsonl").unlink(missing_ok=True)
            atomic_write_json(state_file, {"schema": STATE_SCHEMA, "config_sha256": self.config_sha256})
            _fsync_dir(self._guard)

    def _finished_run(self) -> dict[str, Any] | None:
        """The ``run`` record of an existing manifest ({} when it has none); None without a readable one."""
        try:
            manifest = json.loads((self.release_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        run = manifest.get("run") if isinstance(manifest, dict) else None
        return run if isinstance(run, dict) else {}

    def _complete_finalize(self) -> None:
        """Finish a finalize cut short after sealing: remove its temp files and write a missing croissant.json.

        A complete release is left untouched (nothing is written). Otherwise the lock is taken first, so that a
        finalize still running in another process is refused rather than raced.
        """
        leftovers = [p for p in self.release_dir.iterdir() if _TMP_LEFTOVER.match(p.name)]
        if not leftovers and (self.release_dir / CROISSANT_NAME).is_file():
            return
        self._lock()
        for path in leftovers:
            path.unlink(missing_ok=True)
        if not (self.release_dir / CROISSANT_NAME).is_file():
            write_croissant(self.release_dir)

    def _lock(self) -> None:
        self._guard.mkdir(exist_ok=True)
        fd = os.open(self._guard / "lock", os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise InputError(f"{self.release_dir} is being written by another process") from None
        self._lock_fd = fd

    def _recover(self) -> None:
        journal = self._guard / "journal.jsonl"
        records, torn = _read_lines(journal, _check_record)
        repairs = ["dropped a batch interrupted before its journal line"] if torn else []
        broken = self._roll_forward(records)
        if broken is not None:
            repairs.append(f"images of batch {broken} were lost; rewound to sample {records[broken]['start']}")
            records = records[:broken]
        if torn or broken is not None:
            atomic_write_text(journal, "".join(_json_line(r, "journal") for r in records))
        self._records = records
        self._names = {a["file_name"] for r in records for a in r["accepted"]}
        self._rejected = {name for r in records for name in r["rejected"]}
        repairs += self._remove_strays()
        shutil.rmtree(self._guard / "staging", ignore_errors=True)
        repairs += self._recover_quarantine()
        self._repairs = tuple(repairs)
        for line in repairs:
            self._progress.log(f"resume: {line}")

    def _roll_forward(self, records: list[dict[str, Any]]) -> int | None:
        """Move journaled images still in staging into place; returns the first batch that cannot be completed."""
        moved: set[Path] = set()
        for rec in records:
            for a in rec["accepted"]:
                dest = safe_join(self.release_dir, a["file_name"])
                if dest.is_file() and dest.stat().st_size == a["size"]:
                    continue
                staged = self._guard / "staging" / str(rec["batch"]) / a["file_name"]
                if not (staged.is_file() and sha256_file(staged) == a["sha256"]):
                    return rec["batch"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, dest)
                moved.add(dest.parent)
        for folder in moved:
            _fsync_dir(folder)
        return None

    def _remove_strays(self) -> list[str]:
        """Delete images no journal line names, stale manifest/metadata and temp files of a cut-short finalize."""
        removed = []
        for dirpath, dirs, files in os.walk(self.release_dir):
            top = Path(dirpath) == self.release_dir
            dirs[:] = [d for d in dirs if not (top and d == STATE_DIR)]
            for f in files:
                rel = (Path(dirpath) / f).relative_to(self.release_dir).as_posix()
                stale = top and (f in (MANIFEST_NAME, METADATA_NAME) or _TMP_LEFTOVER.match(f))
                stray = is_image_file(Path(f)) and not f.startswith(".") and rel not in self._names
                if stale or stray:
                    os.unlink(Path(dirpath) / f)
                    removed.append(rel)
        return [f"removed {len(removed)} file(s) not in the journal, e.g. {removed[0]}"] if removed else []

    def _recover_quarantine(self) -> list[str]:
        path = self.quarantine_dir / REASONS_NAME
        rows, torn = _read_lines(path, _check_reason)
        committed = {name: r["batch"] for r in self._records for name in r["rejected"]}
        ours = self.config_sha256[:16]  # rows of other runs sharing this quarantine are left alone
        keep = [row for row in rows if row.get("run") != ours or committed.get(row["file_name"]) == row["batch"]]
        drop = [row for row in rows if row.get("run") == ours and committed.get(row["file_name"]) != row["batch"]]
        for row in drop:
            safe_join(self.quarantine_dir, row["file_name"]).unlink(missing_ok=True)
        for leftover in self.quarantine_dir.glob(f".{REASONS_NAME}.*.tmp"):  # a rewrite below, cut short
            leftover.unlink()
        if torn or drop:
            atomic_write_text(path, "".join(_json_line(row, "reason") for row in keep), private=True)
        repairs = [f"removed {len(drop)} quarantined image(s) of an interrupted batch"] if drop else []
        lost = len(set(committed) - {row["file_name"] for row in keep if row.get("run") == ours})
        return repairs + ([f"{lost} quarantine reason(s) are missing"] if lost else [])

    def accepted_entries(self) -> dict[str, dict[str, Any]]:
        """Per image in the release its entry (index, seed, labels, scores, warnings): from the journal, or
        from the manifest once the release is sealed."""
        if self._final is not None:
            from .manifest import read_manifest

            return {f["file_name"]: f for f in read_manifest(self.release_dir).get("files", [])}
        return {a["file_name"]: a["entry"] for r in self._records for a in r["accepted"]}

    def quarantine_rows(self) -> list[dict[str, Any]]:
        """This run's quarantine reason rows (file name, index, scores, reasons, private evidence)."""
        rows, _ = _read_lines(self.quarantine_dir / REASONS_NAME, _check_reason)
        return [row for row in rows if row.get("run") == self.config_sha256[:16]]

    # -- writing --------------------------------------------------------------------------------------------

    @property
    def state(self) -> WriterState:
        """What is committed so far, and where the sampler resumes."""
        if self._final is not None:
            return self._final
        return WriterState(
            accepted=len(self._names),
            quarantined=len(self._rejected),
            next_index=self._records[-1]["next_index"] if self._records else 0,
            batches=len(self._records),
            repairs=self._repairs,
        )

    def _check_name(self, name: Any, data: Any, used: set[str], *, image: bool) -> str:
        try:
            plain = safe_relpath(name).as_posix() == name
        except ManifestError:
            plain = False
        hidden = plain and any(part.startswith(".") for part in name.split("/"))
        if not plain or hidden or (image and not is_image_file(Path(name))):
            raise InputError(f"unusable file name {name!r} (a relative, non-hidden image path is needed)")
        if name in used or name in (MANIFEST_NAME, METADATA_NAME, REASONS_NAME):
            raise InputError(f"file name {name!r} is used twice or reserved")
        if not isinstance(data, bytes):
            raise InputError(f"{name}: image data must be bytes")
        used.add(name)
        return name

    def commit_batch(self, accepted: list[Accepted], rejected: list[Rejected], next_index: int) -> WriterState:
        """Commit one batch atomically: all of it is in the release and quarantine after a crash, or none.

        ``accepted`` holds ``(file_name, png_bytes, fields)`` (fields: seed, labels, scores ... published in
        the manifest); ``rejected`` holds ``(file_name, png_bytes, reason)`` (the reason goes to the private
        quarantine only). ``next_index`` is the sample index after this batch. Returns the new state.
        """
        if self._final is not None or self._lock_fd is None:
            raise InputError("this release writer is finalized or closed")
        state = self.state
        if not isinstance(next_index, int) or next_index < state.next_index:
            raise InputError(f"next_index {next_index!r} goes back before {state.next_index}")
        used = self._names | self._rejected
        items = []
        for name, data, fields in accepted:
            self._check_name(name, data, used, image=True)
            if not isinstance(fields, dict) or RESERVED_FIELDS & set(fields) or fields.get("verdict", "pass") != "pass":
                raise InputError(f"{name}: fields must be a dict with no {sorted(RESERVED_FIELDS)} nor failing verdict")
            items.append({"file_name": name, "sha256": sha256_bytes(data), "size": len(data), "entry": fields})
        for name, data, reason in rejected:
            self._check_name(name, data, used, image=False)
            if not isinstance(reason, dict) or {"file_name", "batch", "run"} & set(reason):
                raise InputError(f"{name}: reason must be a dict without 'file_name', 'batch' or 'run'")
        batch = state.batches
        record = {"batch": batch, "start": state.next_index, "next_index": next_index,
                  "accepted": items, "rejected": [name for name, _, _ in rejected]}
        line = _json_line(record, "accepted image fields")
        try:
            self._quarantine(batch, rejected)
            staging = self._guard / "staging" / str(batch)
            self._stage(staging, accepted)
            journal = self._guard / "journal.jsonl"
            first = not journal.exists()
            _write_durable(journal, line.encode("ascii"), append=True)  # the commit point
            if first:
                _fsync_dir(self._guard)
            self._records.append(record)
            self._names.update(item["file_name"] for item in items)
            self._rejected.update(record["rejected"])
            self._install(staging, accepted)
        except BaseException:
            self.close()  # state on disk is recoverable; opening a new writer recovers it
            raise
        return self.state

    def _quarantine(self, batch: int, rejected: list[Rejected]) -> None:
        if not rejected:
            return
        make_private_dir(self.quarantine_dir)  # rejected images may copy a training patient: owner-only
        run = self.config_sha256[:16]
        lines = "".join(_json_line({**reason, "file_name": name, "batch": batch, "run": run}, "reason")
                        for name, _, reason in rejected)
        # The reason lines are durable before any image, so recovery can find the images of a cut-short batch.
        _write_durable(self.quarantine_dir / REASONS_NAME, lines.encode("ascii"), append=True, private=True)
        for name, data, _ in rejected:
            _write_durable(safe_join(self.quarantine_dir, name), data, private=True)

    def _stage(self, staging: Path, accepted: list[Accepted]) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, data, _ in accepted:
            _write_durable(staging / name, data)
        for folder in {(staging / name).parent for name, _, _ in accepted} | {staging, staging.parent}:
            _fsync_dir(folder)

    def _install(self, staging: Path, accepted: list[Accepted]) -> None:
        folders = set()
        for name, _, _ in accepted:
            dest = safe_join(self.release_dir, name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, dest)
            folders.add(dest.parent)
        for folder in folders:
            _fsync_dir(folder)
        shutil.rmtree(staging, ignore_errors=True)

    def finalize(self, fingerprints: dict[str, Any], *, progress: Progress | None = None) -> Path:
        """Write ``metadata.jsonl``, ``manifest.json`` and ``croissant.json``, remove ``.guard/``; returns the path.

        Manifest entries carry each image's fields plus ``verdict: "pass"``. Idempotent: a finalized release
        returns its manifest unchanged. Raises :class:`InputError` when nothing was accepted or the release
        no longer matches the journal (changed from outside during the run).
        """
        path = self.release_dir / MANIFEST_NAME
        if self._final is not None:
            return path
        if self._lock_fd is None:
            raise InputError("this release writer is closed")
        if not self._names:
            raise InputError("no image was accepted; there is nothing to release")
        items = [a for r in self._records for a in r["accepted"]]
        entries = {a["file_name"]: {**a["entry"], "verdict": "pass"} for a in items}
        state = self.state
        run = {"config_sha256": self.config_sha256, "accepted": state.accepted, "quarantined": state.quarantined,
               "next_index": state.next_index, "batches": state.batches}
        manifest = build_manifest(self.release_dir, entries=entries, fingerprints=fingerprints, run=run,
                                  progress=progress or self._progress)
        on_disk = {(f["file_name"], f["sha256"]) for f in manifest["files"]}
        differ = sorted({n for n, _ in on_disk ^ {(a["file_name"], a["sha256"]) for a in items}})
        if differ:
            raise InputError(f"the release changed outside the writer ({len(differ)} file(s), e.g. {differ[0]!r}); "
                             "remove it and run again")
        save_manifest(self.release_dir, manifest)
        write_croissant(self.release_dir, manifest=manifest)  # after sealing: a resume completes it
        _fsync_dir(self.release_dir)
        shutil.rmtree(self._guard, ignore_errors=True)
        self.close()
        self._final = WriterState(state.accepted, state.quarantined, state.next_index, state.batches, finalized=True)
        return path

    def close(self) -> None:
        """Release the lock; the state on disk stays resumable."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "ReleaseWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
