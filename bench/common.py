"""Shared helpers of the benchmark scripts."""

from __future__ import annotations

import sys

import numpy as np


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    """Print a titled, column-aligned table (flushed, so long benches show progress)."""
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    sys.stdout.flush()


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row of ``exact`` (neighbour ids, one row per query) that ``found`` also returns."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))


def rate_upper(hits: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen ``hits`` times in ``n`` trials (how high the true rate
    may be: 0 of 120 bounds it by 2.5 %, 0 of 600 by 0.5 %)."""
    from scipy.stats import beta

    return 1.0 if hits >= n else float(beta.ppf(confidence, hits + 1, n - hits))
