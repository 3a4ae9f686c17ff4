"""From one attack's per-image scores to the report's metrics, at image and patient level, with CIs.

Three decisions, each for a reason:

* **Direction, cross-fitted.** A published statistic can run the other way on a given model (on small,
  briefly trained models PIA's and SecMI's errors are often *larger* for members), and an attacker who knows a
  few members learns that. The direction is learned on one half of the patients (reversed only when that half
  shows it at p < 0.05) and applied to the other half, both ways round. A sign chosen on data it is not
  evaluated on keeps a useless attack at AUC 0.5 in expectation, and an attack that works as published keeps
  its plain AUC.
* **Patient level = mean over the patient's images** (:func:`group_means`): the max of more draws is larger, so
  under the max a group whose patients have more images would look "more member" with no leak at all. The mean
  has the same expectation whatever the count, and adding per-image evidence is what an attacker holding
  several photographs of one eye does. A patient is a member when any image of theirs was trained on.
* **Bootstrap over patients**, members and non-members resampled separately, the orientation re-run in every
  replicate. Images of one patient are correlated, so resampling images would understate the uncertainty;
  and the orientation step is part of the attack, so its variance belongs in the interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import mannwhitneyu, rankdata

from ...intervals import CONFIDENCE, interval
from .metrics import METRICS, auc, point_metrics, roc_curve, roc_series

LEVELS = ("image", "patient")
REVERSAL_P = 0.05
"""An attack is turned round for a fold only when the other half shows it reversed at this level (one-sided
Mann-Whitney test on patient means): a published direction is kept unless the data clearly contradict it."""


def _codes(keys: Sequence[str] | np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(keys), return_inverse=True)[1].ravel()


def patient_folds(is_member: np.ndarray, groups: np.ndarray, *, seed: int) -> np.ndarray:
    """Fold 0 or 1 per image: whole groups (patients), shuffled and dealt alternately within each class."""
    is_member = np.asarray(is_member, dtype=bool)
    groups = _codes(groups)
    folds = np.zeros(groups.size, dtype=np.int8)
    rng = np.random.default_rng(seed)
    for cls in (True, False):
        sel = is_member == cls
        ids, inverse = np.unique(groups[sel], return_inverse=True)
        deal = np.empty(ids.size, dtype=np.int8)
        deal[rng.permutation(ids.size)] = np.arange(ids.size) % 2
        folds[sel] = deal[inverse]
    return folds


def orient_scores(scores: np.ndarray, is_member: np.ndarray, groups: np.ndarray, *,
                  seed: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Cross-fitted orientation (module docstring): oriented scores and the sign used in each fold.

    When both folds keep one direction the scores are returned multiplied by it (so the AUC is exactly the
    published or the reversed one); when they disagree, each fold's oriented scores become percentile ranks.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=bool)
    groups = _codes(groups)
    folds = patient_folds(is_member, groups, seed=seed)
    signs = []
    for f in (0, 1):
        learn = folds != f
        m = group_means(scores[learn & is_member], groups[learn & is_member])
        n = group_means(scores[learn & ~is_member], groups[learn & ~is_member])
        reversed_ = m.size > 1 and n.size > 1 and mannwhitneyu(
            m, n, alternative="less", method="asymptotic").pvalue < REVERSAL_P
        signs.append(-1 if reversed_ else 1)
    if signs[0] == signs[1]:
        return signs[0] * scores, (signs[0], signs[1])
    out = np.empty(scores.size)
    for f in (0, 1):
        here = folds == f
        if here.any():
            out[here] = (rankdata(signs[f] * scores[here]) - 0.5) / here.sum()
    return out, (signs[0], signs[1])


def direction_label(signs: Sequence[int]) -> str:
    """``"published"``, ``"reversed"`` or ``"mixed"`` (the halves disagreed) for the signs of the two folds."""
    return "published" if all(s > 0 for s in signs) else "reversed" if all(s < 0 for s in signs) else "mixed"


def group_means(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean score of each group (patient), in the order of the sorted group codes."""
    codes = _codes(groups)
    return np.bincount(codes, weights=scores) / np.bincount(codes)


def _levels(scores: np.ndarray, is_member: np.ndarray, folds_by: np.ndarray, units: np.ndarray,
            seed: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[int, int]]:
    oriented, signs = orient_scores(scores, is_member, folds_by, seed=seed)
    m, n = is_member, ~is_member
    out = {"image": (oriented[m], oriented[n]),
           "patient": (group_means(oriented[m], units[m]), group_means(oriented[n], units[n]))}
    return out, signs


@dataclass(frozen=True)
class AttackEvaluation:
    """One attack's public metrics per level, and the direction it worked in."""

    levels: dict[str, dict]
    """``{"image": metrics, "patient": metrics}``; metrics as in the report (CIs, counts, ROC series)."""
    direction: str


def evaluate_attack(scores: np.ndarray, is_member: np.ndarray, patients: Sequence[str], *, n_boot: int,
                    seed: int) -> AttackEvaluation:
    """Orient, aggregate and bootstrap one attack's per-image scores (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=bool)
    pid = _codes(patients)
    point, signs = _levels(scores, is_member, pid, pid, seed)
    reps = {lvl: {k: np.empty(n_boot) for k in METRICS} for lvl in LEVELS}
    by_patient = {cls: [np.flatnonzero((pid == p) & (is_member == cls)) for p in np.unique(pid[is_member == cls])]
                  for cls in (True, False)}
    rng = np.random.default_rng(seed)
    for b in range(n_boot):
        draws = [by_patient[cls][i] for cls in (True, False)
                 for i in rng.integers(0, len(by_patient[cls]), len(by_patient[cls]))]
        idx = np.concatenate(draws)
        units = np.repeat(np.arange(len(draws)), [len(d) for d in draws])  # a patient drawn twice: two units
        values, _ = _levels(scores[idx], is_member[idx], pid[idx], units, seed + 1 + b)
        for lvl in LEVELS:
            for k, v in point_metrics(*values[lvl]).items():
                reps[lvl][k][b] = v
    levels = {}
    for lvl in LEVELS:
        m, n = point[lvl]
        pm = point_metrics(m, n)
        levels[lvl] = {k: interval(pm[k], reps[lvl][k]) for k in METRICS}
        levels[lvl].update(n_members=int(m.size), n_nonmembers=int(n.size), roc=roc_series(roc_curve(m, n)))
        published = (scores[is_member], scores[~is_member]) if lvl == "image" else (
            group_means(scores[is_member], pid[is_member]), group_means(scores[~is_member], pid[~is_member]))
        levels[lvl]["auc_published_direction"] = round(auc(roc_curve(*published)), 6)
    return AttackEvaluation(levels=levels, direction=direction_label(signs))


def membership_sections(attacks: Mapping[str, np.ndarray], is_member: np.ndarray, patients: Sequence[str], *,
                        families: Mapping[str, str], n_boot: int, seed: int,
                        notes: Sequence[str] = ()) -> list[dict]:
    """The report entry: ``[{"level": "image", "attacks": {...}}, {"level": "patient", ...}]``.

    Holds metrics and counts only: no score of a single image or patient, no identity.
    """
    sections = {lvl: {"level": lvl, "attacks": {}, "confidence": CONFIDENCE, "bootstrap": n_boot, "notes": list(notes)}
                for lvl in LEVELS}
    sections["patient"]["aggregation"] = "mean over each patient's images"
    for name, scores in attacks.items():
        ev = evaluate_attack(scores, is_member, patients, n_boot=n_boot, seed=seed)
        for lvl in LEVELS:
            sections[lvl]["attacks"][name] = {**ev.levels[lvl], "family": families.get(name, ""),
                                              "direction": ev.direction}
    return [sections[lvl] for lvl in LEVELS]
