"""Escaping and per-check grouping shared by the formats, so each says the same thing the same way.

Everything shown comes from a report on disk, which an attacker may have written: text is escaped for the
target language here (XML 1.0, HTML, Markdown), never by hand in a format.
"""

from __future__ import annotations

import html
import re

from ..policies.evaluate import split_lines
from ..results import PASS, ImageResult

_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def xml_text(value: object) -> str:
    """``value`` as text XML 1.0 can carry: control characters and lone surrogates become ``\\xNN`` escapes."""
    return _NOT_XML.sub(_escape, str(value))


def html_text(value: object) -> str:
    """``value`` escaped for HTML element content and quoted attributes."""
    return html.escape(xml_text(value), quote=True)


def md_text(value: object) -> str:
    """``value`` on one Markdown line: markup characters backslash-escaped, line breaks made spaces."""
    one_line = " ".join(xml_text(value).split())
    return _MD_SPECIAL.sub(r"\\\1", one_line)


def scores_of(img: ImageResult, check: str) -> dict[str, float]:
    """The image's public scores that ``check`` produced (keys ``"<check>.<score>"``)."""
    return {k: v for k, v in img.scores.items() if k.startswith(f"{check}.")}


def lines_by_check(img: ImageResult) -> dict[str, list[str]]:
    """The image's reasons and warnings grouped by the check that wrote them (unattributed under ``""``)."""
    lines, loose = split_lines(img.reasons + img.warnings, list(img.checks))
    if loose:
        lines[""] = loose
    return lines


def flagged_checks(img: ImageResult) -> list[str]:
    """The checks that did not pass on ``img``, in report order."""
    return [check for check, status in img.checks.items() if status != PASS]
