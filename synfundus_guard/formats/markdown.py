"""A short Markdown summary for a pull-request or merge-request comment.

Verdict first, then every violation, the release-level checks, flags per check, and the first flagged images
with their reasons (public names and reasons only; every value is escaped, so a hostile file name cannot inject
markup or links into the comment).
"""

from __future__ import annotations

from collections import Counter

from ..results import Status
from ._text import flagged_checks, lines_by_check, md_text
from .interface import ReportFormat, ReportView, register

MAX_IMAGES = 20
"""Flagged images listed by name; the rest are counted (a comment must stay short)."""
_MARK = {Status.PASS: "pass", Status.FAIL: "**FAIL**", Status.SKIPPED: "skipped"}


def _images(view: ReportView) -> list[str]:
    failed = [img for img in view.report.images if img.verdict != "pass"]
    if not failed:
        return []
    out = ["", "| image | checks | reason |", "|---|---|---|"]
    for img in failed[:MAX_IMAGES]:
        lines = lines_by_check(img)
        first = next((line for check in flagged_checks(img) for line in lines.get(check, [])), "failed")
        out.append(f"| {md_text(img.file_name)} | {md_text(', '.join(flagged_checks(img)))} | {md_text(first)} |")
    if len(failed) > MAX_IMAGES:
        out.append(f"\n... and {len(failed) - MAX_IMAGES} more flagged images (see the HTML report).")
    return out


def _fidelity(view: ReportView) -> list[str]:
    section = view.report.release_checks.get("fidelity")
    metrics = section.get("metrics") if isinstance(section, dict) else None
    if not isinstance(metrics, dict):
        return []
    cells = [f"{md_text(k)} {v['point']:.3g}" for k, v in metrics.items()
             if isinstance(v, dict) and isinstance(v.get("point"), (int, float))]
    return ["", "Fidelity against real images: " + ", ".join(cells)] if cells else []


def to_markdown(view: ReportView) -> str:
    """The summary as Markdown text."""
    v = view.verdict
    head = "passed" if v.verdict == "pass" else "FAILED"
    out = [f"### synfundus-guard: release {head} under policy `{md_text(v.policy_name)}`", "",
           f"{v.images} images audited, {v.image_failures} failed ({v.failed_fraction:.2%})."]
    if v.violations:
        out += ["", "**Violations**", ""] + [f"- {md_text(line)}" for line in v.violations]
    out += ["", "| release check | status | detail |", "|---|---|---|"]
    out += [f"| {md_text(c.name)} | {_MARK[c.status]} | {md_text(c.message)} |" for c in v.checks]
    flags = Counter(check for img in view.report.images for check in flagged_checks(img))
    if flags:
        out += ["", "Flags by check: " + ", ".join(f"{md_text(k)} {n}" for k, n in sorted(flags.items()))]
    out += _fidelity(view)
    out += _images(view)
    if v.notes:
        out += ["", "<details><summary>Notes</summary>", ""] + [f"- {md_text(n)}" for n in v.notes]
        out += ["", "</details>"]
    return "\n".join(out) + "\n"


@register
class MarkdownFormat(ReportFormat):
    """Markdown summary for a PR comment."""

    name = "markdown"
    file_name = "report.md"
    description = "Markdown summary for a pull-request comment"

    def render(self, view: ReportView) -> bytes:
        return to_markdown(view).encode("utf-8")
