"""Manifest build / write / verify on real files, and ``guard manifest`` / ``guard verify`` end to end."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synfundus_guard.cli.main import app
from synfundus_guard.data.images import encode_png
from synfundus_guard.errors import ImageError, InputError, ManifestError
from synfundus_guard.release.manifest import (
    ALLOWED_EXTRA,
    KEY_ENV,
    MANIFEST_NAME,
    METADATA_NAME,
    SCHEMA,
    build_manifest,
    read_metadata,
    save_manifest,
    verify_release,
    write_manifest,
)

ENTRIES = {
    "a.png": {"seed": 1, "labels": {"dr_grade": 2}, "scores": {"nn": 0.41}, "verdict": "pass"},
    "sub/b.png": {"seed": 2, "labels": {"dr_grade": 0}, "scores": {"nn": 0.52}, "verdict": "pass"},
}


def png(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    w, h = size
    return encode_png(np.random.default_rng(seed).random((h, w, 3), dtype=np.float32))


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    root = tmp_path / "release"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png(1))
    (root / "sub" / "b.png").write_bytes(png(2))
    (root / "c.png").write_bytes(png(3, (33, 35)))
    return root


def sealed(release: Path, **kwargs) -> Path:
    write_manifest(release, entries=ENTRIES, fingerprints={"model": "sha256:m", "policy": "public@1"}, **kwargs)
    return release


def load(release: Path) -> dict:
    return json.loads((release / MANIFEST_NAME).read_text())


def edit(release: Path, change) -> None:
    manifest = load(release)
    change(manifest)
    (release / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_manifest_records_every_image(release: Path) -> None:
    manifest = load(sealed(release))
    assert manifest["schema"] == SCHEMA and manifest["tool"]["name"] == "synfundus-guard"
    assert [f["file_name"] for f in manifest["files"]] == ["a.png", "c.png", "sub/b.png"]
    a, c = manifest["files"][0], manifest["files"][1]
    assert a["sha256"] == hashlib.sha256((release / "a.png").read_bytes()).hexdigest()
    assert (a["size"], a["width"], a["height"]) == ((release / "a.png").stat().st_size, 40, 32)
    assert (c["width"], c["height"]) == (33, 35) and "seed" not in c
    assert a["seed"] == 1 and a["labels"] == {"dr_grade": 2} and a["verdict"] == "pass"
    assert manifest["counts"] == {"images": 3, "bytes": sum(f["size"] for f in manifest["files"]),
                                  "verdicts": {"pass": 2}}
    assert manifest["fingerprints"] == {"model": "sha256:m", "policy": "public@1"}
    assert "hmac_sha256" not in manifest


def test_root_sha256_follows_the_documented_recipe(release: Path) -> None:
    manifest = load(sealed(release))
    triples = sorted([f["file_name"], f["sha256"], f["size"]] for f in manifest["files"])
    recipe = json.dumps(triples, separators=(",", ":"), ensure_ascii=True).encode()
    assert manifest["root_sha256"] == hashlib.sha256(recipe).hexdigest()
    assert manifest["metadata"]["sha256"] == hashlib.sha256((release / METADATA_NAME).read_bytes()).hexdigest()


def test_metadata_is_an_imagefolder_jsonl(release: Path) -> None:
    sealed(release)
    rows = [json.loads(line) for line in (release / METADATA_NAME).read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["a.png", "c.png", "sub/b.png"]
    assert all((release / r["file_name"]).is_file() for r in rows)
    assert rows[0] == {"file_name": "a.png", **ENTRIES["a.png"]} and rows[1] == {"file_name": "c.png"}
    assert read_metadata(release) == {"a.png": ENTRIES["a.png"], "c.png": {}, "sub/b.png": ENTRIES["sub/b.png"]}


def test_intact_release_verifies(release: Path) -> None:
    result = verify_release(sealed(release))
    assert result.ok and result == type(result)(True)


def test_tampering_is_reported(release: Path) -> None:
    sealed(release)
    data = bytearray((release / "a.png").read_bytes())
    data[-20] ^= 1
    (release / "a.png").write_bytes(bytes(data))
    (release / "sub" / "b.png").unlink()
    (release / "extra.jpg").write_bytes(png(4))
    (release / ".DS_Store.png").write_bytes(b"hidden")
    result = verify_release(release)
    assert not result.ok
    assert (result.added, result.removed, result.modified) == ((".DS_Store.png", "extra.jpg"), ("sub/b.png",),
                                                                ("a.png",))
    assert result.problems == () and result.notes == ()


def test_edited_manifest_entries_are_problems(release: Path) -> None:
    sealed(release)
    edit(release, lambda m: m["files"][0].update(verdict="fail"))
    assert verify_release(release).problems == (
        "per-image fields in the manifest were edited (they no longer match the metadata hash)",)
    sealed(release)
    edit(release, lambda m: m["files"].pop())
    result = verify_release(release)
    assert result.added == ("sub/b.png",) and any("root_sha256" in p for p in result.problems)
    sealed(release)
    (release / METADATA_NAME).write_text('{"file_name": "a.png"}\n')
    assert verify_release(release).problems == (f"{METADATA_NAME} differs from the manifest's hash",)


def test_private_files_are_refused(release: Path) -> None:
    sealed(release)
    (release / "private").mkdir()
    (release / "private" / "evidence.json").write_text("{}")
    assert verify_release(release).problems == ("private file inside the release: private/evidence.json",)
    with pytest.raises(ManifestError, match="private file"):
        build_manifest(release)


@pytest.mark.parametrize(
    "name", ["../x.png", "/etc/passwd", "sub\\b.png", "sub/../a.png", "./a.png", ".", "", "a//b.png", "~/x.png"]
)
def test_unsafe_entry_paths_are_refused(release: Path, name: str) -> None:
    sealed(release)
    edit(release, lambda m: m["files"][0].update(file_name=name))
    with pytest.raises(ManifestError, match="unsafe path"):
        verify_release(release)


def test_symlink_escaping_the_release(release: Path, tmp_path: Path) -> None:
    outside = tmp_path / "patient.png"
    outside.write_bytes(png(9))
    sealed(release)
    (release / "a.png").unlink()
    (release / "a.png").symlink_to(outside)
    with pytest.raises(ManifestError, match="outside the release"):
        verify_release(release)
    with pytest.raises(ManifestError, match="'a.png' is a symbolic link"):
        build_manifest(release)
    (release / "a.png").unlink()
    (release / "sub").rename(release / "moved")
    (release / "sub").symlink_to(tmp_path)  # a folder link: the listed sub/b.png would resolve outside
    with pytest.raises(ManifestError, match="outside the release"):
        verify_release(release)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"schema": "other/v1", "files": []}', "not a synfundus-guard manifest"),
        (f'{{"schema": "{SCHEMA}", "files": {{}}}}', "no files list"),
        (f'{{"schema": "{SCHEMA}", "files": [{{"file_name": "a.png", "sha256": "x", "size": 1}}]}}', "valid sha256"),
        (f'{{"schema": "{SCHEMA}", "files": [{{"sha256": "x"}}]}}', "no file_name"),
    ],
)
def test_malformed_manifests(release: Path, text: str, message: str) -> None:
    (release / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError, match=message):
        verify_release(release)


def test_missing_manifest_and_bad_input(tmp_path: Path, release: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json"):
        verify_release(release)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        build_manifest(tmp_path / "empty")
    with pytest.raises(InputError, match="not in the release"):
        build_manifest(release, entries={"missing.png": {}})
    with pytest.raises(InputError, match="reserved"):
        build_manifest(release, entries={"a.png": {"sha256": "x"}})
    (release / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png"):
        build_manifest(release)


def test_hmac_signature(release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "hospital-secret")
    manifest = load(sealed(release))
    body = {k: v for k, v in manifest.items() if k != "hmac_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert manifest["hmac_sha256"] == hmac.new(b"hospital-secret", canonical, hashlib.sha256).hexdigest()
    assert verify_release(release).ok
    edit(release, lambda m: m["fingerprints"].update(policy="lenient@1"))  # not covered by any hash but the HMAC
    assert verify_release(release).problems == (
        f"manifest signature does not match (wrong {KEY_ENV} or the manifest was edited)",)
    sealed(release)
    monkeypatch.setenv(KEY_ENV, "other-key")
    assert not verify_release(release).ok
    monkeypatch.delenv(KEY_ENV)
    result = verify_release(release)
    assert result.ok and result.notes == (f"manifest is signed; set {KEY_ENV} to check the signature",)
    sealed(release)
    monkeypatch.setenv(KEY_ENV, "hospital-secret")
    assert verify_release(release).problems == (f"manifest is not signed but {KEY_ENV} is set",)


# -- CLI ----------------------------------------------------------------------------------------------------


def guard(*args: str):
    return CliRunner().invoke(app, list(args))


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None)))
    return lines[0]


def test_cli_manifest_then_verify(release: Path) -> None:
    result = guard("manifest", str(release))
    assert result.exit_code == 0, result.output
    assert (release / MANIFEST_NAME).is_file() and (release / METADATA_NAME).is_file()
    result = guard("verify", str(release))
    assert result.exit_code == 0 and "intact" in result.stdout
    result = guard("manifest", str(release))
    assert result.exit_code == 2 and "--force" in one_error_line(result)


def test_cli_manifest_keeps_existing_metadata_fields(release: Path) -> None:
    (release / METADATA_NAME).write_text('{"file_name": "a.png", "label": "dr"}\n')
    assert guard("manifest", str(release)).exit_code == 0
    assert load(release)["files"][0]["label"] == "dr"
    assert guard("verify", str(release)).exit_code == 0


def test_cli_manifest_refuses_an_empty_folder(tmp_path: Path) -> None:
    result = guard("manifest", str(tmp_path))
    assert result.exit_code == 2 and "no images" in one_error_line(result)
    result = guard("manifest", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "not found" in one_error_line(result)


def test_cli_verify_reports_changes(release: Path) -> None:
    sealed(release)
    data = bytearray((release / "c.png").read_bytes())
    data[100] ^= 0xFF
    (release / "c.png").write_bytes(bytes(data))
    (release / "new[red].png").write_bytes(png(5))
    (release / "a.png").unlink()
    result = guard("verify", str(release))
    assert result.exit_code == 1
    assert "added new[red].png" in " ".join(result.stdout.split())
    assert "removed a.png" in " ".join(result.stdout.split())
    assert "modified c.png" in " ".join(result.stdout.split())
    assert "1 added, 1 removed, 1 modified" in result.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["files"][0].update(file_name="../x.png"), "unsafe path"),
        (lambda m: m["files"][0].update(file_name="/etc/passwd"), "unsafe path"),
        (lambda m: m.update(schema="x"), "not a synfundus-guard manifest"),
    ],
)
def test_cli_verify_unsafe_or_malformed_manifest(release: Path, change, message: str) -> None:
    sealed(release)
    edit(release, change)
    result = guard("verify", str(release))
    assert result.exit_code == 2 and message in one_error_line(result)


def test_cli_verify_symlink_and_bad_json(release: Path, tmp_path: Path) -> None:
    sealed(release)
    (release / "c.png").unlink()
    (release / "c.png").symlink_to(tmp_path / "elsewhere.png")
    (tmp_path / "elsewhere.png").write_bytes(png(3, (33, 35)))
    result = guard("verify", str(release))
    assert result.exit_code == 2 and "outside the release" in one_error_line(result)
    (release / MANIFEST_NAME).write_text('{"schema": ')
    result = guard("verify", str(release))
    assert result.exit_code == 2 and "not valid JSON" in one_error_line(result)
    (release / MANIFEST_NAME).unlink()
    result = guard("verify", str(release))
    assert result.exit_code == 2 and "guard manifest" in one_error_line(result)


@pytest.mark.parametrize("change", [
    lambda m: m.update(counts=[1]), lambda m: m.update(metadata="x"), lambda m: m["files"][0].update(seed=float("nan")),
])
def test_odd_but_parseable_manifests_are_problems_not_crashes(release: Path, monkeypatch: pytest.MonkeyPatch,
                                                              change) -> None:
    monkeypatch.setenv(KEY_ENV, "k")
    sealed(release)
    edit(release, change)
    result = verify_release(release)
    assert not result.ok and result.problems


# -- every unlisted file is reported; links are never followed ------------------------------------------------


def listing(root: Path) -> list[str]:
    """Every entry under ``root`` (files, folders, links), to prove nothing was written or left behind."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["patients.txt", "sub/names.csv", "notes", ".hidden.txt", ".cache/x.png",
                                  "sub/.secret.png", "sub/README.md", ".metadata.jsonl.abc.tmp"])
def test_verify_reports_any_unlisted_file(release: Path, name: str) -> None:
    sealed(release)
    (release / name).parent.mkdir(parents=True, exist_ok=True)
    (release / name).write_text("DOE^JOHN 1234567")
    result = verify_release(release)
    assert not result.ok and result.added == (name,) and result.problems == ()
    cli = guard("verify", str(release))
    assert cli.exit_code == 1 and f"added {name}" in " ".join(cli.stdout.split())
    assert "1 added, 0 removed, 0 modified, 0 problem(s)" in cli.stdout


def test_allowed_extras_are_noted_not_reported(release: Path) -> None:
    for name in ALLOWED_EXTRA:
        (release / name).write_text("dataset card")
    sealed(release)
    assert [f["file_name"] for f in load(release)["files"]] == ["a.png", "c.png", "sub/b.png"]
    result = verify_release(release)
    assert result.ok and result.added == ()
    assert result.notes == tuple(f"{n} is allowed beside the images but not covered by the manifest"
                                 for n in sorted(ALLOWED_EXTRA))
    cli = guard("verify", str(release))
    assert cli.exit_code == 0 and "intact" in cli.stdout and "README.md is allowed" in cli.stdout


def test_symlinked_folder_is_reported_not_followed(release: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "patient.png").write_bytes(png(9))
    sealed(release)
    (release / "extra").symlink_to(outside, target_is_directory=True)
    (release / "dup").symlink_to(release / "sub", target_is_directory=True)
    (release / "copy.png").symlink_to(release / "a.png")
    result = verify_release(release)
    assert not result.ok and result.added == ("copy.png", "dup", "extra")  # nothing behind a link is listed
    assert result.problems == tuple(f"symbolic link in the release (not followed): {n}"
                                    for n in ("copy.png", "dup", "extra"))
    cli = guard("verify", str(release))
    out = " ".join(cli.stdout.split())
    assert cli.exit_code == 1 and "problem symbolic link in the release (not followed): extra" in out
    assert "patient.png" not in cli.output


def test_listed_file_replaced_by_an_inner_link_is_modified(release: Path) -> None:
    sealed(release)
    (release / "kept").mkdir()
    (release / "a.png").rename(release / "kept" / "a.png")
    (release / "a.png").symlink_to(release / "kept" / "a.png")  # same bytes, but now a link
    (release / "sub").rename(release / "sub-real")
    (release / "sub").symlink_to(release / "sub-real", target_is_directory=True)
    result = verify_release(release)
    assert result.modified == ("a.png", "sub/b.png") and result.removed == ()
    assert result.added == ("kept/a.png", "sub", "sub-real/b.png")
    assert "symbolic link in the release (not followed): a.png" in result.problems
    assert "symbolic link in the release (not followed): sub" in result.problems


def test_metadata_link_is_a_problem_not_read(release: Path, tmp_path: Path) -> None:
    sealed(release)
    (release / METADATA_NAME).rename(tmp_path / "elsewhere.jsonl")
    (release / METADATA_NAME).symlink_to(tmp_path / "elsewhere.jsonl")
    result = verify_release(release)
    assert not result.ok and f"{METADATA_NAME} is a symbolic link (not followed)" in result.problems


def test_fifo_is_reported_without_being_opened(release: Path) -> None:
    import os
    import subprocess
    import sys

    sealed(release)
    os.mkfifo(release / "pipe.png")  # opening it for reading would block forever
    args = [sys.executable, "-m", "synfundus_guard.cli.main", "verify", str(release)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "added pipe.png" in " ".join(done.stdout.split())
    assert "not a regular file (FIFO, socket or device): pipe.png" in " ".join(done.stdout.split())
    with pytest.raises(InputError, match="'pipe.png' is neither an image"):
        build_manifest(release)


def test_build_refuses_links_before_opening_anything(release: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import synfundus_guard.release.manifest as manifest_mod

    def opened(*_args: object) -> None:
        raise AssertionError("a release file was opened before the link was refused")

    monkeypatch.setattr(manifest_mod, "_image_size", opened)
    monkeypatch.setattr(manifest_mod, "sha256_file", opened)
    (tmp_path / "patient.png").write_bytes(png(9))
    (release / "z.png").symlink_to(tmp_path / "patient.png")  # sorts after the regular images
    with pytest.raises(ManifestError, match="'z.png' is a symbolic link"):
        build_manifest(release)
    (release / "z.png").unlink()
    (release / "zz").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ManifestError, match="'zz' is a symbolic link"):
        build_manifest(release)


@pytest.mark.parametrize("target", ["inside", "outside", "folder"])
def test_cli_manifest_refuses_links_and_writes_nothing(release: Path, tmp_path: Path, target: str) -> None:
    (tmp_path / "patient.png").write_bytes(png(9))
    link = release / "sub" / "link.png"
    if target == "folder":
        link.symlink_to(tmp_path, target_is_directory=True)
    else:
        link.symlink_to(release / "a.png" if target == "inside" else tmp_path / "patient.png")
    before = listing(release)
    result = guard("manifest", str(release))
    assert result.exit_code == 2 and "'sub/link.png' is a symbolic link" in one_error_line(result)
    assert listing(release) == before


@pytest.mark.parametrize("name", ["patients.csv", "sub/notes.txt", ".DS_Store", ".cache/x.png"])
def test_cli_manifest_refuses_stray_and_hidden_files(release: Path, name: str) -> None:
    (release / name).parent.mkdir(parents=True, exist_ok=True)
    (release / name).write_text("DOE^JOHN")
    before = listing(release)
    result = guard("manifest", str(release))
    assert result.exit_code == 2 and repr(name) in one_error_line(result)
    assert listing(release) == before


def test_build_skips_hidden_state_of_the_writer(release: Path) -> None:
    (release / ".guard" / "staging").mkdir(parents=True)
    (release / ".guard" / "staging" / "x.png").write_bytes(png(7))
    manifest = build_manifest(release)
    assert [f["file_name"] for f in manifest["files"]] == ["a.png", "c.png", "sub/b.png"]
    with pytest.raises(InputError, match="hidden file '.guard/staging/x.png'"):
        write_manifest(release)


def test_non_utf8_file_names(release: Path) -> None:
    import os

    sealed(release)
    fd = os.open(os.fsencode(release) + b"/\xff.txt", os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    cli = guard("verify", str(release))
    assert cli.exit_code == 1 and "added \\udcff.txt" in " ".join(cli.stdout.split())
    os.rename(os.fsencode(release) + b"/\xff.txt", os.fsencode(release) + b"/\xff.png")
    (release / MANIFEST_NAME).unlink()
    result = guard("manifest", str(release))
    assert result.exit_code == 2 and "not valid UTF-8" in one_error_line(result)


# -- the manifest pair is written all-or-nothing --------------------------------------------------------------


def test_failed_manifest_rename_restores_previous_metadata(release: Path) -> None:
    sealed(release)
    old_metadata = (release / METADATA_NAME).read_bytes()
    (release / MANIFEST_NAME).unlink()
    (release / MANIFEST_NAME).mkdir()  # the final rename cannot replace a folder
    before = listing(release)
    manifest = build_manifest(release, entries={"a.png": {"verdict": "fail"}})
    with pytest.raises(ManifestError, match="cannot write manifest.json and metadata.jsonl .*Is a directory"):
        save_manifest(release, manifest)
    assert (release / METADATA_NAME).read_bytes() == old_metadata
    assert listing(release) == before  # no staged or backup file left behind


def test_failed_manifest_rename_removes_new_metadata(release: Path) -> None:
    (release / MANIFEST_NAME).mkdir()
    before = listing(release)
    result = guard("manifest", "--force", str(release))
    errors = [line for line in result.stderr.splitlines() if not line.startswith("Hashing release images")]
    assert result.exit_code == 2 and len(errors) == 1  # the progress bar stays above it
    assert errors[0] == f"error: cannot write {MANIFEST_NAME} and {METADATA_NAME} in {release}: Is a directory; " \
                        "the previous files were kept"
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert listing(release) == before and not (release / METADATA_NAME).exists()


def test_failure_on_the_manifest_step_only(release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    sealed(release)
    old = {n: (release / n).read_bytes() for n in (MANIFEST_NAME, METADATA_NAME)}
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)).name == MANIFEST_NAME:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ManifestError, match="No space left on device; the previous files were kept"):
        write_manifest(release, entries={"a.png": {"verdict": "fail"}})
    monkeypatch.setattr(os, "replace", real_replace)
    assert {n: (release / n).read_bytes() for n in old} == old
    assert sorted(p.name for p in release.iterdir()) == ["a.png", "c.png", MANIFEST_NAME, METADATA_NAME, "sub"]
    assert verify_release(release).ok


# -- hostile JSON is one line, exit 2 -------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["[" * 100_000, '{"schema": ' + "[" * 5_000 + "]" * 5_000 + "}",
                                  f'{{"schema": "{SCHEMA}", "files": [{{"x": ' + "{\"a\": " * 3_000 + "1"
                                  + "}" * 3_000 + "}]}"])
def test_deeply_nested_manifest_is_a_manifest_error(release: Path, text: str) -> None:
    (release / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError, match="nested"):
        verify_release(release)
    result = guard("verify", str(release))
    assert result.exit_code == 2 and "nested" in one_error_line(result)


def test_huge_manifest_and_metadata_are_refused_unread(release: Path) -> None:
    from synfundus_guard.safeload import MAX_JSON_BYTES

    with open(release / MANIFEST_NAME, "wb") as fh:
        fh.truncate(MAX_JSON_BYTES + 1)  # sparse: costs no disk
    result = guard("verify", str(release))
    assert result.exit_code == 2 and "file too large" in one_error_line(result)
    with open(release / METADATA_NAME, "wb") as fh:
        fh.truncate(MAX_JSON_BYTES + 1)
    result = guard("manifest", "--force", str(release))
    assert result.exit_code == 2 and "file too large" in one_error_line(result)


def test_hostile_metadata_lines(release: Path) -> None:
    (release / METADATA_NAME).write_text('{"file_name": "a.png", "x": ' + "[" * 50_000 + "]" * 50_000 + "}\n")
    with pytest.raises(ManifestError, match="line 1: JSON nested deeper"):
        read_metadata(release)
    result = guard("manifest", str(release))
    assert result.exit_code == 2 and "nested" in one_error_line(result)
    assert not (release / MANIFEST_NAME).exists()
    (release / METADATA_NAME).write_text('{"file_name": "a.png"}\n{oops\n')
    result = guard("manifest", str(release))
    assert result.exit_code == 2 and "line 2: not valid JSON" in one_error_line(result)


def test_linked_manifest_files_are_refused(release: Path, tmp_path: Path) -> None:
    sealed(release)
    (release / MANIFEST_NAME).rename(tmp_path / "m.json")
    (release / MANIFEST_NAME).symlink_to(tmp_path / "m.json")
    result = guard("verify", str(release))
    assert result.exit_code == 2 and "manifest.json is a symbolic link" in one_error_line(result)
    (release / MANIFEST_NAME).unlink()
    (release / METADATA_NAME).rename(tmp_path / "meta.jsonl")
    (release / METADATA_NAME).symlink_to(tmp_path / "meta.jsonl")
    result = guard("manifest", str(release))
    assert result.exit_code == 2 and "metadata.jsonl is a symbolic link" in one_error_line(result)
    assert not (release / MANIFEST_NAME).exists()


def test_symlink_loop_in_a_listed_path(release: Path) -> None:
    sealed(release)
    (release / "sub" / "b.png").unlink()
    (release / "sub").rmdir()
    (release / "sub").symlink_to(release / "sub")
    result = guard("verify", str(release))
    assert result.exit_code == 2 and "symbolic link loop" in one_error_line(result)


def test_undecodable_signing_key(release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "k\udcff")  # bytes that are not UTF-8, as a shell may pass them
    sealed(release)
    assert len(load(release)["hmac_sha256"]) == 64 and verify_release(release).ok
    monkeypatch.setenv(KEY_ENV, "k")
    assert not verify_release(release).ok
