"""Terminal view of a report and its release verdict, shared by ``guard audit`` and ``guard gate``.

Only public report fields are shown (the report names no training image). Text from the report, file names
above all, is printed as plain text with non-printable characters escaped, so a crafted file name can neither
inject rich markup nor send escape sequences to the terminal.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..policies.evaluate import blocks
from ..results import FLAG, PASS, ImageResult, ReleaseVerdict, Report, Status

_STATUS_STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.SKIPPED: "yellow"}


def _plain(value: object) -> str:
    """``value`` as one printable line: control characters, other non-printables and lone surrogates escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(value))


def _summary(report: Report, verdict: ReleaseVerdict) -> Table:
    warned = sum(1 for img in report.images if img.warnings)
    table = Table(title="Summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("Images audited", str(verdict.images))
    table.add_row("Passed", str(verdict.images - verdict.image_failures))
    failed_style = "red" if verdict.image_failures else ""
    table.add_row("Failed", Text(f"{verdict.image_failures} ({verdict.failed_fraction:.2%})", style=failed_style))
    table.add_row("With warnings", str(warned))
    return table


def _by_check(report: Report, verdict: ReleaseVerdict) -> Table | None:
    """Per check: images flagged, errored, and how many of those were blocked or only warned."""
    if not report.images:
        return None
    names = list(verdict.actions) + sorted({c for img in report.images for c in img.checks} - set(verdict.actions))
    table = Table(title="Failures by check", title_justify="left")
    for column in ("Check", "Action", "Flagged", "Errors", "Blocked", "Warned"):
        table.add_column(column, justify="left" if column in ("Check", "Action") else "right")
    for name in names:
        action = verdict.actions.get(name, "off")
        ran = [img.checks[name] for img in report.images if name in img.checks]
        flagged, errors = ran.count(FLAG), sum(1 for s in ran if s not in (PASS, FLAG))
        blocked = sum(1 for s in ran if blocks(s, action))
        warned = sum(1 for s in ran if s == FLAG and not blocks(s, action))
        table.add_row(Text(_plain(name)), action, str(flagged) if ran else "not run", str(errors),
                      Text(str(blocked), style="red" if blocked else ""), str(warned))
    return table


def _top_scores(img: ImageResult, limit: int = 3) -> str:
    bad = [c for c, s in img.checks.items() if s != PASS]
    keys = [k for k in img.scores if any(k.startswith(f"{c}.") for c in bad)] or list(img.scores)
    return ", ".join(f"{_plain(k)}={img.scores[k]:.4g}" for k in keys[:limit])


def _flagged(report: Report, max_rows: int) -> tuple[Table | None, int]:
    rows = [img for img in report.images if img.verdict != "pass" or img.warnings]
    rows.sort(key=lambda img: (img.verdict == "pass", -sum(s != PASS for s in img.checks.values()), img.file_name))
    if not rows:
        return None, 0
    table = Table(title="Flagged images", title_justify="left")
    table.add_column("File", overflow="fold")
    table.add_column("Verdict")
    table.add_column("Checks", overflow="fold")
    table.add_column("Scores", overflow="fold")
    table.add_column("Reason", overflow="fold")
    for img in rows[:max_rows]:
        lines = img.reasons or img.warnings
        reason = _plain(lines[0]) + (f" (+{len(lines) - 1} more)" if len(lines) > 1 else "")
        verdict = Text("fail", style="red") if img.verdict != "pass" else Text("warn", style="yellow")
        checks = ", ".join(f"{_plain(c)}:{s}" for c, s in img.checks.items() if s != PASS)
        table.add_row(Text(_plain(img.file_name)), verdict, Text(checks), Text(_top_scores(img)), Text(reason))
    return table, len(rows) - min(len(rows), max_rows)


def _release(verdict: ReleaseVerdict) -> Table:
    table = Table(title="Release-level checks", title_justify="left")
    table.add_column("Check")
    table.add_column("Status")
    table.add_column("Detail", overflow="fold")
    for check in verdict.checks:
        table.add_row(check.name, Text(check.status.value, style=_STATUS_STYLE[check.status]),
                      Text(_plain(check.message)))
    return table


def render_report(report: Report, verdict: ReleaseVerdict, *, console: Console | None = None,
                  max_rows: int = 20) -> None:
    """Print the summary, per-check counts, the ``max_rows`` most flagged images, release-level checks, notes,
    violations and the final verdict line to ``console`` (stdout by default)."""
    console = console or Console()
    audit_policy = report.policy.get("name", "?")
    header = f"synfundus-guard: policy {verdict.policy_name!r}"
    if audit_policy != verdict.policy_name:
        header += f" (audited under {audit_policy!r})"
    console.print(Text(_plain(header), style="bold"))
    console.print(_summary(report, verdict))
    by_check = _by_check(report, verdict)
    flagged, hidden = _flagged(report, max_rows)
    for table in (by_check, flagged):
        if table is not None:
            console.print(table)
    if hidden:
        console.print(Text(f"... and {hidden} more flagged images (see report.json)", style="dim"))
    console.print(_release(verdict))
    for note in verdict.notes:
        console.print(Text(f"note: {_plain(note)}", style="yellow"))
    for violation in verdict.violations:
        console.print(Text(f"violation: {_plain(violation)}", style="red"))
    if verdict.verdict == "pass":
        console.print(Text(f"PASS: the release meets policy {verdict.policy_name!r}", style="bold green"))
    else:
        n = len(verdict.violations)
        console.print(Text(f"FAIL: {n} violation{'s' if n != 1 else ''} of policy {verdict.policy_name!r}",
                           style="bold red"))
