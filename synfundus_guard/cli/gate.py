"""``guard gate``: judge a stored audit report under a policy, for CI.

Parses arguments, calls :func:`~synfundus_guard.policies.evaluate.gate_report`, renders, writes the CI files
asked for, and exits 0 (pass), 1 (policy failed) or 2 (missing or malformed report or policy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..policies.evaluate import gate_report
from ..policies.schema import load_policy
from ..release.junit import write_junit
from ..release.report import read_report
from ..release.sarif import write_sarif
from .errors import EXIT_FAIL, EXIT_PASS, guarded
from .render import render_report


@guarded
def gate(
    report: Annotated[Path, typer.Argument(metavar="REPORT", help="report.json, or the folder that holds it.")],
    policy: Annotated[Path, typer.Option("--policy", "-p", help="Policy YAML to judge the report under.")],
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write JUnit XML here.")] = None,
    sarif: Annotated[Path | None, typer.Option("--sarif", help="Also write SARIF 2.1.0 here.")] = None,
) -> None:
    """Re-apply a policy to an audit report; exit 0 pass, 1 policy failed, 2 bad input."""
    loaded_policy = load_policy(policy)
    gated, verdict = gate_report(read_report(report), loaded_policy)
    render_report(gated, verdict)
    if junit is not None:
        write_junit(junit, gated, verdict)
    if sarif is not None:
        write_sarif(sarif, gated, verdict)
    raise typer.Exit(EXIT_PASS if verdict.verdict == "pass" else EXIT_FAIL)


def register(app: typer.Typer) -> None:
    """Add ``guard gate`` to the ``guard`` app."""
    app.command("gate")(gate)
