"""``guard gate``: judge a stored audit report under a policy, for CI.

Parses arguments, calls :func:`~synfundus_guard.policies.evaluate.gate_report`, renders, writes the CI files
asked for, and exits 0 (pass), 1 (policy failed) or 2 (missing or malformed report or policy).

The CI files are all-or-nothing: every one is rendered to bytes before the first is written, and when a later
write fails the files this run already wrote are removed, so CI never reads a JUnit file of a run whose SARIF
(and exit code) say something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..formats import OutputFormat, ReportView, get_format
from ..fsutil import atomic_write_bytes
from ..policies.evaluate import gate_report
from ..policies.schema import load_policy
from ..release.report import read_report
from .errors import EXIT_FAIL, EXIT_PASS, fail_usage, guarded
from .render import render_report


def render_outputs(view: ReportView, *, named: dict[str, Path | None], formats: list[OutputFormat],
                   out: Path | None) -> dict[Path, bytes]:
    """The bytes of every file asked for, keyed by path (nothing is written here).

    ``named``: format name -> explicit path (``--junit``, ``--sarif``, ``--html``); ``formats`` go to
    ``out/<the format's file name>``.
    """
    targets = [(f"--{name}", name, Path(path)) for name, path in named.items() if path is not None]
    targets += [(f"--format {fmt.value}", fmt.value, Path(out) / get_format(fmt).file_name)
                for fmt in dict.fromkeys(formats) if out is not None]
    seen: dict[Path, str] = {}
    for label, _, path in targets:
        if (earlier := seen.setdefault(path.absolute(), label)) != label:
            raise fail_usage(f"{earlier} and {label} name the same file: {path}")
    return {path: get_format(name).render(view) for _, name, path in targets}


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
    policy: Annotated[Path, typer.Option("--policy", "-p", help="Policy file, or a shipped policy by name (public, "
                                         "internal), to judge the report under.")],
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write JUnit XML here.")] = None,
    sarif: Annotated[Path | None, typer.Option("--sarif", help="Also write SARIF 2.1.0 here.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the public HTML report here.")] = None,
    formats: Annotated[list[OutputFormat] | None, typer.Option(
        "--format", "-f", help="Also write this format to --out as report.<ext> (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the --format files.")] = None,
    release: Annotated[Path | None, typer.Option("--release", help="The audited release folder: the HTML "
                                                 "report then shows thumbnails of flagged images.")] = None,
    fidelity: Annotated[Path | None, typer.Option("--fidelity", help="fidelity.json of guard evaluate: judged "
                                                  "under the policy's fidelity limits.")] = None,
) -> None:
    """Re-apply a policy to an audit report; exit 0 pass, 1 policy failed, 2 bad input."""
    if formats and out is None:
        raise fail_usage("--format writes into a folder: give --out DIR")
    loaded_policy = load_policy(policy)
    stored = read_report(report)
    if fidelity is not None:
        from ..fidelity.evaluate import read_fidelity

        stored.release_checks["fidelity"] = read_fidelity(fidelity)
    gated, verdict = gate_report(stored, loaded_policy)
    if release is not None and not release.is_dir():
        raise fail_usage(f"--release {release} is not a folder")
    view = ReportView(gated, verdict, release_dir=release)
    outputs = render_outputs(view, named={"junit": junit, "sarif": sarif, "html": html}, formats=formats or [],
                             out=out)
    write_outputs(outputs)
    render_report(gated, verdict)
    raise typer.Exit(EXIT_PASS if verdict.verdict == "pass" else EXIT_FAIL)


def register(app: typer.Typer) -> None:
    """Add ``guard gate`` to the ``guard`` app."""
    app.command("gate")(gate)
