"""Membership metrics against scikit-learn, and the orientation / aggregation / bootstrap of attack scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from synfundus_guard.audit.membership.evaluation import (evaluate_attack, group_means, membership_sections,
                                                         orient_scores, patient_folds)
from synfundus_guard.intervals import interval
from synfundus_guard.audit.membership.metrics import (METRICS, auc, balanced_accuracy, point_metrics,
                                                      roc_curve, roc_series, tpr_at_fpr)
from synfundus_guard.errors import CheckError
from synfundus_guard.policies.evaluate import evaluate_release
from synfundus_guard.policies.schema import parse_policy
from synfundus_guard.results import Report, Status


def random_scores(rng: np.random.Generator, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    nm, nn = rng.integers(1, 80, size=2)
    if ties:
        return rng.integers(0, 6, nm).astype(float), rng.integers(0, 6, nn).astype(float)
    return rng.normal(rng.uniform(-1, 1), 1, nm), rng.normal(0, 1, nn)


def labelled(m: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[np.ones(m.size), np.zeros(n.size)], np.r_[m, n]


def polyline_sup(fpr: np.ndarray, tpr: np.ndarray, x: float) -> float:
    """Reference: the highest TPR of the ROC polyline at FPR x (brute force over its segments)."""
    best = 0.0
    for f0, f1, t0, t1 in zip(fpr[:-1], fpr[1:], tpr[:-1], tpr[1:]):
        if f0 <= x <= f1:
            best = max(best, t1 if f1 == f0 else t0 + (t1 - t0) * (x - f0) / (f1 - f0))
    return best


@pytest.mark.parametrize("ties", [False, True])
def test_roc_and_auc_match_sklearn(ties):
    rng = np.random.default_rng(1 + ties)
    for _ in range(80):
        m, n = random_scores(rng, ties)
        y, s = labelled(m, n)
        roc = roc_curve(m, n)
        fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_allclose(roc.fpr, fpr)
        np.testing.assert_allclose(roc.tpr, tpr)
        assert auc(roc) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_tpr_at_fpr_interpolates_the_exact_curve(ties):
    rng = np.random.default_rng(3 + ties)
    for _ in range(100):
        m, n = random_scores(rng, ties)
        fpr, tpr, _ = sk_roc_curve(*labelled(m, n), drop_intermediate=True)  # dropping collinear points is exact
        roc = roc_curve(m, n)
        for x in (0.0, 0.001, 0.01, 1 / max(n.size, 1), *rng.uniform(0, 1, 5), 1.0):
            assert float(tpr_at_fpr(roc, x)) == pytest.approx(polyline_sup(fpr, tpr, x), abs=1e-12)


def test_tpr_at_low_fpr_is_interpolated_not_read_off_a_grid():
    # 10 non-members: FPR moves in steps of 0.1. Five members above every non-member, then one non-member, then
    # the other five members: flat at TPR 0.5 up to FPR 0.1, where the curve rises vertically to 1.
    m = np.array([10, 9, 8, 7, 6, 0.5, 0.4, 0.3, 0.2, 0.1])
    n = np.array([5, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    roc = roc_curve(m, n)
    assert [float(tpr_at_fpr(roc, x)) for x in (0.0, 0.001, 0.01, 0.1, 0.5)] == [0.5, 0.5, 0.5, 1.0, 1.0]
    # A member tied with a non-member: the curve is the diagonal from (0, 0) to (0.5, 1).
    roc = roc_curve(np.array([1.0]), np.array([1.0, 0.0]))
    assert float(tpr_at_fpr(roc, 0.01)) == pytest.approx(0.02)
    assert float(tpr_at_fpr(roc, 0.001)) == pytest.approx(0.002)


def test_balanced_accuracy_is_the_best_threshold():
    rng = np.random.default_rng(5)
    for _ in range(12):
        m, n = random_scores(rng, ties=bool(rng.integers(0, 2)))
        y, s = labelled(m, n)
        thresholds = np.r_[np.unique(s), np.inf]
        best = max(balanced_accuracy_score(y, s >= t) for t in thresholds)
        assert balanced_accuracy(roc_curve(m, n)) == pytest.approx(best, abs=1e-12)


def test_metric_extremes_and_bad_scores():
    perfect = point_metrics(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
    assert perfect == {"auc": 1.0, "tpr_at_1pct_fpr": 1.0, "tpr_at_01pct_fpr": 1.0, "balanced_accuracy": 1.0}
    assert point_metrics(np.zeros(3), np.zeros(4))["auc"] == 0.5
    with pytest.raises(CheckError, match="non-finite"):
        roc_curve(np.array([1.0, np.nan]), np.array([0.0]))
    with pytest.raises(CheckError, match="members and non-members"):
        roc_curve(np.array([]), np.array([0.0]))


def test_roc_series_is_short_monotone_and_exact():
    rng = np.random.default_rng(6)
    m, n = rng.normal(1, 1, 3000), rng.normal(0, 1, 5000)
    roc = roc_curve(m, n)
    series = roc_series(roc)
    fpr, tpr = np.array(series["fpr"]), np.array(series["tpr"])
    assert len(fpr) <= 200 and fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) > 0) and np.all(np.diff(tpr) >= 0)
    assert (fpr < 0.01).sum() >= 40  # the low-FPR region is resolved for log-scale plots
    np.testing.assert_allclose(tpr, tpr_at_fpr(roc, fpr), atol=1e-6)


def test_interval_always_holds_its_point():
    assert interval(0.9, np.array([0.5, 0.6, 0.7])) == {"point": 0.9, "lower": 0.505, "upper": 0.9}


# --- orientation, aggregation, bootstrap ---------------------------------------------------------------------


def groups_of(n_members: int, n_nonmembers: int, per_member: int = 2, per_nonmember: int = 3) -> np.ndarray:
    return np.array([f"m{i // per_member}" for i in range(n_members)]
                    + [f"n{i // per_nonmember}" for i in range(n_nonmembers)])


def test_folds_keep_patients_whole_and_balance_classes():
    is_member = np.arange(100) < 40
    pats = groups_of(40, 60)
    folds = patient_folds(is_member, pats, seed=0)
    for p in np.unique(pats):
        assert len(set(folds[pats == p])) == 1
    for cls in (True, False):
        per_fold = [len(np.unique(pats[(is_member == cls) & (folds == f)])) for f in (0, 1)]
        assert abs(per_fold[0] - per_fold[1]) <= 1


def test_orientation_keeps_published_attacks_and_turns_reversed_ones():
    rng = np.random.default_rng(7)
    is_member = np.arange(200) < 80
    pats = groups_of(80, 120)
    s = rng.normal(0, 1, 200) + 2.0 * is_member
    oriented, signs = orient_scores(s, is_member, pats, seed=0)
    assert signs == (1, 1) and np.array_equal(oriented, s)  # unchanged: the plain published AUC
    oriented, signs = orient_scores(-s, is_member, pats, seed=0)
    assert signs == (-1, -1)
    assert auc(roc_curve(oriented[is_member], oriented[~is_member])) == pytest.approx(
        auc(roc_curve(s[is_member], s[~is_member])))


def test_orientation_does_not_inflate_a_useless_attack():
    rng = np.random.default_rng(8)
    is_member = np.arange(50) < 20
    pats = groups_of(20, 30)
    aucs = []
    for t in range(400):
        s = rng.normal(0, 1, 50) if t % 2 else -rng.exponential(1, 50)
        o, _ = orient_scores(s, is_member, pats, seed=t)
        aucs.append(auc(roc_curve(o[is_member], o[~is_member])))
    assert abs(np.mean(aucs) - 0.5) < 3 * np.std(aucs) / np.sqrt(len(aucs)) + 0.005


def test_patient_mean_is_unbiased_where_the_max_is_not():
    # Null attack, members with 1 image and non-members with 5: the max would make non-members look like
    # members (AUC far below 0.5); the mean keeps the AUC at 0.5.
    rng = np.random.default_rng(9)
    mean_aucs, max_aucs = [], []
    pm, pn = np.repeat(np.arange(30), 1), np.repeat(np.arange(30), 5)
    for _ in range(200):
        sm, sn = rng.normal(0, 1, pm.size), rng.normal(0, 1, pn.size)
        mean_aucs.append(auc(roc_curve(group_means(sm, pm), group_means(sn, pn))))
        max_aucs.append(auc(roc_curve(sm, np.maximum.reduceat(sn, np.arange(0, sn.size, 5)))))
    assert abs(np.mean(mean_aucs) - 0.5) < 0.02
    assert np.mean(max_aucs) < 0.3
    np.testing.assert_allclose(group_means(np.array([1.0, 2, 3, 4]), np.array(["b", "a", "b", "c"])), [2, 2, 4])


def test_evaluate_attack_levels_counts_and_intervals():
    rng = np.random.default_rng(10)
    is_member = np.arange(100) < 40
    pats = groups_of(40, 60)
    ev = evaluate_attack(rng.normal(0, 1, 100) + 0.8 * is_member, is_member, pats, n_boot=60, seed=0)
    img, pat = ev.levels["image"], ev.levels["patient"]
    assert (img["n_members"], img["n_nonmembers"], pat["n_members"], pat["n_nonmembers"]) == (40, 60, 20, 20)
    for level in (img, pat):
        for k in METRICS:
            assert level[k]["lower"] <= level[k]["point"] <= level[k]["upper"]
        assert 0.5 < level["auc"]["point"]
    again = evaluate_attack(rng.normal(0, 1, 100), is_member, pats, n_boot=60, seed=0)
    assert again.levels["image"]["auc"]["lower"] <= 0.5 <= again.levels["image"]["auc"]["upper"]


def test_sections_are_what_the_policy_reads_and_name_nobody():
    rng = np.random.default_rng(11)
    is_member = np.arange(60) < 20
    pats = np.array([f"P{i:05d}" for i in range(20)] + [f"P{100 + i // 2:05d}" for i in range(40)])
    strong = rng.normal(0, 1, 60) + 4 * is_member
    sections = membership_sections({"loss": strong, "pia": rng.normal(0, 1, 60)}, is_member, pats,
                                   families={"loss": "white-box", "pia": "white-box"}, n_boot=30, seed=0)
    assert [s["level"] for s in sections] == ["image", "patient"]
    text = json.dumps(sections)
    assert "P000" not in text and "P001" not in text
    policy = parse_policy("name: t\nmembership: {max_auc: 0.6, max_tpr_at_1pct_fpr: 0.05, bound: upper}\n")
    report = Report(policy=policy.fingerprint(), embedder={}, images=[], verdict="pending",
                    release_checks={"membership": json.loads(text)})
    verdict = evaluate_release(report, policy)
    auc_check = next(c for c in verdict.checks if c.name == "membership-auc")
    assert auc_check.status is Status.FAIL and "attack loss" in auc_check.message
