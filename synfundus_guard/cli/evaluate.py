"""``guard evaluate``: fidelity and utility of a release against real images, written to ``OUT/fidelity.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import EXIT_PASS, fail_usage, guarded
from .progress import RichProgressObserver, console


def parse_label_names(text: str | None) -> tuple[str, ...]:
    """``"dr_grade, amd"`` -> ``("dr_grade", "amd")``; a usage error when a name repeats."""
    names = tuple(part.strip() for part in (text or "").split(",") if part.strip())
    if len(set(names)) != len(names):
        raise fail_usage(f"--labels names a column twice: {text!r}")
    return names


@guarded
def evaluate(
    release: Path = typer.Option(..., "--release", help="Folder of synthetic images (a release)."),
    real: Path = typer.Option(..., "--real", help="Real images of patients the model never saw (with labels.csv "
                              "for --labels)."),
    out: Path = typer.Option(..., "--out", help="Folder for fidelity.json (public: aggregate numbers only)."),
    train: Optional[Path] = typer.Option(None, "--train", help="The model's training images (private): "
                                         "authenticity, and the real training set of the utility test."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Label columns to test, e.g. dr_grade,amd."),
    features: str = typer.Option("stats", "--features", help="Feature extractor: 'stats' (built in, no weights), "
                                 "torchvision:ARCH:CHECKPOINT_PATH or openclip:ARCH:CHECKPOINT_PATH."),
    bootstrap: int = typer.Option(200, "--bootstrap", min=0, max=10000, help="Bootstrap resamples for the CIs."),
    workers: int = typer.Option(0, "--workers", min=0, max=1024, help="Feature processes (0: one per core)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and the classifiers."),
) -> None:
    """Measure whether RELEASE is worth using: FD, KD, precision, recall, density, coverage, authenticity, and
    with --labels, label consistency and train-on-synthetic/test-on-real AUROC. Exit 0, or 2 on bad input."""
    from ..fidelity.evaluate import EvaluateOptions, check_out, evaluate_release_fidelity, write_fidelity
    from .render_fidelity import render_fidelity

    check_out(out)
    options = EvaluateOptions(features=features, labels=parse_label_names(labels), n_boot=bootstrap, seed=seed,
                              workers=workers)
    with RichProgressObserver() as progress:
        doc = evaluate_release_fidelity(release_dir=release, real_dir=real, train_dir=train, options=options,
                                        progress=progress)
    path = write_fidelity(out, doc)
    render_fidelity(doc, console=console)
    console.print(f"fidelity report: {path}", highlight=False)
    raise typer.Exit(EXIT_PASS)


def register(app: typer.Typer) -> None:
    """Add ``guard evaluate`` to the app."""
    app.command("evaluate")(evaluate)
