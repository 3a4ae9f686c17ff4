"""Policy evaluation: per-image verdicts from findings, re-applying actions, and release verdicts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from synfundus_guard.audit.base import Finding, failed_closed
from synfundus_guard.errors import InputError
from synfundus_guard.policies.evaluate import (
    IMAGE_CHECKS,
    Status,
    action_for,
    evaluate_release,
    gate_report,
    image_result,
    reapply_image,
)
from synfundus_guard.policies.schema import Action, Bound, load_policy, parse_policy
from synfundus_guard.results import ImageResult, Report

PUBLIC = load_policy("public")
INTERNAL = load_policy("internal")
NO_FACES = parse_policy("name: no-faces\nidentity: {faces: {enabled: false}}\n")


def finding(check: str, status: str = "pass") -> Finding:
    """A finding as a real check returns it: a flag with a reason and a score, or a fail-closed error."""
    if status == "error":
        return failed_closed(check, "RuntimeError: detector crashed")
    flagged = status == "flag"
    return Finding(check=check, flagged=flagged, reasons=("score 0.97 above threshold 0.90",) if flagged else (),
                   scores={f"{check}.score": 0.97 if flagged else 0.10})


def findings(**statuses: str) -> list[Finding]:
    return [finding(name, statuses.get(name, "pass")) for name in IMAGE_CHECKS]


def report_of(images: list[ImageResult], policy=PUBLIC, **release_checks) -> Report:
    """A report; unless ``membership`` is given (None: left out), a clean, powered membership section."""
    checks = {"membership": _membership(), **release_checks}
    return Report(policy=policy.fingerprint(), embedder={}, images=images, verdict="pending",
                  release_checks={k: v for k, v in checks.items() if v is not None})


UPPER = parse_policy("name: upper\nmembership: {max_auc: 0.6, max_tpr_at_1pct_fpr: 0.05, bound: upper}\n")


def sized(metrics: dict, members: int = 200, nonmembers: int = 200) -> dict:
    """An attack result with its set sizes (the power rule reads them)."""
    return {**metrics, "n_members": members, "n_nonmembers": nonmembers}


def clean(n: int, policy=PUBLIC) -> list[ImageResult]:
    return [image_result(f"img_{i:04d}.png", findings(), policy) for i in range(n)]


def ci(point: float, lower: float, upper: float) -> dict[str, float]:
    return {"point": point, "lower": lower, "upper": upper}


def check(verdict, name):
    (found,) = [c for c in verdict.checks if c.name == name]
    return found


# --- per image ----------------------------------------------------------------------------------------------


def test_action_for_known_disabled_and_unknown_checks():
    assert [action_for(PUBLIC, n) for n in IMAGE_CHECKS] == [Action.BLOCK] * 5
    assert action_for(INTERNAL, "faces") is Action.WARN
    assert action_for(NO_FACES, "faces") is None
    assert action_for(PUBLIC, "quality") is None


def test_clean_image_passes_with_merged_scores():
    result = image_result("a.png", findings(), PUBLIC)
    assert result.verdict == "pass" and result.reasons == [] and result.warnings == []
    assert result.checks == dict.fromkeys(IMAGE_CHECKS, "pass")
    assert result.scores == {f"{n}.score": 0.10 for n in IMAGE_CHECKS}


def test_blocking_flag_fails_with_prefixed_reason():
    result = image_result("a.png", findings(memorization="flag"), PUBLIC)
    assert result.verdict == "fail"
    assert result.reasons == ["memorization: score 0.97 above threshold 0.90"]
    assert result.checks["memorization"] == "flag" and result.scores["memorization.score"] == 0.97


def test_warn_flag_passes_with_warning():
    result = image_result("a.png", findings(faces="flag"), INTERNAL)
    assert result.verdict == "pass" and result.reasons == []
    assert result.warnings == ["faces: score 0.97 above threshold 0.90"]


def test_a_burned_in_identifier_blocks_even_where_text_only_warns():
    text_warns = parse_policy("name: text-warns\nidentity: {text: {action: warn}}\n")
    rows = {"text.rows": 1.0, "text.max_glyphs": 7.0}
    plain = image_result("a.png", [Finding("text", True, ("burned-in text: 1 row(s)",), rows)], text_warns)
    assert plain.verdict == "pass" and plain.warnings and not plain.reasons
    ident = Finding("text", True, ("burned-in identifier: text matches an identifier", "burned-in text: 1 row(s)"),
                    {**rows, "text.identifier": 1.0})
    result = image_result("a.png", [ident], text_warns)
    assert result.verdict == "fail" and result.reasons[0].startswith("text: burned-in identifier")
    assert reapply_image(result, text_warns).verdict == "fail", "guard gate re-judges it the same way"
    assert reapply_image(image_result("a.png", [ident], PUBLIC), text_warns).verdict == "fail"


def test_error_fails_closed_even_when_the_action_is_warn_or_the_check_is_off():
    for policy in (INTERNAL, NO_FACES):
        result = image_result("a.png", findings(faces="error"), policy)
        assert result.verdict == "fail"
        assert result.reasons == ["faces check could not run: RuntimeError: detector crashed"]
        assert result.checks["faces"] == "error"


def test_flags_from_disabled_or_unknown_checks_are_warnings_not_dropped():
    extra = Finding("quality", flagged=True, reasons=("blurry",))
    result = image_result("a.png", [*findings(faces="flag"), extra], NO_FACES)
    assert result.verdict == "pass"
    assert result.warnings == ["faces: score 0.97 above threshold 0.90", "quality: blurry"]
    errored = image_result("a.png", [Finding("quality", True, error="boom")], NO_FACES)
    assert errored.verdict == "fail" and errored.reasons == ["quality: check could not run: boom"]


def test_every_action_member_has_a_defined_effect():
    expected = {Action.BLOCK: ("fail", 1, 0), Action.WARN: ("pass", 0, 1)}
    assert set(expected) == set(Action)
    for action, (verdict, n_reasons, n_warnings) in expected.items():
        policy = parse_policy(f"name: t\nmemorization: {{action: {action.value}}}\n")
        result = image_result("a.png", findings(memorization="flag"), policy)
        assert (result.verdict, len(result.reasons), len(result.warnings)) == (verdict, n_reasons, n_warnings)


def test_all_reasons_of_all_blocking_checks_are_listed():
    result = image_result("a.png", findings(memorization="flag", text="error", vessels="flag"), PUBLIC)
    assert [r.split(":")[0].split(" ")[0] for r in result.reasons] == ["memorization", "vessels", "text"]


def test_reapply_moves_reasons_between_policies():
    audited = image_result("a.png", findings(faces="flag"), PUBLIC)
    assert audited.verdict == "fail"
    relaxed = reapply_image(audited, INTERNAL)
    assert relaxed.verdict == "pass" and relaxed.warnings == audited.reasons and relaxed.reasons == []
    assert reapply_image(relaxed, PUBLIC) == audited


def test_reapply_agrees_with_image_result_for_every_combination():
    """Re-applying any policy to a stored result is the same as deciding the findings under that policy."""
    policies = (PUBLIC, INTERNAL, NO_FACES)
    for combo in itertools.product(("pass", "flag", "error"), repeat=len(IMAGE_CHECKS)):
        found = findings(**dict(zip(IMAGE_CHECKS, combo, strict=True)))
        for audit_policy, gate_policy in itertools.product(policies, repeat=2):
            stored = image_result("a.png", found, audit_policy)
            assert reapply_image(stored, gate_policy) == image_result("a.png", found, gate_policy)


def test_reapply_keeps_unattributed_reasons_blocking():
    stored = ImageResult("a.png", "fail", reasons=["manually rejected"], checks={"faces": "flag"},
                         warnings=["faces: a face"])
    result = reapply_image(stored, INTERNAL)
    assert result.verdict == "fail" and result.reasons == ["manually rejected"]
    assert result.warnings == ["faces: a face"]


def test_reapply_without_check_statuses_keeps_the_stored_verdict():
    stored = ImageResult("a.png", "fail", reasons=["old report"])
    assert reapply_image(stored, INTERNAL) == stored and reapply_image(stored, INTERNAL) is not stored


# --- per release --------------------------------------------------------------------------------------------


def test_clean_release_passes_with_a_stable_list_of_checks():
    verdict = evaluate_release(report_of(clean(3)), PUBLIC)
    assert verdict.verdict == "pass" and verdict.violations == ()
    assert (verdict.image_failures, verdict.failed_fraction, verdict.images) == (0, 0.0, 3)
    assert [c.name for c in verdict.checks] == ["failed-fraction", "membership-auc", "membership-tpr-at-1pct-fpr",
                                                "membership-tpr-at-01pct-fpr", "differential-privacy"]
    assert verdict.notes == ()
    assert verdict.actions == dict.fromkeys(IMAGE_CHECKS, "block")


@pytest.mark.parametrize(
    ("policy", "failures", "expected"),
    [(PUBLIC, 0, "pass"), (PUBLIC, 1, "fail"), (INTERNAL, 1, "pass"), (INTERNAL, 2, "fail")],
    ids=["public-none", "public-one", "internal-at-limit", "internal-over-limit"],
)
def test_failed_fraction_against_the_limit(policy, failures, expected):
    images = clean(100, policy)
    images[:failures] = [image_result(f"bad_{i}.png", findings(memorization="flag"), policy) for i in range(failures)]
    verdict = evaluate_release(report_of(images, policy), policy)
    assert verdict.verdict == expected
    assert verdict.image_failures == failures and verdict.failed_fraction == failures / 100
    assert check(verdict, "failed-fraction").status is Status(expected)


def _membership(auc_upper: float = 0.55) -> list[dict]:
    """Two levels, two attacks each: the worst (patient-level 'loss') is the one that must decide."""
    return [
        {"level": "image", "attacks": {
            "distance": sized({"auc": ci(0.52, 0.48, 0.56), "tpr_at_1pct_fpr": ci(0.01, 0, 0.02)}),
            "loss": sized({"auc": ci(0.53, 0.49, 0.57), "tpr_at_1pct_fpr": ci(0.01, 0, 0.03)})}},
        {"level": "patient", "attacks": {
            "distance": sized({"auc": ci(0.51, 0.45, 0.57), "tpr_at_1pct_fpr": ci(0, 0, 0.01)}, 120, 120),
            "loss": sized({"auc": ci(0.50, 0.45, auc_upper), "tpr_at_1pct_fpr": ci(0.02, 0, 0.04)}, 120, 120)}},
    ]


def test_worst_attack_at_any_level_decides():
    ok = evaluate_release(report_of(clean(2, UPPER), UPPER, membership=_membership(0.59)), UPPER)
    assert ok.verdict == "pass" and check(ok, "membership-auc").status is Status.PASS
    assert "0.590 (worst: loss, patient level)" in check(ok, "membership-auc").message
    bad = evaluate_release(report_of(clean(2, UPPER), UPPER, membership=_membership(0.71)), UPPER)
    assert bad.verdict == "fail"
    assert bad.violations == ("membership AUC upper bound 0.710 (attack loss, patient level) exceeds the policy "
                              "limit 0.6",)
    assert check(bad, "membership-tpr-at-01pct-fpr").status is Status.SKIPPED  # public sets no such limit


def test_a_single_level_section_is_read_too():
    section = {"level": "image", "attacks": {"loss": sized({"auc": ci(0.7, 0.6, 0.8)})}}
    verdict = evaluate_release(report_of(clean(1), membership=section), INTERNAL)
    assert verdict.verdict == "pass"  # internal compares the point estimate 0.7 with 0.75
    assert check(verdict, "membership-auc").message.startswith("membership AUC point estimate 0.700")


def test_every_bound_member_selects_its_value():
    expected = {Bound.POINT: Status.PASS, Bound.LOWER: Status.PASS, Bound.UPPER: Status.FAIL}
    assert set(expected) == set(Bound)
    section = {"level": "image", "attacks": {"loss": sized({"auc": ci(0.58, 0.52, 0.64)})}}
    for bound, status in expected.items():
        policy = parse_policy(f"name: t\nmembership: {{max_auc: 0.6, bound: {bound.value}}}\n")
        verdict = evaluate_release(report_of(clean(1), membership=section), policy)
        assert check(verdict, "membership-auc").status is status


def test_counts_every_attack_over_the_limit():
    section = {"level": "image", "attacks": {a: sized({"auc": ci(0.7, 0.6, u)}) for a, u in (("x", 0.8), ("y", 0.9))}}
    (violation,) = evaluate_release(report_of(clean(1, UPPER), UPPER, membership=section), UPPER).violations
    assert violation.endswith("exceeds the policy limit 0.6; 2 of 2 attack results exceed it")
    assert "0.900 (attack y, image level)" in violation


def test_membership_problems_fail_closed():
    errored = evaluate_release(report_of(clean(1), membership={"error": "no holdout set"}), PUBLIC)
    assert errored.violations == ("membership inference could not run: no holdout set",)
    unusable = {"level": "image", "attacks": {"loss": sized({"auc": {"point": 0.5, "upper": "high"}})}}
    verdict = evaluate_release(report_of(clean(1, UPPER), UPPER, membership=unusable), UPPER)
    assert verdict.violations == (
        "membership AUC: no usable upper value for attack loss, image level (failing closed)",)
    malformed = evaluate_release(report_of(clean(1), membership={"level": "image"}), PUBLIC)
    assert malformed.verdict == "fail" and check(malformed, "membership").status is Status.FAIL


def test_unmeasured_metric_or_disabled_membership_is_not_a_violation():
    section = {"level": "image", "attacks": {"loss": sized({"auc": ci(0.5, 0.45, 0.55)})}}
    verdict = evaluate_release(report_of(clean(1), membership=section), PUBLIC)
    assert verdict.verdict == "pass"
    assert check(verdict, "membership-tpr-at-1pct-fpr").status is Status.SKIPPED
    assert verdict.notes == ("membership TPR at 1% FPR was not measured by any attack; limit 0.05 not checked",)
    off = parse_policy("name: no-membership\nmembership: {enabled: false}\n")
    verdict = evaluate_release(report_of(clean(1), off, membership=_membership(0.99)), off)
    assert verdict.verdict == "pass" and verdict.notes == ()
    assert {c.status for c in verdict.checks if c.name.startswith("membership")} == {Status.SKIPPED}


DP = parse_policy("name: dp\nmembership: {enabled: false}\ngeneration: {require_dp: true, max_epsilon: 4}\n")


@pytest.mark.parametrize(
    ("model", "violation"),
    [
        (None, "DP required but the report carries no model information"),
        ({"dp": False, "epsilon": None, "delta": None},
         "DP required but the model was not trained with differential privacy"),
        ({"dp": True, "epsilon": None, "delta": 1e-5},
         "the policy sets max_epsilon 4 but the model's epsilon is unknown"),
        ({"dp": True, "epsilon": 8.0, "delta": 1e-5}, "model epsilon 8 exceeds the policy's max_epsilon 4"),
        ({"dp": True, "epsilon": 3.5, "delta": 1e-5}, None),
    ],
    ids=["no-model", "not-dp", "epsilon-unknown", "epsilon-too-high", "ok"],
)
def test_differential_privacy_requirements(model, violation):
    checks = {"model": model} if model is not None else {}
    verdict = evaluate_release(report_of(clean(1), DP, **checks), DP)
    assert verdict.violations == ((violation,) if violation else ())
    assert check(verdict, "differential-privacy").status is (Status.FAIL if violation else Status.PASS)


def test_every_violation_is_collected():
    policy = parse_policy("name: strict\ngeneration: {require_dp: true}\nmembership: {max_auc: 0.6, "
                          "max_tpr_at_1pct_fpr: 0.01}\n")
    images = clean(3, policy) + [image_result("bad.png", findings(text="flag"), policy)]
    verdict = evaluate_release(report_of(images, policy, membership=_membership(0.8)), policy)
    assert [c.name for c in verdict.checks if c.status is Status.FAIL] == [
        "failed-fraction", "membership-auc", "membership-tpr-at-1pct-fpr", "differential-privacy"]
    assert len(verdict.violations) == 4 and verdict.violations[0] == "1 of 4 images failed (25.00%; policy limit 0.00%)"


def test_note_when_the_audit_ran_under_another_policy():
    verdict = evaluate_release(report_of(clean(1, PUBLIC), PUBLIC), INTERNAL)
    assert any(n.startswith(f"the audit ran under policy 'public' ({PUBLIC.sha256[:12]}), not 'internal'")
               for n in verdict.notes)
    same = evaluate_release(report_of(clean(1, PUBLIC), PUBLIC), PUBLIC)
    assert not any("audit ran under" in n for n in same.notes)


def test_check_not_run_or_partly_run_is_a_violation():
    no_text = [image_result(f"{i}.png", [f for f in findings() if f.check != "text"], PUBLIC) for i in range(2)]
    verdict = evaluate_release(report_of(no_text), PUBLIC)
    assert verdict.verdict == "fail"  # fail closed: a required check nobody ran cannot vouch for the release
    assert "the policy enables the text check but the audit did not run it" in verdict.violations
    assert check(verdict, "text").status is Status.FAIL and check(verdict, "text").group == "checks"
    partial = evaluate_release(report_of(no_text + clean(2)), PUBLIC)
    assert partial.violations == ("the text check did not run on 2 of 4 images",)


def test_empty_report_is_noted():
    verdict = evaluate_release(report_of([]), PUBLIC)
    assert verdict.verdict == "pass" and verdict.failed_fraction == 0.0
    assert "the report lists no images" in verdict.notes


def test_gate_report_reapplies_actions_then_judges_the_release():
    images = clean(199, PUBLIC) + [image_result("face.png", findings(faces="flag"), PUBLIC)]
    stored = report_of(images, PUBLIC, membership=_membership(0.59))
    assert evaluate_release(stored, PUBLIC).verdict == "fail"
    gated, verdict = gate_report(stored, INTERNAL)
    assert verdict.verdict == "pass" and gated.verdict == "pass" and gated.violations == []
    assert gated.images[-1].verdict == "pass" and gated.images[-1].warnings
    assert stored.images[-1].verdict == "fail"  # the stored report is not modified


def test_gate_report_rejects_a_malformed_report():
    stored = report_of([ImageResult("a.png", "pass", scores={"x": "high"}, checks={"faces": 3})])
    with pytest.raises(InputError, match=r"malformed report: images\[0\]: scores must map names to finite numbers; "
                                         r"images\[0\]: checks must map"):
        gate_report(stored, PUBLIC)


def test_membership_the_policy_enables_but_nobody_ran_fails_closed():
    """A release too small for the attacks, or an audit without training data: not a pass."""
    missing = evaluate_release(report_of(clean(3), membership=None), PUBLIC)
    assert missing.verdict == "fail" and check(missing, "membership").status is Status.FAIL
    assert "opt out explicitly" in check(missing, "membership").message
    skipped = [{"level": lvl, "attacks": {}, "notes": ["black-box attacks skipped: the release has 6 images"]}
               for lvl in ("image", "patient")]
    verdict = evaluate_release(report_of(clean(3), membership=skipped), PUBLIC)
    assert verdict.verdict == "fail" and "release has 6 images" in check(verdict, "membership").message
    off = parse_policy("name: no-membership\nmembership: {enabled: false}\n")
    assert evaluate_release(report_of(clean(3, off), off, membership=None), off).verdict == "pass"


@pytest.mark.parametrize(("members", "nonmembers", "powered"), [(121, 80, True), (60, 40, False), (30, 20, False),
                                                                  (1000, 50, True), (2000, 25, False)])
def test_an_underpowered_image_level_auc_fails_closed_and_says_so(members, nonmembers, powered):
    section = [{"level": "image", "attacks": {"density": sized({"auc": ci(0.5, 0.4, 0.6)}, members, nonmembers)}}]
    verdict = evaluate_release(report_of(clean(1), membership=section), PUBLIC)
    assert (verdict.verdict == "pass") is powered
    if not powered:
        assert "underpowered" in check(verdict, "membership-auc").message
        assert f"{members} members / {nonmembers} non-members" in check(verdict, "membership-auc").message


def test_auc_null_halfwidth_is_the_mann_whitney_null_spread():
    """Against a simulation: AUCs of scores with no signal, at 121 vs 80, spread by the formula's half-width."""
    from synfundus_guard.policies.evaluate import auc_null_halfwidth
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(121), np.zeros(80)]
    aucs = np.array([roc_auc_score(y, rng.standard_normal(201)) for _ in range(4000)])
    low, high = np.quantile(aucs, [0.025, 0.975])
    assert abs((high - low) / 2 - auc_null_halfwidth(121, 80)) < 0.005


def test_tpr_at_an_fpr_the_nonmembers_cannot_resolve_is_not_judged_and_noted():
    section = [{"level": "image", "attacks": {"x": sized({"auc": ci(0.5, 0.4, 0.6),
                                                          "tpr_at_1pct_fpr": ci(0.2, 0.1, 0.3)}, 121, 80)}}]
    verdict = evaluate_release(report_of(clean(1), membership=section), PUBLIC)
    assert verdict.verdict == "pass" and check(verdict, "membership-tpr-at-1pct-fpr").status is Status.SKIPPED
    assert any("80 non-members cannot resolve an FPR of 0.01" in n for n in verdict.notes)
    resolvable = [{"level": "image", "attacks": {"x": sized({"auc": ci(0.5, 0.4, 0.6),
                                                             "tpr_at_1pct_fpr": ci(0.2, 0.1, 0.3)}, 121, 100)}}]
    assert evaluate_release(report_of(clean(1), membership=resolvable), PUBLIC).verdict == "fail"
