"""``guard gate``: judge a stored audit report under a policy, for CI.

Parses arguments, calls :func:`~synfundus_guard.policies.evaluate.gate_report`, renders, writes the CI files
asked for, and exits 0 (pass), 1 (policy failed) or 2 (missing or malformed report or policy).

The CI files are all-or-nothing: every one is rendered to bytes before the first is written, and when a later
write fails the files this run already wrote are removed, so CI never reads a JUnit file of a run whose SARIF
(and exit code) say something else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..fsutil import atomic_write_bytes
from ..policies.evaluate import ReleaseVerdict, gate_report
from ..policies.schema import load_policy
from ..release.junit import to_junit
from ..release.report import Report, read_report
from ..release.sarif import to_sarif
from .errors import EXIT_FAIL, EXIT_PASS, fail_usage, guarded
from .render import render_report


def render_outputs(report: Report, verdict: ReleaseVerdict, *, junit: Path | None,
                   sarif: Path | None) -> dict[Path, bytes]:
    """The bytes of every CI file asked for, keyed by path (nothing is written here)."""
    outputs: dict[Path, bytes] = {}
    if junit is not None:
        outputs[junit] = to_junit(report, verdict).encode("utf-8")
    if sarif is not None:
        text = json.dumps(to_sarif(report, verdict), indent=2, sort_keys=True, allow_nan=False) + "\n"
        outputs[sarif] = text.encode("utf-8")
    return outputs


def _missing_folders(paths: list[Path]) -> list[Path]:
    """Folders above ``paths`` that do not exist yet, deepest first (a failed run removes what it created)."""
    missing = {parent for path in paths for parent in Path(path).absolute().parents if not parent.exists()}
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def write_outputs(outputs: dict[Path, bytes]) -> None:
    """Write every file atomically; if one fails, remove the files and folders this call created, re-raise."""
    created = _missing_folders(list(outputs))
    written: list[Path] = []
    try:
        for path, data in outputs.items():
            atomic_write_bytes(path, data)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not created after all, or something else lives there now
                pass
        raise


@guarded
def gate(
    report: Annotated[Path, typer.Argument(metavar="REPORT", help="report.json, or the folder that holds it.")],
    policy: Annotated[Path, typer.Option("--policy", "-p", help="Policy YAML to judge the report under.")],
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write JUnit XML here.")] = None,
    sarif: Annotated[Path | None, typer.Option("--sarif", help="Also write SARIF 2.1.0 here.")] = None,
) -> None:
    """Re-apply a policy to an audit report; exit 0 pass, 1 policy failed, 2 bad input."""
    if junit is not None and sarif is not None and junit.resolve() == sarif.resolve():
        raise fail_usage(f"--junit and --sarif name the same file: {junit}")
    loaded_policy = load_policy(policy)
    gated, verdict = gate_report(read_report(report), loaded_policy)
    write_outputs(render_outputs(gated, verdict, junit=junit, sarif=sarif))
    render_report(gated, verdict)
    raise typer.Exit(EXIT_PASS if verdict.verdict == "pass" else EXIT_FAIL)


def register(app: typer.Typer) -> None:
    """Add ``guard gate`` to the ``guard`` app."""
    app.command("gate")(gate)
