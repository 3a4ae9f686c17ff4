"""Percentile bootstrap intervals: one rule for every metric the tool reports with a confidence interval.

``{"point", "lower", "upper"}``, the 2.5 and 97.5 % quantiles of the bootstrap replicates. A percentile interval
of a skewed or biased statistic can miss its own point estimate (FD on a resample with duplicates; an AUC near
1): it is widened to include it, the conservative reading for a limit compared with either bound. Replicates
that are not finite are left out; with none left, the bounds are None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
DIGITS = 6
"""Decimal places kept by default (``digits=None`` keeps every digit: KD values are often below 1e-5)."""


def interval(point: float, reps: Sequence[float] | np.ndarray, *,
             digits: int | None = DIGITS) -> dict[str, float | None]:
    """The point estimate and its widened percentile bootstrap interval (see the module docstring)."""
    def r(v: float) -> float:
        return round(float(v), digits) if digits is not None else float(v)

    values = np.asarray(reps, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"point": r(point), "lower": None, "upper": None}
    alpha = (1 - CONFIDENCE) / 2
    lower, upper = np.quantile(values, [alpha, 1 - alpha])
    return {"point": r(point), "lower": r(min(lower, point)), "upper": r(max(upper, point))}


def read_interval(value: Any) -> tuple[float, tuple[float, float] | None] | None:
    """``(point, (lower, upper) or None)`` of an interval read back from a report, or None when it is not one."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(value, Mapping) or not number(value.get("point")):
        return None
    lo, hi = value.get("lower"), value.get("upper")
    return float(value["point"]), ((float(lo), float(hi)) if number(lo) and number(hi) else None)


def format_interval(value: Any, spec: str = ".4g") -> str | None:
    """``"0.93 [0.9, 0.95]"`` (the bounds left out when there are none), or None when ``value`` is no interval."""
    got = read_interval(value)
    if got is None:
        return None
    point, bounds = got
    return f"{point:{spec}}" + (f" [{bounds[0]:{spec}}, {bounds[1]:{spec}}]" if bounds else "")
