"""``guard demo``: the audit on built-in phantom data, with planted copies to find."""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import EXIT_FAIL, EXIT_PASS, guarded
from .progress import RichProgressObserver, console


@guarded
def demo(
    out: Path = typer.Argument(Path("demo"), help="New folder for the demo's data, release and report."),
    patients: int = typer.Option(60, "--patients", min=20, max=5000, help="Phantom patients (half train)."),
    novel: int = typer.Option(24, "--novel", min=1, max=10000, help="Novel-patient images in the release."),
    copies: int = typer.Option(6, "--copies", min=1, max=1000, help="Training-image copies planted in it."),
    size: int = typer.Option(192, "--size", min=64, max=1024, help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Audit a phantom release with planted copies: exit 0 when every copy is caught and no novel image is."""
    from ..demo import run_demo
    from .render import render_report

    with RichProgressObserver() as progress:
        res = run_demo(out, patients=patients, novel=novel, copies=copies, size=size, seed=seed, progress=progress)
    render_report(res.audit.report, res.audit.verdict, console=console)
    console.print(
        f"demo: planted {len(res.planted)} transformed copies of training images among {novel} novel-patient images; "
        f"caught {len(res.caught)}/{len(res.planted)}, false alarms {len(res.false_alarms)}"
    )
    console.print(f"release: {out / 'release'}   report: {res.audit.report_path}   private evidence: "
                  f"{res.audit.report_path.parent / 'private'}")
    raise typer.Exit(EXIT_PASS if res.ok else EXIT_FAIL)


def register(app: typer.Typer) -> None:
    """Add ``guard demo``."""
    app.command("demo")(demo)
