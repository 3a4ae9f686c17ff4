"""Bounded parsing of untrusted JSON files (reports, manifests, indexes, model folders).

Every file the toolkit reads back may come from someone else. ``json.loads`` on a deeply nested document raises
``RecursionError`` (which is not a ``ValueError``) and a huge file is read whole into memory, so every reader
goes through :func:`read_json`: a size cap, a nesting cap, and one :class:`~synfundus_guard.errors.InputError`
(or the caller's subclass) with a one-line message for anything wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError

MAX_JSON_BYTES = 512 * 1024 * 1024
"""Largest JSON file read back (a 1 M-image manifest is ~400 MB; beyond that the file is not one of ours)."""
MAX_DEPTH = 64
"""Deepest nesting of lists/objects accepted; the toolkit's own files stay under 10."""


def _depth_ok(text: str, limit: int) -> bool:
    """True when brackets outside strings never nest deeper than ``limit`` (a linear scan, no recursion)."""
    depth, in_str, escape = 0, False, False
    for ch in text:
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json(text: str, source: str, *, error: type[Exception] = InputError, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON ``text`` from ``source`` (named in messages). Raises ``error`` for bad or too deep JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        pass
    if not _depth_ok(text, max_depth):
        raise error(f"{source}: JSON nested deeper than {max_depth} levels")
    raise error(f"{source}: JSON too deeply nested to parse")


def read_json(path: Path, *, error: type[Exception] = InputError, max_bytes: int = MAX_JSON_BYTES,
              expect: type | None = None) -> Any:
    """Read and parse a JSON file with size and nesting bounds.

    ``expect`` (e.g. ``dict``) also checks the top-level type. Raises ``FileNotFoundError`` untouched (callers
    word their own "missing" message) and ``error`` for everything else.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{path}: file too large ({size} bytes; at most {max_bytes})")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    value = parse_json(text, str(path), error=error)
    if expect is not None and not isinstance(value, expect):
        raise error(f"{path}: expected a JSON {'object' if expect is dict else expect.__name__}, "
                    f"got {type(value).__name__}")
    return value
