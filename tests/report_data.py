"""Reports built the way ``guard audit`` leaves them, from per-check statuses (shared by the format tests)."""

from __future__ import annotations

from synfundus_guard.audit.base import Finding, failed_closed
from synfundus_guard.policies.evaluate import IMAGE_CHECKS, evaluate_release, image_result
from synfundus_guard.policies.schema import load_policy
from synfundus_guard.results import Report

PUBLIC = load_policy("public")
INTERNAL = load_policy("internal")


def image(name: str, policy=PUBLIC, **statuses: str):
    found = []
    for check in IMAGE_CHECKS:
        status = statuses.get(check, "pass")
        if status == "error":
            found.append(failed_closed(check, "OSError: cannot read"))
        else:
            found.append(Finding(check, status == "flag", ("score 0.97 > 0.90",) if status == "flag" else (),
                                 {f"{check}.score": 0.97 if status == "flag" else 0.1}))
    return image_result(name, found, policy)


def audited(images, policy=PUBLIC, **release_checks) -> Report:
    """A report as ``guard audit`` leaves it: image verdicts and the release verdict under ``policy``."""
    report = Report(policy=policy.fingerprint(), embedder={"name": "pixel"}, images=images, verdict="pending",
                    release_checks=dict(release_checks))
    verdict = evaluate_release(report, policy)
    report.verdict, report.violations = verdict.verdict, list(verdict.violations)
    return report


def membership(auc_upper: float, point: float = 0.5) -> dict:
    return {"level": "patient", "attacks": {"loss": {"auc": {"point": point, "lower": 0.45, "upper": auc_upper},
                                                     "tpr_at_1pct_fpr": {"point": 0.01, "lower": 0, "upper": 0.02},
                                                     "n_members": 200, "n_nonmembers": 200}}}
