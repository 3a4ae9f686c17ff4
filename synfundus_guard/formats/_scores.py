"""What each public score means, for people: its title, its threshold, its holdout distribution, plain words.

A score key is ``"<check>.<name>"`` as the checks write it. Calibrated scores (memorization, vessels) have a
holdout histogram in the report's ``calibration`` and a threshold in the check's fingerprint; the filters'
thresholds are fixed numbers in their fingerprints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._plots import Histogram


@dataclass(frozen=True)
class ScoreInfo:
    """How to show one score."""

    key: str
    title: str
    calibration: str | None
    """Key of its holdout distribution in ``report.calibration``, for calibrated scores."""
    threshold: str | None
    """Key of its threshold in its check's fingerprint."""
    versus: str = ""
    """Plain words for "higher than X % of new patients' images": what the score measures."""


SCORES = (
    ScoreInfo("memorization.embedding_sim", "memorization: embedding similarity to the closest training image",
              "embedding_sim", "embedding_threshold", "closer to a training photo than"),
    ScoreInfo("memorization.pixel_ncc", "memorization: aligned pixel correlation with a training image",
              "pixel_ncc", "pixel_threshold", "matches a training photo pixel by pixel more closely than"),
    ScoreInfo("vessels.match_score", "vessels: vessel-pattern match with a training patient",
              "vessel_score", "threshold", "its vessel pattern matches a training patient's more closely than"),
    ScoreInfo("vessels.margin", "vessels: how much better it matches its best training patient than any other",
              "vessel_margin", "margin_threshold", "it singles out one training patient more clearly than"),
    ScoreInfo("text.max_glyphs", "text: glyphs in the longest row of burned-in text", None, "min_glyphs"),
    ScoreInfo("faces.dlib", "faces: dlib frontal face detector score", None, "min_dlib"),
    ScoreInfo("faces.haar", "faces: Haar cascade votes (mirror-confirmed)", None, "min_haar"),
)


def fingerprint(report_checks: list[dict[str, Any]], check: str) -> Mapping[str, Any]:
    """The fingerprint of ``check`` in a report's ``checks`` list (empty when it did not run)."""
    return next((c for c in report_checks if isinstance(c, dict) and c.get("name") == check), {})


def threshold_of(info: ScoreInfo, report_checks: list[dict[str, Any]]) -> float | None:
    """The score's threshold under the audit, or None when unknown."""
    value = fingerprint(report_checks, info.key.split(".")[0]).get(info.threshold or "")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def holdout_of(info: ScoreInfo, calibration: Mapping[str, Any]) -> Histogram | None:
    """The score's holdout histogram from the report's calibration, or None (filters; older reports)."""
    hist = calibration.get(info.calibration or "", {})
    hist = hist.get("hist") if isinstance(hist, dict) else None
    try:
        edges, counts = [float(e) for e in hist["edges"]], [int(c) for c in hist["counts"]]
    except (TypeError, KeyError, ValueError):
        return None
    return Histogram(edges, counts) if len(edges) == len(counts) + 1 and counts else None


def fraction_below(hist: Histogram, value: float) -> float:
    """Fraction of the holdout sample below ``value`` (linear within a bin)."""
    total = sum(hist.counts)
    below = 0.0
    for lo, hi, n in zip(hist.edges[:-1], hist.edges[1:], hist.counts):
        if value >= hi:
            below += n
        elif value > lo:
            below += n * (value - lo) / (hi - lo)
    return below / total if total else 0.0


def plain_words(info: ScoreInfo, value: float, hist: Histogram | None) -> str | None:
    """E.g. "closer to a training photo than 99.9 % of new patients' photos are (0.917)", or None."""
    if hist is None or not info.versus:
        return None
    n = sum(hist.counts)
    if value > hist.edges[-1]:
        return f"{info.versus} any of the {n} holdout photos of new patients ({value:.3f})"
    return f"{info.versus} {fraction_below(hist, value):.1%} of holdout photos of new patients ({value:.3f})"
