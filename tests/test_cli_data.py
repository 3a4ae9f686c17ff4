"""``guard data phantom`` / ``guard data split`` and the patient-disjoint split they stand on."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synfundus_guard.cli.main import app
from synfundus_guard.data.folder import ImageRecord, scan_folder
from synfundus_guard.data.split import split_by_patient, write_split
from synfundus_guard.errors import InputError
from synfundus_guard.progress import Progress, ProgressTask

runner = CliRunner()


def _guard(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _assert_usage_error(result, match: str) -> None:
    """Exit 2, exactly one ``error:`` line on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and match in errors[0], result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def _rows(labels: Path) -> list[dict[str, str]]:
    with open(labels, newline="") as fh:
        return list(csv.DictReader(fh))


# --- split_by_patient ----------------------------------------------------------------------------------------


def _records(patients: dict[str, int]) -> list[ImageRecord]:
    return [ImageRecord(f"{p}_{i}.png", Path(f"/x/{p}_{i}.png"), f"{p}-{i}", p)
            for p, n in patients.items() for i in range(n)]


def test_split_keeps_every_patient_on_one_side():
    records = _records({f"P{i:03d}": 1 + i % 4 for i in range(40)})
    train, holdout = split_by_patient(records, holdout_fraction=0.25, seed=3)
    train_ids, holdout_ids = {r.patient_id for r in train}, {r.patient_id for r in holdout}
    assert not train_ids & holdout_ids and len(holdout_ids) == 10 and len(train_ids) == 30
    assert sorted(train + holdout, key=lambda r: r.file_name) == sorted(records, key=lambda r: r.file_name)
    assert train == [r for r in records if r.patient_id in train_ids]  # record order kept


def test_split_is_deterministic_and_independent_of_record_order():
    records = _records({f"P{i}": 2 for i in range(30)})
    a = split_by_patient(records, holdout_fraction=0.3, seed=1)
    b = split_by_patient(list(reversed(records)), holdout_fraction=0.3, seed=1)
    assert {r.patient_id for r in a[1]} == {r.patient_id for r in b[1]}
    c = split_by_patient(records, holdout_fraction=0.3, seed=2)
    assert {r.patient_id for r in a[1]} != {r.patient_id for r in c[1]}


def test_split_leaves_at_least_one_patient_per_side():
    records = _records({"A": 3, "B": 1})
    for fraction in (0.01, 0.99):
        train, holdout = split_by_patient(records, holdout_fraction=fraction, seed=0)
        assert len({r.patient_id for r in train}) == len({r.patient_id for r in holdout}) == 1


@pytest.mark.parametrize("patients,fraction,match", [
    ({"A": 5}, 0.5, "at least 2 patients"),
    ({}, 0.5, "at least 2 patients"),
    ({"A": 1, "B": 1}, 0.0, "between 0 and 1"),
    ({"A": 1, "B": 1}, 1.0, "between 0 and 1"),
    ({"A": 1, "B": 1}, float("nan"), "between 0 and 1"),
])
def test_split_refuses_bad_input(patients, fraction, match):
    with pytest.raises(InputError, match=match):
        split_by_patient(_records(patients), holdout_fraction=fraction, seed=0)


# --- write_split --------------------------------------------------------------------------------------------


class _Log(Progress):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def log(self, message: str) -> None:
        self.messages.append(message)


def test_write_split_links_images_and_filters_labels(phantom_dir, tmp_path):
    log = _Log()
    res = write_split(phantom_dir, tmp_path / "split", holdout_fraction=0.34, seed=0, progress=log)
    assert log.messages == []
    assert (res.train_patients, res.holdout_patients) == (4, 2) and res.train_images + res.holdout_images == 12
    assert res.hardlinked == 12 and res.copied == 0 and res.labels_written
    sides = {side: scan_folder(res.out / side) for side in ("train", "holdout")}
    assert not {r.patient_id for r in sides["train"]} & {r.patient_id for r in sides["holdout"]}
    source_rows = {r["file_name"]: r for r in _rows(phantom_dir / "labels.csv")}
    for side, records in sides.items():
        rows = _rows(res.out / side / "labels.csv")
        assert [r["file_name"] for r in rows] == [r.file_name for r in records]
        assert all(row == source_rows[row["file_name"]] for row in rows)
        for r in records:
            assert os.path.samefile(r.path, phantom_dir / r.file_name)  # a hard link, not a copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]  # no staging folder left behind


def test_write_split_without_labels_warns_and_copies_subfolders(phantom_dir, tmp_path):
    src = tmp_path / "src"
    for name in ("p00000_v0.png", "p00001_v0.png", "p00002_v1.png"):
        (src / "nested").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(phantom_dir / name, src / "nested" / name)
    log = _Log()
    res = write_split(src, tmp_path / "out", holdout_fraction=0.5, seed=0, progress=log)
    assert len(log.messages) == 1 and "its own patient" in log.messages[0]
    assert not res.labels_written and res.train_images + res.holdout_images == 3
    written = sorted(p.relative_to(res.out).as_posix() for p in res.out.rglob("*.png"))
    assert sorted(w.split("/", 1)[1] for w in written) == [f"nested/{n}" for n in sorted(os.listdir(src / "nested"))]
    assert not any(res.out.rglob("labels.csv"))


def test_write_split_refuses_unsafe_outputs(phantom_dir, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        write_split(phantom_dir, busy, holdout_fraction=0.5, seed=0)
    assert (busy / "x").read_text() == "keep me"
    with pytest.raises(InputError, match="inside the source"):
        write_split(phantom_dir, phantom_dir / "split", holdout_fraction=0.5, seed=0)
    assert not (phantom_dir / "split").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = write_split(phantom_dir, empty, holdout_fraction=0.5, seed=0)  # an existing empty folder is fine
    assert sorted(p.name for p in empty.iterdir()) == ["holdout", "train"] and res.out == empty


# --- CLI ----------------------------------------------------------------------------------------------------


def test_cli_data_help_lists_commands():
    result = _guard("data", "--help")
    assert result.exit_code == 0 and "phantom" in result.stdout and "split" in result.stdout


def test_cli_phantom_then_split(tmp_path):
    result = _guard("data", "phantom", tmp_path / "ph", "--patients", 5, "--visits", 2, "--size", 64, "--seed", 3)
    assert result.exit_code == 0, result.output
    assert "wrote 10 images (5 patients x 2 visits, 64 px)" in result.stdout
    assert len(list((tmp_path / "ph").glob("p*_v*.png"))) == 10 and (tmp_path / "ph" / "labels.csv").is_file()

    result = _guard("data", "split", tmp_path / "ph", tmp_path / "sp", "--holdout-fraction", 0.4, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert "train: 6 images of 3 patients" in result.stdout and "holdout: 4 images of 2 patients" in result.stdout
    train = {r.patient_id for r in scan_folder(tmp_path / "sp" / "train")}
    holdout = {r.patient_id for r in scan_folder(tmp_path / "sp" / "holdout")}
    assert len(train) == 3 and len(holdout) == 2 and not train & holdout


@pytest.mark.parametrize("args,match", [
    (["--patients", "0"], "--patients must be between 1 and 1000000 (got 0)"),
    (["--patients", "1000001"], "--patients must be between 1 and 1000000 (got 1000001)"),
    (["--patients", "1e20"], "--patients must be between 1 and 1000000 (got 1e20)"),
    (["--patients", "100000000000000000000"], "--patients must be between 1 and 1000000"),
    (["--patients", "9" * 5000], "--patients must be a whole number between 1 and 1000000"),
    (["--patients", "abc"], "--patients must be a whole number between 1 and 1000000 (got 'abc')"),
    (["--patients", "nan"], "--patients must be a whole number"),
    (["--visits", "0"], "--visits must be between 1 and 100 (got 0)"),
    (["--visits", "101"], "--visits must be between 1 and 100 (got 101)"),
    (["--visits", "2.5"], "--visits must be a whole number between 1 and 100 (got '2.5')"),
    (["--size", "32"], "--size must be between 64 and 2048"),
    (["--size", "4096"], "--size must be between 64 and 2048"),
    (["--size", "inf"], "--size must be a whole number between 64 and 2048"),
    (["--seed", "-1"], "--seed must be between 0 and 9223372036854775807 (got -1)"),
    (["--seed", "1e400"], "--seed must be a whole number"),
])
def test_cli_phantom_rejects_out_of_range_options(tmp_path, args, match):
    _assert_usage_error(_guard("data", "phantom", tmp_path / "ph", *args), match)
    assert not (tmp_path / "ph").exists()


def test_cli_phantom_refuses_non_empty_output(tmp_path):
    (tmp_path / "old.png").write_bytes(b"x")
    _assert_usage_error(_guard("data", "phantom", tmp_path, "--patients", 1, "--visits", 1, "--size", 64),
                        "output folder is not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"]


def test_cli_phantom_accepts_a_whole_number_in_float_notation(tmp_path):
    result = _guard("data", "phantom", tmp_path / "ph", "--patients", "2e0", "--visits", "1.0", "--size", 64,
                    "--seed", 7)
    assert result.exit_code == 0, result.output
    assert "wrote 2 images (2 patients x 1 visits, 64 px)" in result.stdout
    assert [r.patient_id for r in scan_folder(tmp_path / "ph")] == ["S7-P00000", "S7-P00001"]


def test_cli_phantom_interrupt_leaves_no_output(tmp_path, monkeypatch):
    """Ctrl-C (and SIGTERM, which the CLI turns into KeyboardInterrupt) mid-run: exit 130, no folder at all."""
    from synfundus_guard.data import phantom as phantom_module

    real, calls = phantom_module.render_visit, []

    def render(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom_module, "render_visit", render)
    result = _guard("data", "phantom", tmp_path / "ph", "--patients", 3, "--visits", 1, "--size", 64)
    assert result.exit_code == 130 and "interrupted" in result.stderr and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # neither ph/ nor its .ph.partial-* staging sibling


@pytest.mark.parametrize("signum,exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_cli_phantom_signal_in_a_real_process_leaves_no_output(tmp_path, signum, exit_code):
    """The same in a real ``guard`` process, stopped by a signal while images are being written."""
    out = tmp_path / "ph"
    code = "import sys; from synfundus_guard.cli.main import main; sys.argv[0] = 'guard'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "data", "phantom", str(out), "--patients", "100000",
                             "--visits", "1", "--size", "64"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".png") for d in tmp_path.glob(".ph.partial-*") for p in d.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == exit_code, stderr
    assert b"Traceback" not in stderr and list(tmp_path.iterdir()) == []


def test_cli_phantom_refuses_a_file_and_keeps_it(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"precious")
    _assert_usage_error(_guard("data", "phantom", target, "--patients", 1, "--visits", 1, "--size", 64),
                        "output path is not a folder")
    assert target.read_bytes() == b"precious" and [p.name for p in tmp_path.iterdir()] == ["data.bin"]


class _InterruptAt(Progress):
    """Raises KeyboardInterrupt when the ``n``-th item of any task is reported done."""

    def __init__(self, n: int) -> None:
        self.n, self.done = n, 0

    def task(self, description: str, total: int | None = None) -> ProgressTask:
        outer = self

        class _Task(ProgressTask):
            def advance(self, k: int = 1) -> None:
                outer.done += k
                if outer.done >= outer.n:
                    raise KeyboardInterrupt

        return _Task()


def test_write_split_interrupted_leaves_nothing_or_the_empty_folder(phantom_dir, tmp_path):
    source = sorted(os.listdir(phantom_dir))
    with pytest.raises(KeyboardInterrupt):
        write_split(phantom_dir, tmp_path / "new" / "split", holdout_fraction=0.5, seed=0, progress=_InterruptAt(5))
    assert list(tmp_path.iterdir()) == []  # no split, no staging sibling, no parent made for it
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyboardInterrupt):
        write_split(phantom_dir, empty, holdout_fraction=0.5, seed=0, progress=_InterruptAt(5))
    assert [p.name for p in tmp_path.iterdir()] == ["empty"] and list(empty.iterdir()) == []
    assert sorted(os.listdir(phantom_dir)) == source  # the source is untouched


def test_cli_split_refuses_a_file_or_symlink_output_and_keeps_it(phantom_dir, tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    _assert_usage_error(_guard("data", "split", phantom_dir, target), "output path is not a folder")
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)
    _assert_usage_error(_guard("data", "split", phantom_dir, tmp_path / "link"), "output path is not a folder")
    assert target.read_text() == "keep me" and list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "link", "out.txt"]


@pytest.mark.parametrize("args,match", [
    (["--holdout-fraction", "abc"], "--holdout-fraction must be between 0 and 1, exclusive (got abc)"),
    (["--holdout-fraction", "nan"], "--holdout-fraction must be between 0 and 1, exclusive (got nan)"),
    (["--holdout-fraction", "1e400"], "--holdout-fraction must be between 0 and 1, exclusive"),
    (["--seed", "1e20"], "--seed must be between 0 and 9223372036854775807 (got 1e20)"),
    (["--seed", "x"], "--seed must be a whole number"),
])
def test_cli_split_bad_numbers_are_one_line(phantom_dir, tmp_path, args, match):
    _assert_usage_error(_guard("data", "split", phantom_dir, tmp_path / "out", *args), match)
    assert list(tmp_path.iterdir()) == []


def test_cli_split_errors(phantom_dir, tmp_path):
    _assert_usage_error(_guard("data", "split", phantom_dir, tmp_path / "a", "--holdout-fraction", 0),
                        "--holdout-fraction must be between 0 and 1")
    _assert_usage_error(_guard("data", "split", phantom_dir, tmp_path / "b", "--holdout-fraction", 1.5),
                        "--holdout-fraction must be between 0 and 1")
    _assert_usage_error(_guard("data", "split", tmp_path / "missing", tmp_path / "c"), "folder not found")
    _assert_usage_error(_guard("data", "split", phantom_dir, phantom_dir), "not empty")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copyfile(phantom_dir / "p00000_v0.png", one / "a.png")
    (one / "labels.csv").write_text("file_name,patient_id\na.png,P1\n")
    _assert_usage_error(_guard("data", "split", one, tmp_path / "d"), "at least 2 patients")
    assert not any(p.name in "abcd" for p in tmp_path.iterdir())
