"""The report of a guarded generation run: what shipped, what was quarantined and why, for people.

``guard generate`` writes it beside the release (``RELEASE-report/`` unless ``--report`` says otherwise):
``report.json`` and ``report.html`` (public: released images pass; withheld ones are counted, named by their
synthetic file names, shown pixelated, with their reasons) and ``private/report.html`` (the quarantined samples
beside the training images they match, from the quarantine's private evidence). The release-level verdict is
the run's: complete, or stopped by the policy's rejection-rate limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..formats import ReportView, render_files, write_files
from ..policies.evaluate import actions_of, split_lines
from ..policies.schema import Policy
from ..release.report import write_report
from ..results import ERROR, FLAG, PASS, ImageResult, ReleaseCheck, ReleaseVerdict, Report, Status, summarize


def _statuses(lines: Sequence[str], checks: Sequence[str]) -> dict[str, str]:
    """Per check: ``error`` when it could not run, ``flag`` when it wrote a line, else ``pass``."""
    by_check, _ = split_lines(lines, checks)
    return {c: (ERROR if any("could not run" in line for line in by_check[c]) else FLAG) if c in by_check else PASS
            for c in checks}


def _accepted(name: str, entry: Mapping[str, Any], checks: Sequence[str]) -> ImageResult:
    warnings = [str(w) for w in entry.get("warnings", []) or []]
    return ImageResult(name, "pass", [], dict(entry.get("scores", {}) or {}), warnings, _statuses(warnings, checks))


def _rejected(row: Mapping[str, Any], checks: Sequence[str]) -> ImageResult:
    reasons = [str(r) for r in row.get("reasons", []) or []]
    return ImageResult(str(row["file_name"]), "fail", reasons, dict(row.get("scores", {}) or {}), [],
                       _statuses(reasons, checks))


def generation_report(*, accepted: Mapping[str, Mapping[str, Any]], rejected: Sequence[Mapping[str, Any]],
                      policy: Policy, check_fingerprints: list[dict[str, Any]], release_name: str, passed: bool,
                      message: str, calibration: Mapping[str, Any] | None = None) -> tuple[Report, ReleaseVerdict]:
    """The run as a report and a verdict (pure): released images pass, quarantined ones fail with reasons.

    ``calibration``: the holdout summary of the checks' thresholds (the page plots its histograms).
    """
    checks = [str(c.get("name")) for c in check_fingerprints]
    images = sorted([_accepted(n, e, checks) for n, e in accepted.items()] + [_rejected(r, checks) for r in rejected],
                    key=lambda img: img.file_name)
    drawn = len(images)
    rate = len(rejected) / drawn if drawn else 0.0
    limit = policy.generation.max_rejection_rate
    check = ReleaseCheck("rejection-rate", Status.PASS if passed else Status.FAIL,
                         f"{len(rejected)} of {drawn} samples quarantined ({rate:.2%}; policy limit {limit:.0%}): "
                         f"{message}")
    verdict = ReleaseVerdict(verdict="pass" if passed else "fail", violations=() if passed else (message,),
                             notes=(), image_failures=len(rejected), failed_fraction=rate, checks=(check,),
                             images=drawn, policy_name=policy.name, policy_sha256=policy.sha256,
                             actions=actions_of(policy))
    report = Report(policy=policy.fingerprint(), embedder={}, images=images, verdict=verdict.verdict,
                    summary=summarize(images), checks=check_fingerprints, violations=list(verdict.violations),
                    calibration=dict(calibration or {}),
                    release={"name": release_name, "n_images": len(accepted), "kind": "guarded generation"})
    return report, verdict


def write_generation_report(report_dir: Path, report: Report, verdict: ReleaseVerdict, *, release_dir: Path,
                            quarantine_dir: Path, evidence: Mapping[str, Any], train_dir: Path | None) -> Path:
    """Render the pages first, then write ``report.json``, the pages and the private evidence; returns the
    ``report.json`` path."""
    view = ReportView(report, verdict, release_dir=release_dir, evidence={"images": evidence},
                      train_dir=train_dir, quarantine_dir=quarantine_dir)
    pages = render_files(view, ["html"], private=True)
    path = write_report(report, report_dir, private={"images": dict(evidence)})
    write_files(report_dir, pages)
    return path
