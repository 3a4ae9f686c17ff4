"""Plots for the HTML report, drawn with matplotlib and inlined as SVG (no network, no image files).

Only aggregate numbers reach a plot: histograms of scores and ROC curves. Fonts stay text (``svg.fonttype:
none``) and the SVG ids are salted with a constant, so the same report renders to the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "synfundus-guard", "font.size": 9, "axes.spines.top": False,
          "axes.spines.right": False, "text.parse_math": False}
"""``text.parse_math`` off: names from a report on disk are shown as written, never parsed as TeX."""
HOLDOUT_COLOUR, RELEASE_COLOUR, LIMIT_COLOUR = "#4c72b0", "#dd8452", "#c44e52"


def _svg(fig) -> str:  # noqa: ANN001 - a matplotlib Figure
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float, height: float):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


@dataclass(frozen=True)
class Histogram:
    """A binned distribution (``len(edges) == len(counts) + 1``)."""

    edges: Sequence[float]
    counts: Sequence[int]


def score_histogram(*, title: str, holdout: Histogram | None, release: Sequence[float], threshold: float | None,
                    higher_is_worse: bool = True) -> str:
    """Release scores (and the holdout's, where calibrated) as densities, with the policy threshold marked."""
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        fig = _figure(4.6, 2.4)
        ax = fig.add_subplot()
        values = np.asarray(release, dtype=float)
        lo = [float(values.min())] if values.size else []
        hi = [float(values.max())] if values.size else []
        if holdout is not None and sum(holdout.counts):
            edges, counts = np.asarray(holdout.edges, float), np.asarray(holdout.counts, float)
            width = np.diff(edges)
            ax.stairs(counts / (counts.sum() * np.where(width > 0, width, 1)), edges, fill=True, alpha=0.45,
                      color=HOLDOUT_COLOUR, label=f"holdout: new patients (n={int(counts.sum())})")
            lo.append(float(edges[0]))
            hi.append(float(edges[-1]))
        if threshold is not None:
            lo.append(threshold)
            hi.append(threshold)
        if values.size:
            span = (min(lo), max(hi)) if max(hi) > min(lo) else (min(lo) - 0.5, min(lo) + 0.5)
            ax.hist(values, bins=40, range=span, density=True, histtype="step", linewidth=1.6,
                    color=RELEASE_COLOUR, label=f"release (n={values.size})")
        if threshold is not None:
            side = "above" if higher_is_worse else "below"
            ax.axvline(threshold, color=LIMIT_COLOUR, linestyle="--", linewidth=1.2,
                       label=f"limit {threshold:.3g} (flagged {side})")
        ax.set_title(title)
        ax.set_ylabel("density")
        ax.legend(frameon=False, fontsize=7)
        return _svg(fig)


@dataclass(frozen=True)
class RocCurve:
    """One attack's ROC curve with its AUC and the AUC's confidence interval."""

    label: str
    fpr: Sequence[float]
    tpr: Sequence[float]
    auc: float
    auc_ci: tuple[float, float] | None = None


def roc_plot(*, title: str, curves: Sequence[RocCurve], max_auc: float | None = None) -> str:
    """ROC curves of membership attacks on linear axes, the chance diagonal, AUCs with CIs in the legend."""
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        fig = _figure(4.0, 3.4)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1, label="chance (AUC 0.5)")
        for curve in curves:
            ci = f" [{curve.auc_ci[0]:.2f}, {curve.auc_ci[1]:.2f}]" if curve.auc_ci else ""
            ax.plot(curve.fpr, curve.tpr, linewidth=1.4, label=f"{curve.label}: AUC {curve.auc:.3f}{ci}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("false-positive rate (non-members called members)")
        ax.set_ylabel("true-positive rate")
        limit = f"; policy limit AUC {max_auc:g}" if max_auc is not None else ""
        ax.set_title(f"{title}{limit}")
        ax.legend(frameon=False, fontsize=7, loc="lower right")
        return _svg(fig)
