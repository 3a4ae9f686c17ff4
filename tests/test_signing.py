"""Ed25519 manifest signatures with real key files: keygen, signing, and tamper detection through ``guard verify``."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from synfundus_guard.cli.main import run
from synfundus_guard.data.images import encode_png
from synfundus_guard.errors import InputError, ManifestError
from synfundus_guard.release.manifest import KEY_ENV, MANIFEST_NAME, verify_release, write_manifest
from synfundus_guard.release.signing import (SIGNING_KEY_ENV, canonical_bytes, generate_keypair, load_private_key,
                                             load_public_key)
from synfundus_guard.release.writer import ReleaseWriter

ENTRIES = {"a.png": {"seed": 1, "verdict": "pass"}, "sub/b.png": {"seed": 2, "verdict": "pass"}}


def png(seed: int) -> bytes:
    return encode_png(np.random.default_rng(seed).random((24, 20, 3), dtype=np.float32))


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two real key pairs made by ``guard keygen``: ``(keys/release, keys/other)``, read-only for the tests."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("release", "other"):
        assert run(["keygen", "--out", str(folder / name)]) == 0
    return folder / "release", folder / "other"


@pytest.fixture
def release(tmp_path: Path) -> Path:
    root = tmp_path / "release"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png(1))
    (root / "sub" / "b.png").write_bytes(png(2))
    return root


def signed(release: Path, key: Path) -> Path:
    write_manifest(release, entries=ENTRIES, fingerprints={"policy": "public@1"},
                   signing_key=load_private_key(path=key.with_suffix(".key")))
    return release


def verify(release: Path, key: Path) -> int:
    return run(["verify", str(release), "--key", str(key.with_suffix(".pub"))])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
    return lines[0]


def test_keygen_writes_a_private_0600_and_a_public_key(keys: tuple[Path, Path]) -> None:
    prefix, other = keys
    assert stat.S_IMODE(os.stat(prefix.with_suffix(".key")).st_mode) == 0o600
    assert prefix.with_suffix(".pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private = load_private_key(path=prefix.with_suffix(".key"))
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert load_public_key(path=prefix.with_suffix(".pub")).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw
    assert other.with_suffix(".pub").read_bytes() != prefix.with_suffix(".pub").read_bytes()
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["other.key", "other.pub", "release.key", "release.pub"]


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "k.pub").write_text("mine")
    assert run(["keygen", "--out", str(tmp_path / "k")]) == 2
    assert "k.pub exists" in one_error_line(capsys)
    assert not (tmp_path / "k.key").exists() and (tmp_path / "k.pub").read_text() == "mine"
    pair = generate_keypair(prefix=tmp_path / "new" / "k")
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700  # a folder keygen made holds a private key
    before = pair.private_path.read_bytes()
    with pytest.raises(InputError, match="never overwrites"):
        generate_keypair(prefix=tmp_path / "new" / "k")
    assert pair.private_path.read_bytes() == before
    with pytest.raises(InputError, match="is a folder"):
        generate_keypair(prefix=tmp_path / "new")


def test_signed_release_verifies_with_its_public_key(release: Path, keys: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    prefix, other = keys
    manifest = json.loads((signed(release, prefix) / MANIFEST_NAME).read_text())
    block = manifest["signature"]
    assert block["alg"] == "ed25519" and "hmac_sha256" not in manifest
    public = load_public_key(path=prefix.with_suffix(".pub"))
    public.verify(base64.b64decode(block["value"]), canonical_bytes(manifest))  # the documented recipe
    assert verify(release, prefix) == 0 and "intact" in capsys.readouterr().out
    assert verify(release, other) == 1
    assert f"signed by another key (sha256:{block['public_key_sha256']})" in capsys.readouterr().out
    result = verify_release(release)  # no trusted key: checked against the key it names, and said so in a note
    assert result.ok and "guard verify --key" in result.notes[0]


def test_unsigned_release_fails_when_a_key_is_required(release: Path, keys: tuple[Path, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    write_manifest(release, entries=ENTRIES)
    assert run(["verify", str(release)]) == 0
    assert verify(release, keys[0]) == 1 and "no ed25519 signature" in capsys.readouterr().out


def test_hmac_and_signature_together(release: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "hospital-secret")
    manifest = json.loads((signed(release, keys[0]) / MANIFEST_NAME).read_text())
    assert len(manifest["hmac_sha256"]) == 64 and manifest["signature"]["alg"] == "ed25519"
    assert verify_release(release, public_key=load_public_key(path=keys[0].with_suffix(".pub"))).ok
    monkeypatch.setenv(KEY_ENV, "other-secret")
    assert "wrong GUARD_MANIFEST_KEY" in verify_release(release).problems[0]


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def offset_of(text: bytes, needle: bytes, skip: int = 0) -> int:
    """Offset of the byte ``skip`` bytes into the first occurrence of ``needle``."""
    return text.index(needle) + skip


@pytest.mark.parametrize(("needle", "skip"), [
    (b'"verdict": "pass"', 12),        # inside a verdict: pass -> qass
    (b'"value": "', 12),               # inside the signature value
    (b'"public_key_sha256": "', 30),   # inside the signer's fingerprint
    (b'"alg": "ed25519"', 10),         # the algorithm name
    (b'"policy": "public@1"', 13),     # a fingerprint no hash but the signature covers
    (b'"root_sha256": "', 20),         # the release identity
    (b'"seed": 2', 8),                 # a number: 2 -> 3
])
def test_any_manifest_byte_flip_fails_verify(release: Path, keys: tuple[Path, Path], needle: bytes,
                                             skip: int) -> None:
    manifest = signed(release, keys[0]) / MANIFEST_NAME
    flip(manifest, offset_of(manifest.read_bytes(), needle, skip))
    json.loads(manifest.read_text())  # still valid JSON: only the signature can tell
    assert verify(release, keys[0]) == 1


def test_every_single_bit_flip_of_the_manifest_is_caught(release: Path, keys: tuple[Path, Path]) -> None:
    """Exhaustive: flipping the low bit of any byte either breaks the JSON (exit 2) or fails verification."""
    manifest = signed(release, keys[0]) / MANIFEST_NAME
    public = load_public_key(path=keys[0].with_suffix(".pub"))
    original = manifest.read_bytes()
    for offset in range(len(original)):
        data = bytearray(original)
        data[offset] ^= 0x01
        manifest.write_bytes(bytes(data))
        try:
            result = verify_release(release, public_key=public)
        except ManifestError:
            continue
        assert not result.ok, (offset, chr(original[offset]))
    manifest.write_bytes(original)
    assert verify_release(release, public_key=public).ok


def test_non_canonical_base64_is_refused(release: Path, keys: tuple[Path, Path]) -> None:
    """The last base64 character carries spare bits: a lenient decoder would accept a changed manifest."""
    manifest = json.loads((signed(release, keys[0]) / MANIFEST_NAME).read_text())
    value = manifest["signature"]["value"]
    spare = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = spare.index(value[-3])  # 64 bytes -> 86 characters and "=="; the last one uses 2 of its 6 bits
    manifest["signature"]["value"] = value[:-3] + spare[last ^ 0b1111] + "=="
    assert base64.b64decode(manifest["signature"]["value"]) == base64.b64decode(value)
    (release / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = verify_release(release, public_key=load_public_key(path=keys[0].with_suffix(".pub")))
    assert result.problems == ("manifest signature is malformed: value is not canonical base64 of 64 bytes",)


def test_image_byte_flip_fails_verify(release: Path, keys: tuple[Path, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    signed(release, keys[0])
    flip(release / "sub" / "b.png", 60, 0x80)
    assert verify(release, keys[0]) == 1 and "modified sub/b.png" in capsys.readouterr().out


def test_resigned_manifest_is_caught_by_the_trusted_key(release: Path, keys: tuple[Path, Path]) -> None:
    """A forger who edits a verdict and re-signs with their own key passes the self-check, not --key."""
    prefix, forger = keys
    signed(release, prefix)
    write_manifest(release, entries={**ENTRIES, "a.png": {"seed": 1, "verdict": "fail"}},
                   signing_key=load_private_key(path=forger.with_suffix(".key")))
    assert verify_release(release).ok
    assert verify(release, prefix) == 1


@pytest.mark.parametrize(("content", "message"), [
    (None, "public key not found"),
    (b"-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
    (b"\x89PNG\r\n\x1a\n", "not a PEM public key"),
    ("private", "is a private key"),
    ("ec", "holds an EC key, not Ed25519"),
])
def test_bad_public_key_file_exits_2_with_one_line(release: Path, keys: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], content: object,
                                                   message: str) -> None:
    signed(release, keys[0])
    path = tmp_path / "bad.pub"
    if content == "private":
        path.write_bytes(keys[0].with_suffix(".key").read_bytes())
    elif content == "ec":
        path.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    elif content is not None:
        path.write_bytes(content)
    assert run(["verify", str(release), "--key", str(path)]) == 2
    assert message in one_error_line(capsys)


def test_sign_key_option_and_env_var(release: Path, keys: tuple[Path, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = keys[0]
    assert run(["manifest", str(release), "--sign-key", str(prefix.with_suffix(".pub"))]) == 2
    assert "is a public key" in one_error_line(capsys) and not (release / MANIFEST_NAME).exists()
    (tmp_path / "garbled.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    monkeypatch.setenv(SIGNING_KEY_ENV, str(tmp_path / "garbled.key"))
    assert run(["manifest", str(release)]) == 2
    assert "GUARD_SIGNING_KEY key" in one_error_line(capsys) and not (release / MANIFEST_NAME).exists()
    monkeypatch.setenv(SIGNING_KEY_ENV, str(prefix.with_suffix(".key")))
    assert run(["manifest", str(release)]) == 0 and "signed with ed25519" in capsys.readouterr().out
    assert verify(release, prefix) == 0


def test_release_writer_signs_with_the_env_key(tmp_path: Path, keys: tuple[Path, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, str(keys[0].with_suffix(".key")))
    release = tmp_path / "out"
    with ReleaseWriter(release, tmp_path / "quarantine", run_config={"seed": 1}) as writer:
        writer.commit_batch([("sample_00000.png", png(5), {"seed": 5})], [], next_index=1)
        writer.finalize({"model": "sha256:tiny"})
    assert verify(release, keys[0]) == 0
    assert verify(release, keys[1]) == 1


def test_a_bad_signing_key_in_the_environment_fails_generate_and_audit_before_any_work(tmp_path, monkeypatch,
                                                                                       capsys):
    monkeypatch.setenv("GUARD_SIGNING_KEY", str(tmp_path / "missing.key"))
    release = tmp_path / "release"
    for args in (["generate", "--out", str(release), "--n", "1"],
                 ["audit", "--release", str(tmp_path), "--policy", "internal", "--out", str(tmp_path / "r")]):
        capsys.readouterr()
        assert run(args) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "GUARD_SIGNING_KEY" in err, err
    assert not release.exists() and not (tmp_path / "r").exists()
