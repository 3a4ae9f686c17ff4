"""The policies shipped inside the package (``synfundus_guard/policies/data/*.yaml``), addressable by name.

They are package data read through :mod:`importlib.resources`, not through a path next to the source tree, so
``--policy public`` works the same from a checkout, an installed wheel or a zip import. Only the bytes are
handed out (a resource inside a zip has no file path).
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable

from ..errors import PolicyError

SHIPPED_PACKAGE = __package__
"""The package whose ``data/`` folder holds the shipped policies."""
SHIPPED_FOLDER = "data"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A shipped policy's name: a plain file stem, so a name can never reach outside the shipped folder."""


def _folder() -> Traversable:
    return resources.files(SHIPPED_PACKAGE).joinpath(SHIPPED_FOLDER)


def shipped_policy_names() -> tuple[str, ...]:
    """Names of the shipped policies, sorted (``internal``, ``public``)."""
    folder = _folder()
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")))


def is_policy_name(text: str) -> bool:
    """Whether ``text`` has the form of a shipped policy name (a plain stem: no folder, no suffix)."""
    return isinstance(text, str) and _NAME.fullmatch(text) is not None


def _available() -> str:
    return ", ".join(shipped_policy_names()) or "none found"


def shipped_policy_text(name: str) -> str:
    """The YAML text of the shipped policy ``name``.

    Raises :class:`PolicyError` when ``name`` is not a plain name or no shipped policy has it; the message
    lists the shipped names.
    """
    if not is_policy_name(name):
        raise PolicyError(repr(name), [f"not a shipped policy name (shipped: {_available()})"])
    resource = _folder().joinpath(f"{name}.yaml")
    if not resource.is_file():
        raise PolicyError(name, [f"no shipped policy of that name (shipped: {_available()})"])
    return resource.read_bytes().decode("utf-8")
