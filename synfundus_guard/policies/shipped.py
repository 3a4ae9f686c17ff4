"""The policy files shipped in the repository's ``policies/`` folder, addressable by name."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import PolicyError

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "policies"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A shipped policy's name: a plain file stem, so a name can never reach outside :data:`SHIPPED_DIR`."""


def _available() -> str:
    return ", ".join(sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))) or "none found"


def shipped_policy_path(name: str) -> Path:
    """Path of ``policies/<name>.yaml``. Raises :class:`PolicyError` when there is no such shipped policy."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PolicyError(repr(name), [f"not a shipped policy name (available: {_available()})"])
    path = SHIPPED_DIR / f"{name}.yaml"
    if not path.is_file():
        raise PolicyError(name, [f"no shipped policy of that name (available: {_available()})"])
    return path
