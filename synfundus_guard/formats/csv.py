"""One row per image as CSV, for a spreadsheet: verdict, the checks that flagged it, reasons, every public score.

Cells that a spreadsheet would run as a formula (text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return: a file name on disk can be any of these) are prefixed with ``'``, the usual CSV-injection guard; numbers
are written as numbers.
"""

from __future__ import annotations

import csv
import io

from ._text import flagged_checks, xml_text
from .interface import ReportFormat, ReportView, register

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = xml_text(value)
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def to_csv(view: ReportView) -> str:
    """The per-image table as CSV text (RFC 4180 quoting, ``\\r\\n`` line ends)."""
    images = view.report.images
    scores = sorted({key for img in images for key in img.scores})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file_name", "verdict", "flagged_checks", "reasons", "warnings", *scores])
    for img in images:
        row = [img.file_name, img.verdict, ";".join(flagged_checks(img)), " | ".join(img.reasons),
               " | ".join(img.warnings), *(img.scores.get(key, "") for key in scores)]
        writer.writerow([_cell(v) for v in row])
    return buf.getvalue()


@register
class CsvFormat(ReportFormat):
    """A spreadsheet of per-image results."""

    name = "csv"
    file_name = "report.csv"
    description = "CSV, one row per image (verdict, flagged checks, reasons, scores)"

    def render(self, view: ReportView) -> bytes:
        return to_csv(view).encode("utf-8")
