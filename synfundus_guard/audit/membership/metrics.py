"""Membership-inference metrics from attack scores: exact ROC, AUC, TPR at low FPR, balanced accuracy, CIs.

Conventions: members (images the model was trained on) are the positive class and a *higher* score means
"more likely a member". Every metric here is lower-is-better for the hospital (0.5 AUC and 0.5 balanced
accuracy are chance; a TPR at FPR ``a`` of ``a`` is chance).

* The ROC curve is exact: one point per distinct score (ties make one diagonal step), starting at (0, 0), the
  same points as scikit-learn's ``roc_curve(..., drop_intermediate=False)``.
* AUC is the trapezoidal area under it (= the Mann-Whitney probability, ties counting one half).
* TPR at a given FPR is read by linear interpolation on that polyline (a randomised threshold between two
  neighbouring scores); where the curve is vertical at that FPR the highest TPR is taken (the attacker's
  best threshold), never a coarse grid.
* Balanced accuracy is ``(TPR + TNR) / 2`` at the best threshold. It is chosen in-sample, so it is optimistic
  by construction (>= 0.5 even for a useless attack); it is reported, policies do not use it.
* Every metric above is normalised within each class, so it does not depend on the ratio of members to
  non-members: unequal group sizes need no subsampling. Confidence intervals are computed in
  :mod:`.evaluation` (bootstrap over patients, members and non-members resampled separately).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import CheckError
from ...results import LOW_FPRS

METRICS = ("auc", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr", "balanced_accuracy")
"""Metric keys of the report, in order; the TPR keys match ``policies.evaluate.MEMBERSHIP_LIMITS``."""
ROC_MAX_POINTS = 200
_DIGITS = 6


@dataclass(frozen=True)
class Roc:
    """An exact ROC curve: ``fpr`` and ``tpr`` are non-decreasing, from (0, 0) to (1, 1)."""

    fpr: np.ndarray
    tpr: np.ndarray


def _check_scores(member: np.ndarray, nonmember: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(member, dtype=np.float64).ravel()
    n = np.asarray(nonmember, dtype=np.float64).ravel()
    if m.size == 0 or n.size == 0:
        raise CheckError(f"membership metrics need members and non-members (got {m.size} and {n.size})")
    bad = int((~np.isfinite(m)).sum() + (~np.isfinite(n)).sum())
    if bad:
        raise CheckError(f"membership attack produced {bad} non-finite score(s)")
    return m, n


def roc_curve(member: np.ndarray, nonmember: np.ndarray) -> Roc:
    """The exact ROC curve of scores (members positive, higher = member)."""
    m, n = _check_scores(member, nonmember)
    scores = np.concatenate([m, n])
    labels = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # The last position of every run of equal scores: one threshold per distinct score.
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(labels)[ends]
    fps = (ends + 1) - tps
    return Roc(fpr=np.r_[0.0, fps / n.size], tpr=np.r_[0.0, tps / m.size])


def auc(roc: Roc) -> float:
    """Trapezoidal area under the curve."""
    return float(np.trapezoid(roc.tpr, roc.fpr))


def tpr_at_fpr(roc: Roc, fpr: float | np.ndarray) -> np.ndarray:
    """TPR at the given FPR value(s), linearly interpolated on the curve (highest TPR on vertical parts)."""
    x = np.clip(np.asarray(fpr, dtype=np.float64), 0.0, 1.0)
    lo = np.searchsorted(roc.fpr, x, side="right") - 1  # last point with fpr <= x: the top of a vertical run
    hi = np.minimum(lo + 1, roc.fpr.size - 1)
    f0, f1, t0, t1 = roc.fpr[lo], roc.fpr[hi], roc.tpr[lo], roc.tpr[hi]
    span = np.where(f1 > f0, f1 - f0, 1.0)
    return np.where(f0 >= x, t0, t0 + (t1 - t0) * (x - f0) / span)


def balanced_accuracy(roc: Roc) -> float:
    """Best ``(TPR + 1 - FPR) / 2`` over all thresholds (0.5 at the trivial ones)."""
    return float(np.max(roc.tpr - roc.fpr) / 2 + 0.5)


def point_metrics(member: np.ndarray, nonmember: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`METRICS` on the given scores."""
    roc = roc_curve(member, nonmember)
    out = {"auc": auc(roc), "balanced_accuracy": balanced_accuracy(roc)}
    out.update({k: float(tpr_at_fpr(roc, a)) for k, a in LOW_FPRS.items()})
    return {k: out[k] for k in METRICS}


def roc_series(roc: Roc, max_points: int = ROC_MAX_POINTS) -> dict[str, list[float]]:
    """The curve for plotting, at most ``max_points`` points: exact values at FPRs spaced evenly on a log scale
    (1e-4 to 1) and on a linear scale, so both a linear and a log-FPR plot are faithful."""
    half = max(2, (max_points - 1) // 2)
    grid = np.unique(np.round(np.r_[0.0, np.logspace(-4, 0, half), np.linspace(0, 1, half)], 8))
    return {"fpr": [round(float(v), _DIGITS) for v in grid],
            "tpr": [round(float(v), _DIGITS) for v in tpr_at_fpr(roc, grid)]}
