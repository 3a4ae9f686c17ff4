r"""JUnit XML view of an audit, for CI systems that show test results (GitLab, Jenkins, GitHub actions).

One ``<testsuite name="synfundus-guard">``: a test case per image (class ``images``, failed with its reasons),
one per release-level check (class ``release``: the failed fraction, each membership limit, differential
privacy) and one per policy-enabled check the audit did not run (class ``checks``, skipped). Text goes through
:mod:`xml.etree` for escaping; characters XML 1.0 cannot carry at all are shown as ``\xNN`` escapes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ..results import Report, ReleaseVerdict, Status
from ._text import xml_text as _text
from .interface import ReportFormat, ReportView, register

SUITE_NAME = "synfundus-guard"


def _case(suite: ET.Element, classname: str, name: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=classname, name=_text(name), time="0")


def _child(case: ET.Element, tag: str, message: str, body: str | None = None) -> None:
    el = ET.SubElement(case, tag, message=_text(message))
    if tag == "failure":
        el.set("type", "policy")
    if body:
        el.text = _text(body)


def to_junit(report: Report, verdict: ReleaseVerdict) -> str:
    """The report and release verdict as a JUnit XML document (a string with an XML declaration)."""
    suite = ET.Element("testsuite", name=SUITE_NAME)
    props = ET.SubElement(suite, "properties")
    for key, value in (("policy", verdict.policy_name), ("policy.sha256", verdict.policy_sha256),
                       ("audit.policy", report.policy.get("name", "")),
                       ("audit.policy.sha256", report.policy.get("sha256", "")), ("verdict", verdict.verdict)):
        ET.SubElement(props, "property", name=key, value=_text(value))
    failures = skipped = 0
    for img in report.images:
        case = _case(suite, "images", img.file_name)
        if img.verdict != "pass":
            failures += 1
            _child(case, "failure", "; ".join(img.reasons) or "failed", "\n".join(img.reasons))
        if img.warnings:
            ET.SubElement(case, "system-out").text = _text("\n".join(f"warning: {w}" for w in img.warnings))
    for check in verdict.checks:
        case = _case(suite, check.group, check.name)
        if check.status is Status.FAIL:
            failures += 1
            _child(case, "failure", check.message)
        elif check.status is Status.SKIPPED:
            skipped += 1
            _child(case, "skipped", check.message)
        else:
            ET.SubElement(case, "system-out").text = _text(check.message)
    if verdict.notes:
        ET.SubElement(suite, "system-out").text = _text("\n".join(f"note: {n}" for n in verdict.notes))
    tests = len(report.images) + len(verdict.checks)
    counts = {"tests": str(tests), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    suite.attrib.update(counts)
    root = ET.Element("testsuites", name=SUITE_NAME, **counts)
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


@register
class JUnitFormat(ReportFormat):
    """JUnit XML: one test case per image and per release-level check."""

    name = "junit"
    file_name = "report.junit.xml"
    description = "JUnit XML (a test case per image and per release check)"

    def render(self, view: ReportView) -> bytes:
        return to_junit(view.report, view.verdict).encode("utf-8")
