"""Policy evaluation: turn check results into verdicts (pure functions, no terminal, no exit codes).

Checks only report scores, flags and reasons. This module is the one place that decides. Per image, the
policy's ``action`` for each check says whether a flag blocks the image or is only a warning; a check that
*errored* blocks whatever its action (fail closed: we cannot tell whether it would have flagged). Per release,
the policy's limits on the failed fraction, on membership-inference success and on differential privacy decide
whether the release may ship; every violated limit is listed, not only the first.

Reason lines are stored prefixed with their check's name (``"faces: ..."``) so that a gate can re-apply another
policy's actions to a stored report (:func:`reapply_image`) without re-running the checks. Thresholds cannot be
re-applied that way: they were calibrated under the audit's policy, and :func:`evaluate_release` says so in a
note when the two policies differ.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError
from ..results import (ERROR, FLAG, LOW_FPRS, PASS, Finding, ImageResult, ReleaseCheck, ReleaseVerdict, Report,
                       Status)
from .fidelity import fidelity_checks
from .schema import Action, Bound, FilterPolicy, GenerationPolicy, MembershipPolicy, MemorizationPolicy, Policy

IMAGE_CHECKS = ("memorization", "vessels", "text", "faces", "metadata")
"""Per-image checks a policy knows; all but ``memorization`` live under ``policy.identity``."""
MEMBERSHIP_LIMITS = (
    ("membership-auc", "auc", "max_auc", "AUC"),
    ("membership-tpr-at-1pct-fpr", "tpr_at_1pct_fpr", "max_tpr_at_1pct_fpr", "TPR at 1% FPR"),
    ("membership-tpr-at-01pct-fpr", "tpr_at_01pct_fpr", "max_tpr_at_01pct_fpr", "TPR at 0.1% FPR"),
)
"""(check name, metric key in the report, limit field of :class:`MembershipPolicy`, display name).

Every metric is lower-is-better: an attack that separates members from non-members leaks membership.
"""
_SEVERITY = {PASS: 0, FLAG: 1, ERROR: 2}


# --- per image ----------------------------------------------------------------------------------------------


def check_policy(policy: Policy, check_name: str) -> MemorizationPolicy | FilterPolicy | None:
    """The policy section that governs ``check_name``, or None for a check the policy does not know."""
    if check_name == "memorization":
        return policy.memorization
    if check_name in IMAGE_CHECKS:
        return getattr(policy.identity, check_name)
    return None


def action_for(policy: Policy, check_name: str) -> Action | None:
    """The action for a flag from ``check_name``; None when the check is disabled or unknown to the policy."""
    section = check_policy(policy, check_name)
    if section is None or not section.enabled:
        return None
    return section.action


def actions_of(policy: Policy) -> dict[str, str]:
    """``{check: "block" | "warn" | "off"}`` for every per-image check the policy knows."""
    return {name: (action.value if (action := action_for(policy, name)) else "off") for name in IMAGE_CHECKS}


def blocks(status: str, action: Action | str | None) -> bool:
    """Whether a per-check status blocks its image under ``action``.

    Only a flag can be downgraded to a warning; an error, or a status we do not know, always blocks.
    """
    return status != PASS and (status != FLAG or action == Action.BLOCK)


HARD_BLOCKS = {"text": "text.identifier"}
"""Per check, the score that blocks its image whatever the policy's action for that check when it is > 0: a
burned-in identifier of a training or holdout patient is never only a warning."""


def _hard_block(check: str, scores: dict[str, float]) -> bool:
    value = scores.get(HARD_BLOCKS.get(check, ""))
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _tag(check: str, line: str) -> str:
    return line if line.startswith((f"{check}:", f"{check} ")) else f"{check}: {line}"


def _owner(line: str, checks: Sequence[str]) -> str | None:
    owners = [c for c in checks if line.startswith((f"{c}:", f"{c} "))]
    return max(owners, key=len) if owners else None


def split_lines(lines: Sequence[str], checks: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Group reason or warning lines by the check named at their start; returns (by check, unattributed)."""
    by_check: dict[str, list[str]] = {}
    loose: list[str] = []
    for line in lines:
        owner = _owner(line, checks)
        (by_check.setdefault(owner, []) if owner else loose).append(line)
    return by_check, loose


def _decide(file_name: str, statuses: dict[str, str], lines: dict[str, list[str]], scores: dict[str, float],
            policy: Policy) -> ImageResult:
    reasons: list[str] = []
    warnings: list[str] = []
    for check, status in statuses.items():
        if status == PASS:
            continue
        default = "flagged" if status == FLAG else "check could not run" if status == ERROR else f"status {status!r}"
        text = lines.get(check) or [f"{check}: {default}"]
        hard = status == FLAG and _hard_block(check, scores)
        (reasons if hard or blocks(status, action_for(policy, check)) else warnings).extend(text)
    return ImageResult(file_name=file_name, verdict="fail" if reasons else "pass", reasons=reasons,
                       scores=scores, warnings=warnings, checks=dict(statuses))


def image_result(file_name: str, findings: Sequence[Finding], policy: Policy) -> ImageResult:
    """Decide one image from its findings (one per check) under ``policy``.

    The image fails when a check whose action is ``block`` flagged it, when a flag carries its check's
    :data:`HARD_BLOCKS` score (a burned-in identifier), or when any check errored. Flags from
    ``warn`` checks, and from checks the policy disables or does not know, become warnings. Reasons are
    prefixed with the check name; scores of all findings are merged.
    """
    statuses: dict[str, str] = {}
    lines: dict[str, list[str]] = {}
    scores: dict[str, float] = {}
    for f in findings:
        status = ERROR if f.error is not None else FLAG if f.flagged else PASS
        # Two findings from one check: keep the worse status.
        statuses[f.check] = max(statuses.get(f.check, PASS), status, key=_SEVERITY.__getitem__)
        if f.flagged or f.error is not None:
            text = f.reasons or ((f"check could not run: {f.error}",) if f.error is not None else ())
            lines.setdefault(f.check, []).extend(_tag(f.check, r) for r in text)
        scores.update(f.scores)
    return _decide(file_name, statuses, lines, scores, policy)


def reapply_image(result: ImageResult, policy: Policy) -> ImageResult:
    """Recompute an image's verdict, reasons and warnings from its per-check statuses under ``policy``.

    Reason texts are kept and moved between ``reasons`` and ``warnings`` as the new actions say. A reason that
    names no check stays a reason (fail closed); a result without per-check statuses is returned unchanged.
    """
    if not result.checks:
        return copy.deepcopy(result)
    names = list(result.checks)
    by_check, loose_reasons = split_lines(result.reasons, names)
    warned, loose_warnings = split_lines(result.warnings, names)
    for check, text in warned.items():
        by_check.setdefault(check, []).extend(text)
    new = _decide(result.file_name, dict(result.checks), by_check, dict(result.scores), policy)
    new.reasons.extend(loose_reasons)
    new.warnings.extend(loose_warnings)
    new.verdict = "fail" if new.reasons else "pass"
    return new


# --- per release --------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _failed_fraction(report: Report, policy: Policy) -> tuple[ReleaseCheck, int, float]:
    n = len(report.images)
    failures = sum(1 for img in report.images if img.verdict != "pass")
    fraction = failures / n if n else 0.0
    limit = policy.max_failed_fraction
    text = f"{failures} of {n} images failed ({fraction:.2%}; policy limit {limit:.2%})"
    return ReleaseCheck("failed-fraction", Status.FAIL if fraction > limit else Status.PASS, text), failures, fraction


def _coverage(report: Report, policy: Policy, notes: list[str]) -> list[ReleaseCheck]:
    """A check the policy enables fails the release when the audit did not run it on every image."""
    out: list[ReleaseCheck] = []
    n = len(report.images)
    for name in IMAGE_CHECKS:
        if action_for(policy, name) is None or n == 0:
            continue
        missing = sum(1 for img in report.images if name not in img.checks)
        if missing == n:  # fail closed: a check the policy requires but nobody ran cannot vouch for the release
            text = f"the policy enables the {name} check but the audit did not run it"
            out.append(ReleaseCheck(name, Status.FAIL, text, group="checks"))
        elif missing:
            text = f"the {name} check did not run on {missing} of {n} images"
            out.append(ReleaseCheck(name, Status.FAIL, text, group="checks"))
    return out


def _attack_results(sections: list[Any]) -> list[tuple[str, Any]]:
    """(label, metrics) for every attack at every level; raises ValueError on a malformed section."""
    out: list[tuple[str, Any]] = []
    for sec in sections:
        if not isinstance(sec, Mapping) or not isinstance(sec.get("attacks"), Mapping):
            raise ValueError("expected {'attacks': {name: metrics}, 'level': ...}")
        level = sec.get("level")
        for name, metrics in sec["attacks"].items():
            out.append((f"{name}, {level} level" if level else str(name), metrics))
    return out


def auc_null_halfwidth(n_members: int, n_nonmembers: int) -> float:
    """Half-width of the 95 % range of an AUC measured on sets of these sizes when the attack is pure chance:
    ``1.96 * sqrt((m + n + 1) / (12 m n))``, the exact null variance of the Mann-Whitney statistic (no ties)."""
    m, n = max(int(n_members), 1), max(int(n_nonmembers), 1)
    return 1.96 * math.sqrt((m + n + 1) / (12 * m * n))


def _power_problem(key: str, limit: float, metrics: Mapping) -> str | None:
    """Why this attack result cannot support a verdict on ``limit`` at its set sizes (None: it can).

    AUC: chance and the limit must be farther apart than chance's own 95 % spread at these sizes (otherwise a
    release at chance could land over the limit, and one at the limit under it, by sampling alone). TPR at an
    FPR: that FPR must be resolvable, i.e. at least one non-member per ``1 / FPR``.
    """
    m, n = _number(metrics.get("n_members")), _number(metrics.get("n_nonmembers"))
    if m is None or n is None:
        return "set sizes missing"
    if key == "auc":
        hw = auc_null_halfwidth(int(m), int(n))
        if hw > limit - 0.5:
            return (f"{int(m)} members / {int(n)} non-members: chance alone spreads the AUC by +-{hw:.3f}, more "
                    f"than the limit's margin over chance ({limit - 0.5:.3f})")
        return None
    fpr = LOW_FPRS.get(key)
    if fpr is not None and n * fpr < 1:
        return f"{int(n)} non-members cannot resolve an FPR of {fpr:g} (>= {math.ceil(1 / fpr)} needed)"
    return None


def _membership_limit(attacks: list[tuple[str, Any]], name: str, key: str, display: str, limit: float,
                      bound: Bound, notes: list[str]) -> ReleaseCheck:
    """Judge one limit over every attack result (attack x level) that measured it.

    The limit is compared with each result's ``bound`` value. With ``bound: point`` a result must also have
    the power to judge the limit (:func:`_power_problem`): an underpowered image-level AUC fails the release
    closed (the test could not have told a leaking release from a clean one); other underpowered results are
    listed as not judged. (A membership section with no attack at all fails in :func:`_membership`.)
    """
    which = "point estimate" if bound is Bound.POINT else f"{bound.value} bound"
    values: list[tuple[float, str]] = []
    unusable: list[str] = []
    weak: list[str] = []
    blocking: list[str] = []
    for label, metrics in attacks:
        if not isinstance(metrics, Mapping) or key not in metrics:
            continue
        metric = metrics[key]
        value = _number(metric.get(bound.value)) if isinstance(metric, Mapping) else None
        if value is None:
            unusable.append(label)
            continue
        problem = _power_problem(key, limit, metrics) if bound is Bound.POINT else None
        if problem is None:
            values.append((value, label))
        elif key == "auc" and label.endswith("image level"):
            blocking.append(f"{label}: {problem}")
        else:
            weak.append(f"{label}: {problem}")
    if unusable:
        return ReleaseCheck(name, Status.FAIL, f"membership {display}: no usable {bound.value} value for attack "
                            f"{'; '.join(unusable)} (failing closed)")
    if weak:
        notes.append(f"membership {display} not judged for {len(weak)} underpowered result(s): {'; '.join(weak)}")
    if blocking:
        return ReleaseCheck(name, Status.FAIL, f"membership {display}: the test is underpowered "
                            f"({'; '.join(blocking)}); audit with more training and holdout images, or disable "
                            "membership in the policy to opt out explicitly (failing closed)")
    if not values:
        if weak:
            text = f"membership {display} not judged: every result is underpowered at these set sizes"
        else:
            text = f"membership {display} was not measured by any attack; limit {limit:g} not checked"
            notes.append(text)
        return ReleaseCheck(name, Status.SKIPPED, text)
    worst, label = max(values)
    over = sum(1 for v, _ in values if v > limit)
    if not over:
        return ReleaseCheck(name, Status.PASS, f"membership {display} {which} {worst:.3f} (worst: {label}) "
                            f"within limit {limit:g}")
    more = f"; {over} of {len(values)} attack results exceed it" if over > 1 else ""
    return ReleaseCheck(name, Status.FAIL, f"membership {display} {which} {worst:.3f} (attack {label}) "
                        f"exceeds the policy limit {limit:g}{more}")


def _membership(section: Any, mp: MembershipPolicy, notes: list[str]) -> list[ReleaseCheck]:
    def all_limits(why: str) -> list[ReleaseCheck]:
        return [ReleaseCheck(name, Status.SKIPPED, why) for name, *_ in MEMBERSHIP_LIMITS]

    if not mp.enabled:
        return all_limits("membership limits disabled by the policy")
    if not section:  # fail closed: the policy asks for evidence the audit did not produce
        why = ("membership inference was not run (an audit runs it given --train and --holdout), but the policy "
               "enables it; failing closed (disable membership in the policy to opt out explicitly)")
        return [ReleaseCheck("membership", Status.FAIL, why), *all_limits("not evaluated: membership not run")]
    sections = section if isinstance(section, list) else [section]
    errors = [str(s["error"]) for s in sections if isinstance(s, Mapping) and s.get("error")]
    try:
        attacks = [] if errors else _attack_results(sections)
    except ValueError as exc:
        errors = [f"malformed results ({exc})"]
    if errors:  # fail closed: one violation, the limits themselves could not be judged
        failed = ReleaseCheck("membership", Status.FAIL, f"membership inference could not run: {'; '.join(errors)}")
        return [failed, *all_limits("not evaluated: membership inference failed")]
    if not attacks:  # e.g. a release too small for the black-box attacks and no model given
        why = [str(n) for sec in sections if isinstance(sec, Mapping) for n in sec.get("notes") or ()][:1]
        text = ("membership inference ran no attack" + (f" ({why[0]})" if why else "") + ", but the policy enables "
                "it; failing closed (disable membership in the policy to opt out explicitly)")
        return [ReleaseCheck("membership", Status.FAIL, text), *all_limits("not evaluated: no attack ran")]
    out = []
    for name, key, field_name, display in MEMBERSHIP_LIMITS:
        limit = getattr(mp, field_name)
        if limit is None:
            out.append(ReleaseCheck(name, Status.SKIPPED, f"no {display} limit in the policy"))
        else:
            out.append(_membership_limit(attacks, name, key, display, limit, mp.bound, notes))
    return out


def _differential_privacy(model: Any, gp: GenerationPolicy) -> ReleaseCheck:
    name, limit = "differential-privacy", gp.max_epsilon
    if not gp.require_dp and limit is None:
        return ReleaseCheck(name, Status.SKIPPED, "not required by the policy")
    wanted = "DP required" if gp.require_dp else f"the policy sets max_epsilon {limit:g}"
    if not isinstance(model, Mapping):
        return ReleaseCheck(name, Status.FAIL, f"{wanted} but the report carries no model information")
    epsilon = _number(model.get("epsilon"))
    if model.get("dp") is not True:
        problem = f"{wanted} but the model was not trained with differential privacy"
    elif limit is not None and epsilon is None:
        problem = f"the policy sets max_epsilon {limit:g} but the model's epsilon is unknown"
    elif limit is not None and epsilon > limit:
        problem = f"model epsilon {epsilon:g} exceeds the policy's max_epsilon {limit:g}"
    else:
        return ReleaseCheck(name, Status.PASS, f"trained with DP (epsilon {model.get('epsilon')}, delta "
                            f"{model.get('delta')})")
    return ReleaseCheck(name, Status.FAIL, problem)


def evaluate_release(report: Report, policy: Policy) -> ReleaseVerdict:
    """Judge a whole release under ``policy``, from its (already decided) image verdicts and release checks.

    Returns a :class:`ReleaseVerdict` listing every violation. A release-level check the policy wants but the
    report does not carry (membership inference not run) is a note and a skipped check, not a violation; a
    check that errored or carries unusable values is a violation (fail closed).
    """
    notes: list[str] = []
    audited = report.policy.get("sha256")
    if policy.sha256 and audited != policy.sha256:
        audit_name = report.policy.get("name", "?")
        notes.append(f"the audit ran under policy {audit_name!r} ({str(audited)[:12]}), not {policy.name!r} "
                     f"({policy.sha256[:12]}): per-image thresholds are those calibrated under the audit's policy")
    if not report.images:
        notes.append("the report lists no images")
    fraction_check, failures, fraction = _failed_fraction(report, policy)
    checks = [fraction_check, *_coverage(report, policy, notes)]
    checks += _membership(report.release_checks.get("membership"), policy.membership, notes)
    checks.append(_differential_privacy(report.release_checks.get("model"), policy.generation))
    checks += fidelity_checks(report.release_checks.get("fidelity"), policy.fidelity, notes)
    violations = tuple(c.message for c in checks if c.status is Status.FAIL)
    return ReleaseVerdict(
        verdict="fail" if violations else "pass", violations=violations, notes=tuple(notes),
        image_failures=failures, failed_fraction=fraction, checks=tuple(checks), images=len(report.images),
        policy_name=policy.name, policy_sha256=policy.sha256, actions=actions_of(policy),
    )


# --- gate ---------------------------------------------------------------------------------------------------


def _count_problems(report: Report) -> list[str]:
    """The audit records how many images it checked twice (summary, release); a list that disagrees was edited."""
    n = len(report.images)
    problems = []
    for section in ("summary", "release"):
        value = getattr(report, section)
        claimed = value.get("n_images") if isinstance(value, Mapping) else None
        if claimed is not None and claimed != n:
            problems.append(f"{section}.n_images is {claimed!r} but the report lists {n} images (was it edited?)")
    return problems


def _shape_problems(report: Report) -> list[str]:
    problems = []
    for key in ("policy", "release_checks"):
        if not isinstance(getattr(report, key), Mapping):
            problems.append(f"{key} must be a mapping")
    if not isinstance(report.images, list):
        return problems + ["images must be a list"]
    problems += _count_problems(report)
    for i, img in enumerate(report.images):
        where = f"images[{i}]"
        if not isinstance(img.file_name, str) or not isinstance(img.verdict, str):
            problems.append(f"{where}: file_name and verdict must be strings")
        if not all(isinstance(x, list) and all(isinstance(s, str) for s in x) for x in (img.reasons, img.warnings)):
            problems.append(f"{where}: reasons and warnings must be lists of strings")
        if not isinstance(img.scores, Mapping) or any(_number(v) is None for v in img.scores.values()):
            problems.append(f"{where}: scores must map names to finite numbers")
        if not isinstance(img.checks, Mapping) or any(not isinstance(v, str) for v in img.checks.values()):
            problems.append(f"{where}: checks must map check names to statuses")
    return problems


def gate_report(report: Report, policy: Policy) -> tuple[Report, ReleaseVerdict]:
    """Re-apply ``policy`` to a stored report: image actions first, then the release limits.

    Returns a new report (images re-decided, ``verdict`` and ``violations`` replaced) and the release verdict.
    Raises :class:`InputError` when the report's fields have the wrong types.
    """
    problems = _shape_problems(report)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise InputError("malformed report: " + "; ".join(problems[:3]) + more)
    gated = dataclasses.replace(report, images=[reapply_image(img, policy) for img in report.images])
    verdict = evaluate_release(gated, policy)
    gated.verdict = verdict.verdict
    gated.violations = list(verdict.violations)
    return gated, verdict
