"""SARIF 2.1.0 view of an audit, for code-scanning dashboards (GitHub, GitLab, Azure DevOps).

One rule per per-image check (``SFG-MEMORIZATION``, ``SFG-FACES``...) and per release-level check
(``SFG-RELEASE-MEMBERSHIP-AUC``...). One result per flagged image per flagged check, located at the image's
release-relative path (``uriBaseId`` ``RELEASE``; a name that would point outside the release, possible only in
a hand-edited report, gets no location), with the check's public scores and the file name; plus one result without a
location per release-level violation. Like the public report, nothing here names a training image.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from .. import __version__
from ..errors import GuardError
from ..fsutil import safe_relpath
from ..policies.evaluate import IMAGE_CHECKS, blocks
from ..results import PASS, ImageResult, ReleaseCheck, ReleaseVerdict, Report, Status
from ._text import lines_by_check, scores_of
from .interface import ReportFormat, ReportView, register

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
INFORMATION_URI = "https://pypi.org/project/synfundus-guard/"
URI_BASE = "RELEASE"

_DESCRIPTIONS = {
    "memorization": "Image is a near copy of a training image (embedding and aligned pixel similarity).",
    "vessels": "Retinal vessel pattern matches a training patient's (a biometric identifier).",
    "text": "Image contains rendered text (names, dates, identifiers burned into the pixels).",
    "faces": "Image contains a face.",
    "metadata": "Image file carries identifying metadata (EXIF, PNG text chunks).",
}
_LEVEL_FOR_ACTION = {"block": "error", "warn": "warning", "off": "note"}


def _image_rule_id(check: str) -> str:
    return f"SFG-{check.upper()}"


def _release_rule_id(check: ReleaseCheck) -> str:
    prefix = "COVERAGE" if check.group == "checks" else "RELEASE"
    return f"SFG-{prefix}-{check.name.upper()}"


def _rule(rule_id: str, text: str, level: str) -> dict[str, Any]:
    return {"id": rule_id, "shortDescription": {"text": text}, "defaultConfiguration": {"level": level}}


def _rules(report: Report, verdict: ReleaseVerdict) -> list[dict[str, Any]]:
    names = list(IMAGE_CHECKS) + sorted({c for img in report.images for c in img.checks} - set(IMAGE_CHECKS))
    rules = [_rule(_image_rule_id(n), _DESCRIPTIONS.get(n, f"The {n} check flagged the image."),
                   _LEVEL_FOR_ACTION[verdict.actions.get(n, "off")]) for n in names]
    rules += [_rule(_release_rule_id(c), f"Release-level check {c.name}.", "error") for c in verdict.checks]
    return rules


def _image_results(img: ImageResult, verdict: ReleaseVerdict, index: dict[str, int]) -> list[dict[str, Any]]:
    lines = lines_by_check(img)
    try:  # a name from a hand-edited report that would point outside the release is not shown as a location
        safe_relpath(img.file_name)
        uri = quote(img.file_name, safe="/", errors="surrogateescape")
        where = [{"physicalLocation": {"artifactLocation": {"uri": uri, "uriBaseId": URI_BASE}}}]
    except GuardError:
        where = []
    out = []
    for check, status in img.checks.items():
        if status == PASS:
            continue
        action = verdict.actions.get(check, "off")
        level = "error" if blocks(status, action) else _LEVEL_FOR_ACTION[action]
        scores = scores_of(img, check) or dict(img.scores)
        text = "; ".join(lines.get(check, [])) or f"{check}: {status}"
        rule_id = _image_rule_id(check)
        result = {"ruleId": rule_id, "ruleIndex": index[rule_id], "level": level, "message": {"text": text},
                  "properties": {"scores": scores, "status": status, "file_name": img.file_name}}
        out.append({**result, "locations": where} if where else result)
    return out


def to_sarif(report: Report, verdict: ReleaseVerdict) -> dict[str, Any]:
    """The report and release verdict as a SARIF 2.1.0 log (a JSON-able dict)."""
    rules = _rules(report, verdict)
    index = {rule["id"]: i for i, rule in enumerate(rules)}
    results = [r for img in report.images for r in _image_results(img, verdict, index)]
    for check in verdict.checks:
        if check.status is Status.FAIL:
            rule_id = _release_rule_id(check)
            results.append({"ruleId": rule_id, "ruleIndex": index[rule_id], "level": "error",
                            "message": {"text": check.message}})
    driver = {"name": "synfundus-guard", "version": __version__, "informationUri": INFORMATION_URI, "rules": rules}
    run = {
        "tool": {"driver": driver},
        "originalUriBaseIds": {URI_BASE: {"description": {"text": "The release folder that was audited."}}},
        "results": results,
        "properties": {"verdict": verdict.verdict, "policy": {"name": verdict.policy_name,
                       "sha256": verdict.policy_sha256}, "notes": list(verdict.notes)},
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


@register
class SarifFormat(ReportFormat):
    """SARIF 2.1.0: a result per flagged image per check, and per release-level violation."""

    name = "sarif"
    file_name = "report.sarif"
    description = "SARIF 2.1.0 (code-scanning dashboards)"

    def render(self, view: ReportView) -> bytes:
        text = json.dumps(to_sarif(view.report, view.verdict), indent=2, sort_keys=True, allow_nan=False)
        return (text + "\n").encode("utf-8")
