"""``guard generate``: sample a release through the guarded sampler (checks, quarantine, manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..policies.schema import Policy, load_policy, parse_policy
from ..progress import Progress
from .errors import EXIT_FAIL, EXIT_PASS, fail_usage, guarded
from .progress import RichProgressObserver, console

BUILTIN_POLICY = "name: builtin-default\ndescription: schema defaults (memorization blocks, rejection rate <= 0.5)\n"
"""Used when no --policy is given: every limit at the schema's default."""


def parse_labels(text: str | None) -> dict[str, str]:
    """``"dr_grade=2,amd=0"`` -> ``{"dr_grade": "2", "amd": "0"}``; raises a usage exit on malformed text."""
    labels: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise fail_usage(f"--labels must look like column=value[,column=value], got {text!r}")
        if key.strip() in labels:
            raise fail_usage(f"--labels names {key.strip()!r} twice")
        labels[key.strip()] = value.strip()
    return labels


def build_checks(model_dir: Path, policy: Policy, progress: Progress, device: str | None = None) -> list:
    """The per-image checks for ``policy`` against the model's training data (aligning on the torch ``device``
    where given: sampling on a GPU aligns there too).

    SINGLE CALL SITE for the audit wiring: ``synfundus_guard.audit.runner.build_checks_for_model`` builds the
    FAISS index from the training split named in the model's card and calibrates on its holdout split.
    """
    from ..audit.runner import build_checks_for_model

    return list(build_checks_for_model(model_dir=model_dir, policy=policy, progress=progress, device=device))


@guarded
def generate(
    out: Path = typer.Option(..., "--out", help="Release folder to write (or resume)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder (default: the built-in phantom model)."),
    n: int = typer.Option(100, "--n", help="Number of images to release."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Policy file, or a shipped policy by name: "
                                          "public, internal."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Conditioning labels, e.g. dr_grade=2,amd=0."),
    seed: int = typer.Option(0, help="Run seed; image i depends only on (seed, i)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images sampled and checked per batch."),
    steps: int = typer.Option(25, "--steps", help="DDIM sampling steps."),
    device: str = typer.Option("cpu", "--device", help="Where sampling runs: cpu, cuda or auto (cuda when torch "
                                                       "sees a GPU); on a GPU the memorization and vessels checks "
                                                       "align images there too. An image's seed reproduces it on "
                                                       "the same kind of device; GPU and CPU differ by rounding."),
    quarantine: Optional[Path] = typer.Option(None, "--quarantine", help="Private folder for rejected samples "
                                              "(default: OUT-quarantine beside the release)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Report folder: report.json and report.html "
                                          "(public), private/ (default: OUT-report beside the release)."),
    select_confident: Optional[float] = typer.Option(
        None, "--select-confident", metavar="P",
        help="Release only samples whose --labels a classifier fitted on the model's training images confirms "
             "with probability >= P (0 < P <= 1); unconfirmed ones are dropped, neither released nor quarantined. "
             "Needs --labels."),
) -> None:
    """Generate N images that pass the policy's checks; rejected ones go to the quarantine with reasons.

    Exit 0 when the release is complete, 1 when the policy stops it (rejection rate exceeded, DP required, too
    few samples confirmed by --select-confident),
    2 on bad input. Re-running the same command resumes an interrupted run.
    """
    from ..generation.model import DEFAULT_MODEL_DIR, load_model
    from ..generation.sample import resolve_labels
    from ..generation.sampler import default_report_dir, generate_release
    from ..generation.select import ConfidentSelector

    if n < 1 or batch_size < 1 or steps < 1:
        raise fail_usage(f"--n, --batch-size and --steps must be at least 1 (got {n}, {batch_size}, {steps})")
    wanted = parse_labels(labels)
    from ..release.signing import env_signing_key

    env_signing_key()  # a bad GUARD_SIGNING_KEY fails now, not after sampling when the release is sealed
    pol = load_policy(policy) if policy is not None else parse_policy(BUILTIN_POLICY, source="<built-in>")
    loaded = load_model(model if model is not None else DEFAULT_MODEL_DIR, device=device)
    resolve_labels(loaded, wanted)  # a label the model cannot make is a usage error before any heavy work
    align = str(loaded.device) if loaded.device.type == "cuda" else None  # the checks' alignment follows sampling
    with RichProgressObserver() as progress:
        selector = None if select_confident is None else ConfidentSelector.fit(
            model=loaded, labels=list(wanted), threshold=select_confident, progress=progress)
        result = generate_release(model_dir=loaded.path, model=loaded, n=n, out_dir=out, quarantine_dir=quarantine,
                                  checks=lambda: build_checks(loaded.path, pol, progress, align), policy=pol, seed=seed,
                                  labels=wanted, batch_size=batch_size, steps=steps,
                                  report_dir=report if report is not None else default_report_dir(out),
                                  select=selector, progress=progress)
    console.print(result.message, highlight=False)
    if result.reasons:
        console.print("rejections by check: " + ", ".join(f"{k} {v}" for k, v in sorted(result.reasons.items())),
                      highlight=False)
    if selector is not None:
        typer.echo(f"not confirmed by the label classifier (--select-confident {selector.threshold:g}): "
                   f"{result.unselected} sample(s), neither released nor quarantined")
    if result.manifest is not None:
        typer.echo(f"release: {result.release_dir}  manifest: {result.manifest}")
    if result.rejected:
        typer.echo(f"quarantine (private): {result.quarantine_dir}")
    if result.report_dir is not None:
        typer.echo(f"report: {result.report_dir / 'report.html'}  (private page: {result.report_dir / 'private'})")
    raise typer.Exit(EXIT_PASS if result.status.passed else EXIT_FAIL)


def register(app: typer.Typer) -> None:
    """Add ``guard generate`` to the app."""
    app.command("generate")(generate)
