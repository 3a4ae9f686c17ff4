"""Judge a release's fidelity section (``report.release_checks["fidelity"]``) against a policy's limits (pure).

One release-level check per limit the policy sets (``fidelity-coverage``, ``fidelity-fd`` ...; per label for
``min_label_consistency``). With no limit set and ``enabled: false`` nothing is judged and nothing is added, so
reports of policies without a fidelity section read exactly as before. A limit whose metric the report lacks, or
carries as something other than a number, fails closed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..results import ReleaseCheck, Status
from .schema import FidelityPolicy

LIMITS = (
    ("fd", "max_fd", False), ("kd", "max_kd", False), ("precision", "min_precision", True),
    ("recall", "min_recall", True), ("density", "min_density", True), ("coverage", "min_coverage", True),
    ("authenticity", "min_authenticity", True),
)
"""(metric key in ``fidelity.json``'s ``metrics``, limit field of :class:`FidelityPolicy`, higher is better)."""
_HOW = "guard audit --evaluate --real HOLDOUT, or guard gate --fidelity FIDELITY_JSON"


def _value(metric: Any, higher: bool, conservative: bool) -> float | None:
    if not isinstance(metric, Mapping):
        return None
    key = ("lower" if higher else "upper") if conservative else "point"
    value = metric.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _judge(name: str, display: str, metric: Any, limit: float, higher: bool, fp: FidelityPolicy) -> ReleaseCheck:
    value = _value(metric, higher, fp.conservative)
    which = ("CI lower bound" if higher else "CI upper bound") if fp.conservative else "estimate"
    if value is None:
        return ReleaseCheck(name, Status.FAIL, f"{display}: not in the fidelity results (policy "
                            f"{'minimum' if higher else 'maximum'} {limit:g}); failing closed", "fidelity")
    ok = value >= limit if higher else value <= limit
    relation = ("at least" if ok else "below") if higher else ("at most" if ok else "above")
    message = f"{display} {value:.4g} ({which}) {relation} the policy {'minimum' if higher else 'maximum'} {limit:g}"
    return ReleaseCheck(name, Status.PASS if ok else Status.FAIL, message, "fidelity")


def fidelity_checks(section: Any, fp: FidelityPolicy, notes: list[str]) -> list[ReleaseCheck]:
    """The release-level fidelity checks (see the module docstring); notes are appended to ``notes``."""
    limits = [(key, getattr(fp, field), higher) for key, field, higher in LIMITS if getattr(fp, field) is not None]
    wants_labels = fp.min_label_consistency is not None
    if section is None:
        if fp.enabled:
            return [ReleaseCheck("fidelity", Status.FAIL, f"fidelity was not measured ({_HOW}) but the policy "
                                 "requires it; failing closed", "fidelity")]
        if limits or wants_labels:
            notes.append(f"the policy sets fidelity limits but the report has no fidelity results ({_HOW})")
        return []
    if not isinstance(section, Mapping) or not isinstance(section.get("metrics"), Mapping):
        return [ReleaseCheck("fidelity", Status.FAIL, "the fidelity results are malformed; failing closed",
                             "fidelity")]
    metrics = section["metrics"]
    checks = [_judge(f"fidelity-{key}", key.upper() if key in ("fd", "kd") else key, metrics.get(key), limit,
                     higher, fp) for key, limit, higher in limits]
    if wants_labels:
        labels = section.get("labels") if isinstance(section.get("labels"), Mapping) else {}
        if not labels:
            checks.append(ReleaseCheck("fidelity-label-consistency", Status.FAIL, "no label was tested (guard "
                                       "evaluate --labels ...) but the policy sets min_label_consistency",
                                       "fidelity"))
        for label, entry in labels.items():
            metric = ((entry or {}).get("label_consistency") or {}).get("synthetic", {}).get("balanced_accuracy") \
                if isinstance(entry, Mapping) else None
            checks.append(_judge(f"fidelity-label-consistency-{label}", f"label consistency of {label!r}", metric,
                                 float(fp.min_label_consistency), True, fp))
    for warning in metrics.get("warnings", []) or []:
        notes.append(f"fidelity: {warning}")
    return checks
