"""The policy files shipped in the repository's ``policies/`` folder, addressable by name."""

from __future__ import annotations

from pathlib import Path

from ..errors import PolicyError

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "policies"


def shipped_policy_path(name: str) -> Path:
    """Path of ``policies/<name>.yaml``. Raises :class:`PolicyError` when there is no such shipped policy."""
    path = SHIPPED_DIR / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))) or "none found"
        raise PolicyError(name, [f"no shipped policy of that name (available: {available})"])
    return path
