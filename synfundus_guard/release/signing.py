"""Ed25519 signatures for release manifests: key files, signing and verification.

Why a public-key signature: the HMAC of ``GUARD_MANIFEST_KEY`` is symmetric, so whoever can check it can also
forge it. An Ed25519 signature is made with a private key that stays with the site that releases, and checked with
a public key that can be published beside the release: a reader can tell the manifest (hence every image hash,
verdict, fingerprint and the metadata hash) is exactly what that site sealed.

Keys: :func:`generate_keypair` writes ``PREFIX.key`` (PKCS#8 PEM, unencrypted, owner-only 0600) and ``PREFIX.pub``
(SubjectPublicKeyInfo PEM, 0644). Each file is written to a temp file, fsynced and hard-linked into place, so it
appears whole or not at all and an existing file is never replaced, even by a concurrent run. A key's
*fingerprint* is the hex sha256 of its raw 32 public bytes.

What is signed: :func:`canonical_bytes`, the JSON of the whole manifest without the fields in
:data:`SIGNATURE_FIELDS` (``sort_keys``, separators ``(",", ":")``, ASCII only, no NaN), the same bytes the HMAC
covers, so both may be present and neither covers the other. The signed text includes the manifest's ``schema``,
which binds a signature to this use. The result is stored as ``manifest["signature"] = {"alg": "ed25519",
"public_key": base64(raw 32 bytes), "public_key_sha256": fingerprint, "value": base64(64-byte signature)}``.
Anyone can check it without this toolkit: ``Ed25519PublicKey.from_public_bytes(b64decode(public_key)).verify(
b64decode(value), canonical_bytes)``.

Checking (:func:`signature_problems`): with a trusted public key, the manifest must be signed by that key and the
signature must verify; an unsigned manifest or another signer is a problem. Without one, a signed manifest is
checked against the public key it carries: that catches corruption and edits by anyone who did not re-sign, but
not a forger who re-signs with a key of their own, so the result is a note saying who signed, never a proof.
Every malformed signature block (non-canonical base64 included: it would let bytes change unnoticed) is a
problem, not an exception, because it is what a tampered manifest looks like.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import InputError
from ..fsutil import fsync_dir, make_private_dir, sha256_bytes

ALG = "ed25519"
SIGNATURE_FIELDS = ("hmac_sha256", "signature")
"""Manifest fields that hold signatures and are left out of the signed bytes."""
SIGNING_KEY_ENV = "GUARD_SIGNING_KEY"
"""Path of a private key file; when set, :func:`~.manifest.save_manifest` signs every manifest it writes."""
MAX_KEY_BYTES = 64 * 1024
"""Largest key file read (a PEM key is a few hundred bytes: anything larger is the wrong file)."""
_BLOCK_KEYS = frozenset({"alg", "public_key", "public_key_sha256", "value"})


@dataclass(frozen=True)
class KeyPair:
    """The files :func:`generate_keypair` wrote."""

    private_path: Path
    """``PREFIX.key``: the signing key, owner-only; keep it secret."""
    public_path: Path
    """``PREFIX.pub``: the key to publish and pass to ``guard verify --key``."""
    fingerprint: str
    """Hex sha256 of the raw public key, as stored in ``public_key_sha256``."""


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """The signed bytes: canonical JSON of ``manifest`` without its signature fields (ValueError for NaN)."""
    body = {k: v for k, v in manifest.items() if k not in SIGNATURE_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def fingerprint(key: Ed25519PublicKey) -> str:
    """Hex sha256 of the raw 32-byte public key."""
    return sha256_bytes(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` whole with ``mode``, or raise :class:`InputError` when it exists; never replaces a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # atomic, and fails with EEXIST instead of replacing (os.replace would overwrite)
    except FileExistsError:
        raise InputError(f"{path} exists; keygen never overwrites a key file (choose another --out)") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)


def generate_keypair(*, prefix: Path) -> KeyPair:
    """Write a new Ed25519 key pair to ``PREFIX.key`` (0600) and ``PREFIX.pub``; returns their paths.

    Missing parent folders are created owner-only. Raises :class:`InputError` when either file already exists or
    ``prefix`` is a folder; when the public file cannot be written the private one is removed again.
    """
    prefix = Path(prefix)
    if prefix.is_dir() or prefix.name in ("", ".", ".."):
        raise InputError(f"--out {prefix} is a folder; give a file-name prefix such as keys/release")
    private_path, public_path = (prefix.with_name(prefix.name + ext) for ext in (".key", ".pub"))
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise InputError(f"{path} exists; keygen never overwrites a key file (choose another --out)")
    make_private_dir(private_path.parent)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_new(private_path, pem, 0o600)
    try:
        public = key.public_key()
        _write_new(public_path, public.public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return KeyPair(private_path, public_path, fingerprint(public))


def _read_key_file(path: Path, what: str) -> bytes:
    """The bytes of a key file; a missing, special or oversized file is a one-line :class:`InputError`."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{what} {path} is not a regular file")
        if st.st_size > MAX_KEY_BYTES:
            raise InputError(f"{what} {path} is too large to be a key file ({st.st_size} bytes)")
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise InputError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _kind(key: object) -> str:
    """``RSA``, ``EC``, ``Ed448`` ... from the key's class name, for messages."""
    return type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "") or "unknown"


def load_private_key(*, path: Path, what: str = "signing key") -> Ed25519PrivateKey:
    """Load an unencrypted Ed25519 private key from a PEM file.

    Raises :class:`InputError` (one line naming ``what`` and ``path``) for a missing or unreadable file, a public
    key, a passphrase-protected key, garbled PEM, or a key of another type.
    """
    data = _read_key_file(path, what)
    if b"PUBLIC KEY-----" in data:
        raise InputError(f"{what} {path} is a public key; signing needs the private .key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InputError(f"{what} {path} is passphrase-protected, which is not supported; "
                         "keep an unencrypted key in an owner-only file") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{what} {path} is not a PEM private key (garbled, or not a key file)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{what} {path} holds an {_kind(key)} key, not Ed25519 (make one with guard keygen)")
    return key


def load_public_key(*, path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM file.

    Raises :class:`InputError` for a missing or unreadable file, a private key (refused so that no one learns to
    hand private keys to verifiers), garbled PEM, or a key of another type.
    """
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise InputError(f"public key {path} is a private key; verify with the .pub file and keep the .key secret")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"public key {path} is not a PEM public key (garbled, or not a key file)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"public key {path} holds an {_kind(key)} key, not Ed25519")
    return key


def env_signing_key() -> Ed25519PrivateKey | None:
    """The private key named by ``GUARD_SIGNING_KEY``, or None when the variable is unset or empty."""
    path = os.environ.get(SIGNING_KEY_ENV, "")
    return load_private_key(path=Path(path), what=f"{SIGNING_KEY_ENV} key") if path else None


def sign_manifest(manifest: dict[str, Any], *, private_key: Ed25519PrivateKey) -> dict[str, str]:
    """The ``signature`` block for ``manifest`` (its signature fields are ignored); ValueError for NaN."""
    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    value = private_key.sign(canonical_bytes(manifest))
    return {"alg": ALG, "public_key": base64.b64encode(raw).decode("ascii"), "public_key_sha256": sha256_bytes(raw),
            "value": base64.b64encode(value).decode("ascii")}


def _strict_b64(text: Any, size: int, field: str) -> bytes:
    """Decode canonical base64 of exactly ``size`` bytes; anything else raises ValueError naming ``field``."""
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size or base64.b64encode(raw).decode("ascii") != text:
        raise ValueError(f"{field} is not canonical base64 of {size} bytes")
    return raw


def _parse_block(block: Any) -> tuple[Ed25519PublicKey, bytes]:
    """The embedded public key and signature bytes; ValueError (a short reason) for any malformed block."""
    if not isinstance(block, dict) or set(block) != _BLOCK_KEYS:
        raise ValueError(f"expected exactly the fields {', '.join(sorted(_BLOCK_KEYS))}")
    if block["alg"] != ALG:
        raise ValueError(f"unsupported alg {str(block['alg'])[:40]!r} (expected {ALG!r})")
    raw = _strict_b64(block["public_key"], 32, "public_key")
    if block["public_key_sha256"] != sha256_bytes(raw):
        raise ValueError("public_key_sha256 does not match public_key")
    return Ed25519PublicKey.from_public_bytes(raw), _strict_b64(block["value"], 64, "value")


def signature_problems(manifest: dict[str, Any], *, public_key: Ed25519PublicKey | None = None,
                       ) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` for the manifest's Ed25519 signature, checked against ``public_key`` when given.

    See the module docstring for what is checked with and without a trusted key. Never raises for a malformed
    manifest: every way a signature can be wrong is a problem line.
    """
    block = manifest.get("signature")
    wanted = fingerprint(public_key) if public_key is not None else None
    if block is None:
        return ([f"manifest has no ed25519 signature but a public key was given (sha256:{wanted})"]
                if wanted else []), []
    try:
        embedded, value = _parse_block(block)
    except ValueError as exc:
        return [f"manifest signature is malformed: {exc}"], []
    signer = fingerprint(embedded)
    if wanted is not None and signer != wanted:
        return [f"manifest is signed by another key (sha256:{signer}), not the given one (sha256:{wanted})"], []
    try:
        (public_key or embedded).verify(value, canonical_bytes(manifest))
    except (InvalidSignature, ValueError):
        return ["manifest signature does not verify (the manifest was edited after it was signed)"], []
    if wanted is not None:
        return [], [f"ed25519 signature verified with the given public key (sha256:{signer})"]
    return [], [f"manifest is signed by ed25519 key sha256:{signer} and matches it; pass that key's .pub file "
                "(guard verify --key) to check who signed it"]
