"""The report itself as JSON (``report.json``'s schema), with the judging policy's verdict applied.

``guard audit`` writes ``report.json`` through :func:`~synfundus_guard.release.report.write_report`; this format
serves ``guard gate --format json``, whose report carries the gate policy's image verdicts and violations.
"""

from __future__ import annotations

import json

from .interface import ReportFormat, ReportView, register


@register
class JsonFormat(ReportFormat):
    """The public report document."""

    name = "json"
    file_name = "report.json"
    description = "the report as JSON (report.json's schema)"

    def render(self, view: ReportView) -> bytes:
        text = json.dumps(view.report.to_dict(), indent=2, sort_keys=True, allow_nan=False)
        return (text + "\n").encode("utf-8")
