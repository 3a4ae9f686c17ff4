"""``guard audit``: audit a folder of synthetic images against a private training set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..formats import OutputFormat
from ..policies.schema import load_policy
from .errors import EXIT_FAIL, EXIT_PASS, fail_usage, guarded
from .progress import RichProgressObserver, console


@guarded
def audit(
    release: Path = typer.Option(..., "--release", help="Folder of synthetic images to audit."),
    policy: Path = typer.Option(..., "--policy", help="Policy file, or a shipped policy by name: public, internal."),
    out: Path = typer.Option(..., "--out", help="Report folder: report.json (public) and private/ (evidence)."),
    train: Optional[Path] = typer.Option(None, "--train", help="Private training images (with labels.csv)."),
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="Holdout images of other patients."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder (private): white-box membership "
                                         "attacks and its DP facts."),
    embedder: str = typer.Option("pixel", "--embedder", help="'pixel' (default, offline) or openclip:ARCH:CKPT."),
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder to use or build (private)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature/index cache (private)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, max=4096, help="Images per batch."),
    manifest: bool = typer.Option(True, "--manifest/--no-manifest", help="Write manifest.json into the release."),
    workers: int = typer.Option(0, "--workers", min=0, max=1024, help="Processes that check images: 0 = one "
                                "per core when the release has >= 64 images per core, 1 = this process."),
    engine: str = typer.Option("local", "--engine", help="'local' (processes on this machine) or 'ray' (a Ray "
                               "cluster; pip install 'synfundus-guard[ray]')."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the cluster's HOST:PORT "
                                          "(default: start a local Ray instance)."),
    formats: Optional[list[OutputFormat]] = typer.Option(None, "--format", "-f", help="Also write this report "
                                                         "format into --out (repeatable); report.json and the HTML "
                                                         "pages are always written."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Also measure fidelity and utility against the "
                                  "holdout (as guard evaluate) and judge the policy's fidelity limits."),
    labels: Optional[str] = typer.Option(None, "--labels", help="With --evaluate: label columns to test, e.g. "
                                         "dr_grade,amd."),
    device: str = typer.Option("cpu", "--device", help="Where the memorization and vessels checks align images: "
                               "cpu, cuda, cuda:N, auto (cuda when torch sees a GPU) or torch-cpu (the GPU code "
                               "path on the CPU, to compare). GPU and CPU scores differ by rounding (within "
                               "0.005)."),
) -> None:
    """Audit RELEASE: memorization (FAISS kNN + aligned pixel check) and identity checks under a policy.

    Exit 0 when the policy passes, 1 when a leak is found, 2 on bad input.
    """
    from ..audit.runner import audit_release
    from .render import render_report

    pol = load_policy(policy)
    if manifest:
        from ..release.signing import env_signing_key

        env_signing_key()  # a bad GUARD_SIGNING_KEY fails now, not after the checks when the release is sealed
    if labels and not evaluate:
        raise fail_usage("--labels is for --evaluate")
    options = None
    if evaluate:
        from ..fidelity.evaluate import EvaluateOptions
        from .evaluate import parse_label_names

        options = EvaluateOptions(labels=parse_label_names(labels), n_boot=pol.membership.bootstrap,
                                  workers=workers)
    with RichProgressObserver() as progress:
        result = audit_release(
            release_dir=release, out_dir=out, policy=pol, train_dir=train, holdout_dir=holdout, model_dir=model,
            embedder=embedder, index_dir=index, cache_dir=cache_dir, batch_size=batch_size,
            write_release_manifest=manifest, workers=workers, engine=engine, address=address,
            formats=[f.value for f in formats or []], evaluate=options, device=device, progress=progress,
        )
    render_report(result.report, result.verdict, console=console)
    folder = result.report_path.parent
    console.print(f"report: {result.report_path}  page: {folder / 'report.html'}  (private evidence and page: "
                  f"{folder / 'private'})", highlight=False)
    raise typer.Exit(EXIT_PASS if result.verdict.verdict == "pass" else EXIT_FAIL)


def register(app: typer.Typer) -> None:
    """Add ``guard audit`` to the app."""
    app.command("audit")(audit)
