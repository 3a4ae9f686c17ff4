"""``guard data phantom`` / ``guard data split`` and the patient-disjoint split they stand on."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synfundus_guard.cli.main import app
from synfundus_guard.data.folder import ImageRecord, scan_folder
from synfundus_guard.data.split import split_by_patient, write_split
from synfundus_guard.errors import InputError
from synfundus_guard.progress import Progress

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
    (["--patients", "0"], "--patients must be at least 1"),
    (["--visits", "0"], "--visits must be at least 1"),
    (["--size", "32"], "--size must be between 64 and 2048"),
    (["--size", "4096"], "--size must be between 64 and 2048"),
    (["--seed", "-1"], "--seed must be at least 0"),
])
def test_cli_phantom_rejects_out_of_range_options(tmp_path, args, match):
    _assert_usage_error(_guard("data", "phantom", tmp_path / "ph", *args), match)
    assert not (tmp_path / "ph").exists()


def test_cli_phantom_refuses_non_empty_output(tmp_path):
    (tmp_path / "old.png").write_bytes(b"x")
    _assert_usage_error(_guard("data", "phantom", tmp_path, "--patients", 1, "--visits", 1, "--size", 64),
                        "output folder is not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"]


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
