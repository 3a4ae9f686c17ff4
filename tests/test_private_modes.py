"""Private artefacts are owner-only (folders 0700, files 0600); public ones keep the usual modes.

Every artefact is made through the real library call that makes it in a run. The tests run under umask 000,
so anything the code does not restrict on purpose would come out world-readable (0666 / 0777) and fail.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from synfundus_guard.data.images import encode_png
from synfundus_guard.embed.cache import ArrayCache
from synfundus_guard.fsutil import make_private_dir
from synfundus_guard.generation.card import CARD_FILE, DataSplit, TrainingCard, read_card, write_card
from synfundus_guard.release.manifest import MANIFEST_NAME, METADATA_NAME
from synfundus_guard.results import PRIVATE_DIR, Report
from synfundus_guard.release.report import write_report
from synfundus_guard.release.writer import REASONS_NAME, ReleaseWriter

CONFIG = {"model": "tiny", "seed": 1, "n": 2}
PNG = encode_png(np.full((16, 16, 3), 0.5, dtype=np.float32))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def public(path: Path) -> bool:
    """Readable by group and others: what a file meant to be shared keeps under the usual umask."""
    return mode(path) & 0o044 == 0o044


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- make_private_dir ---------------------------------------------------------------------------------------


def test_make_private_dir_creates_the_folder_and_missing_parents_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c"
    assert make_private_dir(path) == path
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", path)] == [0o700, 0o700, 0o700]
    assert make_private_dir(path) == path and mode(path) == 0o700  # idempotent


def test_make_private_dir_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    os.umask(0o277)  # mkdir alone would give 0500: the folder could not even be written
    make_private_dir(tmp_path / "p")
    assert mode(tmp_path / "p") == 0o700


def test_make_private_dir_leaves_existing_folders_alone(tmp_path: Path) -> None:
    """A folder the tool did not make (a shared --cache-dir, the user's home) keeps its mode."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    make_private_dir(shared / "mine")
    assert mode(shared) == 0o755 and mode(shared / "mine") == 0o700
    make_private_dir(shared)
    assert mode(shared) == 0o755


def test_make_private_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("keep")
    with pytest.raises(FileExistsError):
        make_private_dir(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "keep"


# --- release writer: the quarantine -------------------------------------------------------------------------


def _commit_one_each(release: Path, quarantine: Path) -> None:
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        writer.commit_batch([("ok.png", PNG, {"seed": 1})], [("sub/bad.png", PNG, {"reasons": ["copy"]})],
                            next_index=2)
        writer.finalize({"model": "sha256:tiny"})


def test_quarantine_is_private_and_the_release_public(tmp_path: Path) -> None:
    release, quarantine = tmp_path / "release", tmp_path / "new" / "quarantine"
    _commit_one_each(release, quarantine)
    assert mode(tmp_path / "new") == 0o700 and mode(quarantine) == 0o700  # both made by the writer
    assert mode(quarantine / "sub") == 0o700
    assert mode(quarantine / REASONS_NAME) == 0o600 and mode(quarantine / "sub" / "bad.png") == 0o600
    for name in ("ok.png", MANIFEST_NAME, METADATA_NAME):
        assert public(release / name), name
    assert public(release)


def test_an_older_looser_reasons_file_is_tightened_on_append(tmp_path: Path) -> None:
    quarantine = tmp_path / "quarantine"
    quarantine.mkdir(mode=0o755)  # a shared quarantine made by an earlier version
    (quarantine / REASONS_NAME).write_text("")
    os.chmod(quarantine / REASONS_NAME, 0o644)
    _commit_one_each(tmp_path / "release", quarantine)
    assert mode(quarantine / REASONS_NAME) == 0o600 and mode(quarantine / "sub" / "bad.png") == 0o600
    assert mode(quarantine) == 0o755  # not made by the writer: its mode is the user's business


def test_reasons_rewritten_by_recovery_stay_private(tmp_path: Path) -> None:
    release, quarantine = tmp_path / "release", tmp_path / "quarantine"
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        writer.commit_batch([], [("bad.png", PNG, {"reasons": ["copy"]})], next_index=1)
    with open(quarantine / REASONS_NAME, "ab") as fh:
        fh.write(b'{"torn')  # a crash in the middle of the next batch's reason line
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        assert writer.state.quarantined == 1
    assert (quarantine / REASONS_NAME).read_bytes().endswith(b"}\n")  # rewritten without the torn line
    assert mode(quarantine / REASONS_NAME) == 0o600


# --- feature cache ------------------------------------------------------------------------------------------


def test_feature_cache_folder_database_and_journals_are_private(tmp_path: Path) -> None:
    db = tmp_path / "cache" / "features.sqlite"
    cache = ArrayCache(db)
    try:
        cache._db.execute("PRAGMA journal_mode=WAL")  # keeps -wal and -shm files on disk while open
        cache.put_many("fp", {"a" * 64: np.arange(4.0)})
        files = sorted(p.name for p in db.parent.iterdir())
        assert files == ["features.sqlite", "features.sqlite-shm", "features.sqlite-wal"]
        assert {p.name: mode(p) for p in db.parent.iterdir()} == dict.fromkeys(files, 0o600)
        assert mode(db.parent) == 0o700
    finally:
        cache.close()
    reopened = ArrayCache(db)
    try:
        assert reopened.get_many("fp", ["a" * 64])["a" * 64].tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        reopened.close()


def test_feature_cache_rollback_journal_is_private(tmp_path: Path) -> None:
    db = tmp_path / "features.sqlite"
    cache = ArrayCache(db)
    try:
        cache._db.execute("BEGIN IMMEDIATE")
        cache._db.execute("INSERT INTO arrays VALUES ('fp', 'x', x'00')")
        journal = tmp_path / "features.sqlite-journal"
        assert journal.exists() and mode(journal) == 0o600
        cache._db.rollback()
    finally:
        cache.close()


def test_an_older_looser_cache_file_is_tightened(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    db = shared / "features.sqlite"
    ArrayCache(db).close()
    os.chmod(db, 0o644)
    ArrayCache(db).close()
    assert mode(db) == 0o600 and mode(shared) == 0o755  # the existing folder is not the cache's to change


# --- report -------------------------------------------------------------------------------------------------


def _report() -> Report:
    return Report(policy={"name": "public"}, embedder={"name": "pixel"}, images=[], verdict="pass")


def test_report_private_folder_is_private_and_the_report_public(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    path = write_report(_report(), out, private={"closest": "train/p00001_v0.png"})
    assert mode(out / PRIVATE_DIR) == 0o700 and mode(out / PRIVATE_DIR / "evidence.json") == 0o600
    assert public(path) and public(out)  # the report folder is meant to be shared, only private/ is not


def test_report_without_evidence_makes_no_private_folder(tmp_path: Path) -> None:
    path = write_report(_report(), tmp_path / "audit")
    assert public(path) and not (tmp_path / "audit" / PRIVATE_DIR).exists()


# --- training card ------------------------------------------------------------------------------------------


def test_training_card_is_private(tmp_path: Path) -> None:
    split = DataSplit(train_dir=str(tmp_path / "train"), fingerprint="0" * 64, train_files=("p00000_v0.png",),
                      holdout_files=("p00001_v0.png",), train_patients=1, holdout_patients=1,
                      holdout_fraction=0.5, split_seed=0)
    card = TrainingCard(resolution=16, steps=1, batch_size=1, lr=1e-3, seed=0, block_out_channels=(8, 16),
                        data=split)
    model = tmp_path / "model"
    model.mkdir()
    path = write_card(model, card)
    assert path == model / CARD_FILE and mode(path) == 0o600
    assert read_card(model) == card  # still readable by its owner, unchanged
