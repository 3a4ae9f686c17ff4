"""ReleaseWriter: batches, resume, recovery rules, and real ``kill -9`` crash safety in a subprocess."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from synfundus_guard.data.images import encode_png
from synfundus_guard.errors import InputError
from synfundus_guard.fsutil import sha256_bytes
from synfundus_guard.release.manifest import MANIFEST_NAME, METADATA_NAME, verify_release
from synfundus_guard.release.writer import REASONS_NAME, STATE_DIR, ReleaseWriter

CONFIG = {"model": "tiny-ddpm", "seed": 1234, "n": 18, "batch": 6, "policy": "public"}
LONG = {**CONFIG, "n": 150}
"""The kill -9 test's run: 25 batches, long enough to be killed at many different moments."""
FINGERPRINTS = {"model": "sha256:tiny", "policy": "public@1"}


def sample(index: int) -> tuple[str, bytes, bool, dict]:
    """Deterministic stand-in for one guarded sample: (file name, PNG, accepted?, fields or reason)."""
    rng = np.random.default_rng(CONFIG["seed"] + index)
    png = encode_png(rng.random((32, 32, 3), dtype=np.float32))
    name = f"sample_{index:05d}.png"
    if index % 5 == 3:
        return name, png, False, {"reasons": ["memorization"], "nn_distance": round(float(rng.random()), 6)}
    fields = {"seed": CONFIG["seed"] + index, "labels": {"dr_grade": index % 5}, "scores": {"nn": 0.5}}
    return name, png, True, fields


def run_sampler(release: Path, quarantine: Path, *, config: dict = CONFIG, announce: bool = False) -> ReleaseWriter:
    """The guarded sampler's loop around the writer: resume at next_index, commit batches, finalize."""
    if announce:
        print("start", flush=True)  # the kill -9 test's cue: recovery, commits and finalize lie ahead
    with ReleaseWriter(release, quarantine, run_config=config) as writer:
        index = writer.state.next_index
        while index < config["n"]:
            stop = min(index + config["batch"], config["n"])
            accepted, rejected = [], []
            for i in range(index, stop):
                name, png, ok, extra = sample(i)
                (accepted if ok else rejected).append((name, png, extra))
            writer.commit_batch(accepted, rejected, next_index=stop)
            index = stop
        writer.finalize(FINGERPRINTS)
    return writer


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def release_images(release: Path) -> set[str]:
    found = set()
    for p in release.rglob("*.png"):
        rel = p.relative_to(release)
        if rel.parts[0] != STATE_DIR:
            found.add(rel.as_posix())
    return found


def committed_on_disk(release: Path) -> set[str]:
    """Names an outside reader can prove are committed: complete journal lines, or a finished manifest."""
    names = set()
    journal = release / STATE_DIR / "journal.jsonl"
    if journal.exists():
        for line in journal.read_bytes().split(b"\n")[:-1]:  # the text after the last newline is torn
            names |= {a["file_name"] for a in json.loads(line)["accepted"]}
    if (release / MANIFEST_NAME).exists():
        names |= {f["file_name"] for f in json.loads((release / MANIFEST_NAME).read_text())["files"]}
    return names


def assert_invariants(release: Path, quarantine: Path) -> None:
    """What must hold at every instant, crashed or not."""
    present = release_images(release)
    assert present <= committed_on_disk(release), f"images without an entry: {present - committed_on_disk(release)}"
    quarantined = snapshot(quarantine) if quarantine.exists() else {}
    quarantined.pop(REASONS_NAME, None)
    assert not present & set(quarantined)
    released_hashes = {sha256_bytes((release / n).read_bytes()) for n in present}
    assert not released_hashes & {sha256_bytes(b) for b in quarantined.values()}
    if (release / MANIFEST_NAME).exists():
        listed = {f["file_name"] for f in json.loads((release / MANIFEST_NAME).read_text())["files"]}
        assert listed <= present
    if (release / METADATA_NAME).exists():
        rows = [json.loads(line) for line in (release / METADATA_NAME).read_text().splitlines()]
        assert {r["file_name"] for r in rows} <= present


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """A folder on tmpfs when there is one: these tests simulate crashes, and fsync to disk only slows them.

    The kill -9 test below keeps a real disk folder (``tmp_path_factory``).
    """
    if not os.access("/dev/shm", os.W_OK):
        return tmp_path
    folder = Path(tempfile.mkdtemp(prefix="guard-writer-", dir="/dev/shm"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _reference(base: Path, config: dict) -> tuple[dict[str, bytes], dict[str, bytes], float]:
    """Release (without manifest: its creation time differs) and quarantine of an uninterrupted run + seconds."""
    start = time.perf_counter()
    run_sampler(base / "release", base / "quarantine", config=config)
    seconds = time.perf_counter() - start
    return _without_manifest(snapshot(base / "release")), snapshot(base / "quarantine"), seconds


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], dict[str, bytes], float]:
    return _reference(tmp_path_factory.mktemp("reference"), CONFIG)


def test_uninterrupted_run_is_a_verified_release(tmp_path: Path, reference: tuple) -> None:
    release, quarantine = tmp_path / "release", tmp_path / "quarantine"
    writer = run_sampler(release, quarantine)
    assert writer.state.finalized and writer.state.accepted == 15 and writer.state.quarantined == 3
    assert verify_release(release).ok
    assert not (release / STATE_DIR).exists()
    manifest = json.loads((release / MANIFEST_NAME).read_text())
    first = manifest["files"][0]
    assert first["verdict"] == "pass" and first["seed"] == 1234 and first["labels"] == {"dr_grade": 0}
    assert manifest["run"]["next_index"] == 18 and manifest["fingerprints"] == FINGERPRINTS
    assert "run_config" not in json.dumps(manifest) and "tiny-ddpm" not in json.dumps(manifest)
    reasons = [json.loads(line) for line in (quarantine / REASONS_NAME).read_text().splitlines()]
    assert [r["file_name"] for r in reasons] == [f"sample_{i:05d}.png" for i in range(3, 18, 5)]
    assert release_images(release).isdisjoint(r["file_name"] for r in reasons)


def test_reopening_a_finished_release(tmp_path: Path) -> None:
    release, quarantine = tmp_path / "release", tmp_path / "quarantine"
    run_sampler(release, quarantine)
    before = snapshot(release)
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        assert writer.state.finalized and writer.state.next_index == 18
        assert writer.finalize(FINGERPRINTS) == release / MANIFEST_NAME
        with pytest.raises(InputError, match="finalized"):
            writer.commit_batch([], [], next_index=121)
    assert snapshot(release) == before
    with pytest.raises(InputError, match="holds a different release"):
        ReleaseWriter(release, quarantine, run_config={**CONFIG, "seed": 1})


def test_refuses_unsafe_folders(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    (release / "holiday.png").write_bytes(b"x")
    with pytest.raises(InputError, match="not empty"):
        ReleaseWriter(release, tmp_path / "q", run_config=CONFIG)
    with pytest.raises(InputError, match="outside the release"):
        ReleaseWriter(tmp_path / "r2", tmp_path / "r2" / "quarantine", run_config=CONFIG)
    with ReleaseWriter(tmp_path / "r3", tmp_path / "q3", run_config=CONFIG):
        with pytest.raises(InputError, match="another process"):
            ReleaseWriter(tmp_path / "r3", tmp_path / "q3", run_config=CONFIG)
    with pytest.raises(InputError, match="holds a different release"):
        ReleaseWriter(tmp_path / "r3", tmp_path / "q3", run_config={**CONFIG, "n": 7})


@pytest.mark.parametrize(
    ("accepted", "rejected", "message"),
    [
        ([("../x.png", b"", {})], [], "unusable file name"),
        ([("/abs.png", b"", {})], [], "unusable file name"),
        ([(".hidden.png", b"", {})], [], "unusable file name"),
        ([("notes.txt", b"", {})], [], "unusable file name"),
        ([("a.png", b"", {}), ("a.png", b"", {})], [], "used twice"),
        ([("a.png", b"", {})], [("a.png", b"", {})], "used twice"),
        ([("metadata.jsonl", b"", {})], [], "unusable file name"),
        ([("a.png", b"", {"sha256": "x"})], [], "fields must be"),
        ([("a.png", b"", {"verdict": "fail"})], [], "fields must be"),
        ([("a.png", b"", {"score": float("nan")})], [], "JSON"),
        ([], [("b.png", b"", {"batch": 3})], "reason must be"),
        ([("a.png", "not bytes", {})], [], "must be bytes"),
    ],
)
def test_commit_batch_validates_before_writing(tmp_path: Path, accepted: list, rejected: list, message: str) -> None:
    with ReleaseWriter(tmp_path / "release", tmp_path / "q", run_config=CONFIG) as writer:
        with pytest.raises(InputError, match=message):
            writer.commit_batch(accepted, rejected, next_index=1)
        assert writer.state.batches == 0
    assert release_images(tmp_path / "release") == set() and not (tmp_path / "q").exists()


def test_finalize_refuses_an_empty_or_changed_release(tmp_path: Path) -> None:
    release, quarantine = tmp_path / "release", tmp_path / "q"
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        writer.commit_batch([], [("r.png", b"png", {"reasons": ["x"]})], next_index=1)
        with pytest.raises(InputError, match="nothing to release"):
            writer.finalize(FINGERPRINTS)
        name, png, _, fields = sample(0)
        writer.commit_batch([(name, png, fields)], [], next_index=2)
        (release / name).write_bytes(png[:-1] + b"\0")
        with pytest.raises(InputError, match="changed outside the writer"):
            writer.finalize(FINGERPRINTS)
    assert not (release / MANIFEST_NAME).exists()


def test_resume_continues_where_it_stopped(tmp_path: Path, reference: tuple) -> None:
    release, quarantine = tmp_path / "release", tmp_path / "quarantine"
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        for start in (0, 6):
            batch = [sample(i) for i in range(start, start + 6)]
            writer.commit_batch([(n, p, e) for n, p, ok, e in batch if ok],
                                [(n, p, e) for n, p, ok, e in batch if not ok], next_index=start + 6)
    (release / "sample_99999.png").write_bytes(b"stray")  # not journaled: recovery deletes it
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        assert (writer.state.next_index, writer.state.accepted, writer.state.quarantined) == (12, 10, 2)
        assert any("not in the journal" in r for r in writer.state.repairs)
    run_sampler(release, quarantine)
    assert verify_release(release).ok
    assert _without_manifest(snapshot(release)) == reference[0] and snapshot(quarantine) == reference[1]


def test_torn_journal_line_rolls_the_batch_back(tmp_path: Path, reference: tuple) -> None:
    release, quarantine = tmp_path / "release", tmp_path / "quarantine"
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        batch = [sample(i) for i in range(6)]
        writer.commit_batch([(n, p, e) for n, p, ok, e in batch if ok],
                            [(n, p, e) for n, p, ok, e in batch if not ok], next_index=6)
    journal = release / STATE_DIR / "journal.jsonl"
    with open(journal, "ab") as fh:
        fh.write(b'{"batch": 1, "start": 6, "next_ind')
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        assert writer.state.next_index == 6 and writer.state.batches == 1
    assert journal.read_bytes().count(b"\n") == 1 and journal.read_bytes().endswith(b"\n")
    run_sampler(release, quarantine)
    assert _without_manifest(snapshot(release)) == reference[0]


def test_lost_journaled_image_rewinds_to_its_batch(tmp_path: Path, reference: tuple) -> None:
    release, quarantine = tmp_path / "release", tmp_path / "quarantine"
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        for start in (0, 6, 12):
            batch = [sample(i) for i in range(start, start + 6)]
            writer.commit_batch([(n, p, e) for n, p, ok, e in batch if ok],
                                [(n, p, e) for n, p, ok, e in batch if not ok], next_index=start + 6)
    (release / "sample_00007.png").unlink()  # batch 1, gone from the release and from staging
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        assert writer.state.next_index == 6 and writer.state.batches == 1
        assert any("rewound to sample 6" in r for r in writer.state.repairs)
    assert release_images(release) == {f"sample_{i:05d}.png" for i in range(6) if i % 5 != 3}
    assert set(snapshot(quarantine)) == {REASONS_NAME, "sample_00003.png"}
    run_sampler(release, quarantine)
    assert _without_manifest(snapshot(release)) == reference[0] and snapshot(quarantine) == reference[1]


class _Crash(BaseException):
    """Stands for the process dying at one exact system call."""


def crash_on_call(monkeypatch: pytest.MonkeyPatch, crash_at: int) -> dict[str, int]:
    """Make the ``crash_at``-th call to os.fsync or os.replace die; returns the live call count."""
    calls = {"n": 0}

    def dying(real):
        def call(*args):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise _Crash()
            return real(*args)
        return call

    monkeypatch.setattr(os, "fsync", dying(os.fsync))
    monkeypatch.setattr(os, "replace", dying(os.replace))
    return calls


COMMIT_STEPS = 17
"""fsync + rename calls in the first commit of a 5-accepted / 1-rejected batch; one more means no crash."""


@pytest.mark.parametrize("crash_at", range(1, COMMIT_STEPS + 2))
def test_crash_at_every_durable_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int,
                                     reference: tuple) -> None:
    """Die at the n-th fsync or rename of a batch (deterministic companion of the kill -9 test)."""
    release, quarantine = tmp_path / "release", tmp_path / "quarantine"
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        batch = [sample(i) for i in range(6)]
        calls = crash_on_call(monkeypatch, crash_at)
        try:
            writer.commit_batch([(n, p, e) for n, p, ok, e in batch if ok],
                                [(n, p, e) for n, p, ok, e in batch if not ok], next_index=6)
        except _Crash:
            pass
        monkeypatch.undo()
    assert calls["n"] == min(crash_at, COMMIT_STEPS), "commit_batch changed: update COMMIT_STEPS"
    assert_invariants(release, quarantine)
    run_sampler(release, quarantine)
    assert _without_manifest(snapshot(release)) == reference[0] and snapshot(quarantine) == reference[1]


FINALIZE_STEPS = 10
"""fsync + rename calls in finalize (metadata, manifest each with a folder fsync, folder; croissant.json)."""


@pytest.mark.parametrize("crash_at", range(1, FINALIZE_STEPS + 2))
def test_crash_during_finalize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int,
                               reference: tuple) -> None:
    """Die at each fsync/rename of finalize, then lose part of .guard as a cut-short rmtree would."""
    release, quarantine = tmp_path / "release", tmp_path / "quarantine"
    writer = ReleaseWriter(release, quarantine, run_config=CONFIG)
    for start in range(0, CONFIG["n"], 6):
        batch = [sample(i) for i in range(start, start + 6)]
        writer.commit_batch([(n, p, e) for n, p, ok, e in batch if ok],
                            [(n, p, e) for n, p, ok, e in batch if not ok], next_index=start + 6)
    calls = crash_on_call(monkeypatch, crash_at)
    try:
        writer.finalize(FINGERPRINTS)
    except _Crash:
        pass
    monkeypatch.undo()
    writer.close()
    assert calls["n"] == min(crash_at, FINALIZE_STEPS), "finalize changed: update FINALIZE_STEPS"
    assert_invariants(release, quarantine)
    if (release / MANIFEST_NAME).exists():
        (release / STATE_DIR / "journal.jsonl").unlink(missing_ok=True)  # as if rmtree(.guard) had got this far
        with ReleaseWriter(release, quarantine, run_config=CONFIG) as reopened:
            assert reopened.state.finalized and reopened.state.accepted == 15
    else:
        run_sampler(release, quarantine)
    assert verify_release(release).ok and not (release / STATE_DIR).exists()
    assert _without_manifest(snapshot(release)) == reference[0] and snapshot(quarantine) == reference[1]


def test_other_runs_in_a_shared_quarantine_are_left_alone(tmp_path: Path) -> None:
    release, quarantine = tmp_path / "release", tmp_path / "quarantine"
    quarantine.mkdir()
    (quarantine / "other.png").write_bytes(b"theirs")
    (quarantine / REASONS_NAME).write_text(json.dumps({"file_name": "other.png", "batch": 0, "run": "x"}) + "\n")
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        writer.commit_batch([], [("mine.png", b"png", {"reasons": ["x"]})], next_index=1)
    with open(release / STATE_DIR / "journal.jsonl", "r+b") as fh:
        fh.truncate(0)  # as if the batch's journal line had never been written
    with ReleaseWriter(release, quarantine, run_config=CONFIG) as writer:
        assert writer.state.quarantined == 0
    assert set(snapshot(quarantine)) == {"other.png", REASONS_NAME}
    assert "other.png" in (quarantine / REASONS_NAME).read_text()


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from typing import Iterator
from test_writer import run_sampler
from test_writer import LONG
run_sampler(Path(sys.argv[2]), Path(sys.argv[3]), config=LONG, announce=True)
"""


def test_kill_9_at_random_moments_then_resume(tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGKILL a real sampler process at random moments; every crash state is safe and the result identical.

    GUARD_KILL_RUNS and GUARD_KILL_SEED turn it into a longer stress run.
    """
    tmp_path = tmp_path_factory.mktemp("kill")
    files, quarantined, seconds = _reference(tmp_path / "reference", LONG)
    release, quarantine = tmp_path / "release", tmp_path / "quarantine"
    rng = random.Random(int(os.environ.get("GUARD_KILL_SEED", "7")))
    kills = int(os.environ.get("GUARD_KILL_RUNS", "10"))
    longest = 1.6 * seconds / kills  # together the kills interrupt the run about 0.8 of the way through
    progress, killed = [], 0
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(Path(__file__).parent), str(release),
                                  str(quarantine)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        child.stdout.readline()  # imports are done: kill it while it recovers, commits or finalizes
        time.sleep(rng.uniform(0.0, longest))
        child.send_signal(signal.SIGKILL)
        returncode = child.wait()
        assert returncode in (0, -signal.SIGKILL), child.stderr.read().decode()
        killed += returncode == -signal.SIGKILL
        assert_invariants(release, quarantine)
        progress.append(len(release_images(release)))
    assert killed >= kills // 2, "the sampler finished before most kills: raise n in CONFIG"
    writer = run_sampler(release, quarantine, config=LONG)
    assert writer.state.finalized
    assert verify_release(release).ok
    assert _without_manifest(snapshot(release)) == files
    assert snapshot(quarantine) == quarantined
    assert not (release / STATE_DIR).exists()
    print(f"kills={killed}/{kills} images after each kill={progress}")


def _without_manifest(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != MANIFEST_NAME}
