"""HTML report, two tiers: ``report.html`` (public) and ``private/report.html`` (owner-only).

The public page puts the verdict and violations first, then the release-level checks, the flagged images
(pixelated thumbnails when they are withheld, with their reasons in plain words, e.g. "closer to a training photo
than 99.9 % of holdout photos of new patients"), each score's release distribution against the holdout's with
the threshold marked, and the membership attacks' ROC curves with their AUC confidence intervals. It shows no
training image and names none: everything on it comes from the public ``report.json`` and the release folder.
The private page (:mod:`._private_page`) shows each flagged image beside the training image it matches.

Both pages are self-contained: inline CSS, SVG plots and PNG data URIs, a Content-Security-Policy that forbids
any network access, and no script.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..intervals import format_interval, read_interval
from ..results import ImageResult, Report, ReleaseVerdict
from . import _pictures, _scores
from ._page import banner, esc, page, table
from ._plots import RocCurve, roc_plot, score_histogram
from ._text import flagged_checks, lines_by_check
from .interface import ReportFormat, ReportView, register

MAX_SHOWN = 200
"""Flagged images shown with thumbnails; the rest are listed by count (the page must stay loadable)."""


def _release_checks(verdict: ReleaseVerdict) -> str:
    rows = "".join(f'<tr><td>{esc(c.name)}</td><td class="status-{esc(c.status.value)}">{esc(c.status.value)}</td>'
                   f"<td>{esc(c.message)}</td></tr>" for c in verdict.checks)
    return f"<table><thead><tr><th>check</th><th>status</th><th>detail</th></tr></thead><tbody>{rows}</tbody></table>"


def _plain_reasons(img: ImageResult, report: Report) -> list[str]:
    """Plain-word lines for the calibrated scores of the checks that flagged ``img``."""
    out = []
    for info in _scores.SCORES:
        check = info.key.split(".")[0]
        if img.checks.get(check, "pass") == "pass" or info.key not in img.scores:
            continue
        words = _scores.plain_words(info, float(img.scores[info.key]), _scores.holdout_of(info, report.calibration))
        if words:
            out.append(words)
    return out


def _thumb(view: ReportView, img: ImageResult) -> str:
    path = view.image_file(img.file_name)
    pixels = _pictures.read(path) if path is not None else None
    if pixels is None:
        return f'<span class="muted small">image {"not readable" if path else "not at hand"}</span>'
    withheld = img.verdict != "pass"
    uri = _pictures.data_uri(_pictures.thumbnail(pixels, pixelate=withheld), lossless=withheld)
    alt = "pixelated: withheld image" if withheld else "released image"
    return f'<img class="thumb" src="{uri}" alt="{esc(alt)}" title="{esc(alt)}">'


def _flagged(view: ReportView) -> list[str]:
    shown = [img for img in view.report.images if img.verdict != "pass" or img.warnings]
    if not shown:
        return ["<p>No image was flagged.</p>"]
    rows = []
    for img in shown[:MAX_SHOWN]:
        lines = lines_by_check(img)
        reasons = [esc(line) for check in flagged_checks(img) + [""] for line in lines.get(check, [])]
        reasons += [f"<em>{esc(w)}</em>" for w in _plain_reasons(img, view.report)]
        items = "".join(f"<li>{r}</li>" for r in reasons)
        rows.append([_thumb(view, img), esc(img.file_name),
                     f'<span class="status-{esc(img.verdict)}">{esc(img.verdict)}</span>',
                     f'<ul class="reasons">{items}</ul>'])
    out = [table(["image", "file", "verdict", "why"], rows)]
    if len(shown) > MAX_SHOWN:
        out.append(f"<p class=\"muted\">... and {len(shown) - MAX_SHOWN} more (see report.json).</p>")
    return out


def _histograms(report: Report) -> list[str]:
    figures = []
    for info in _scores.SCORES:
        values = [float(img.scores[info.key]) for img in report.images if info.key in img.scores]
        if not values:
            continue
        svg = score_histogram(title=info.title, holdout=_scores.holdout_of(info, report.calibration),
                              release=values, threshold=_scores.threshold_of(info, report.checks))
        figures.append(f"<figure>{svg}</figure>")
    if not figures:
        return ["<p>No per-image scores in this report.</p>"]
    return ['<div class="grid">' + "".join(figures) + "</div>"]


def _membership(report: Report, verdict: ReleaseVerdict) -> list[str]:
    sections = report.release_checks.get("membership")
    if not isinstance(sections, list) or not sections:
        return ["<p>Membership inference was not run for this report.</p>"]
    figures, rows = [], []
    for section in sections:
        if not isinstance(section, Mapping) or not isinstance(section.get("attacks"), Mapping):
            continue
        level, curves = str(section.get("level", "")), []
        for name, metrics in section["attacks"].items():
            roc, auc = (metrics.get("roc"), read_interval(metrics.get("auc"))) if isinstance(metrics, Mapping) \
                else (None, None)
            if auc is not None and isinstance(roc, Mapping) and roc.get("fpr") and roc.get("tpr"):
                curves.append(RocCurve(str(name), roc["fpr"], roc["tpr"], auc[0], auc[1]))
            cells = [esc(name), esc(level)]
            for key in ("auc", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr"):
                shown = format_interval(metrics.get(key), ".3f") if isinstance(metrics, Mapping) else None
                cells.append(esc(shown or "-"))
            counts = f"{metrics.get('n_members', '?')} / {metrics.get('n_nonmembers', '?')}" \
                if isinstance(metrics, Mapping) else "?"
            rows.append(cells + [esc(counts)])
        if curves:
            figures.append(f"<figure>{roc_plot(title=f'{level} level', curves=curves)}</figure>")
        figures += [f'<p class="muted small">{esc(n)}</p>' for n in section.get("notes", []) or []]
    out = ['<div class="grid">' + "".join(figures) + "</div>"] if figures else []
    if rows:
        out.append(table(["attack", "level", "AUC [95 % CI]", "TPR at 1 % FPR", "TPR at 0.1 % FPR",
                          "members / non-members"], rows))
    return out or ["<p>Membership inference ran no attack.</p>"]


def _fidelity(report: Report) -> list[str]:
    section = report.release_checks.get("fidelity")
    metrics = section.get("metrics") if isinstance(section, Mapping) else None
    if not isinstance(metrics, Mapping):
        return []
    directions = metrics.get("higher_is_better") if isinstance(metrics.get("higher_is_better"), Mapping) else {}
    rows = []
    for name, value in metrics.items():
        shown = format_interval(value)
        if shown is not None:
            better = {True: "higher", False: "lower"}.get(directions.get(name), "")
            rows.append([esc(name), esc(shown), esc(better)])
    features = section.get("features", {}) if isinstance(section.get("features"), Mapping) else {}
    counts = section.get("counts", {}) if isinstance(section.get("counts"), Mapping) else {}
    out = ["<h2>Fidelity against real images</h2>",
           f'<p class="muted small">features {esc(features.get("fingerprint", "?"))}; '
           + esc(", ".join(f"{k} {v}" for k, v in counts.items())) + "</p>",
           table(["metric", "value [95 % CI]", "better"], rows)]
    out += [f'<p class="muted small">{esc(w)}</p>' for w in metrics.get("warnings", []) or []]
    return out


def public_page(view: ReportView) -> bytes:
    """The public report page."""
    r, v = view.report, view.verdict
    head = "Release passes" if v.verdict == "pass" else "Release FAILS"
    kind = str(r.release.get("kind", "audit"))
    body = [f"<h1>synfundus-guard {esc(kind)}: {esc(r.release.get('name', 'release'))}</h1>",
            banner(v.verdict, f"{head} policy '{v.policy_name}': {v.image_failures} of {v.images} images "
                   f"withheld ({v.failed_fraction:.2%})"),
            f'<p class="muted small">synfundus-guard {esc(r.tool.get("version", "?"))}, report created '
            f'{esc(r.created)}; policy sha256 {esc(v.policy_sha256[:16])}'
            + (f"; embedder {esc(r.embedder.get('fingerprint', r.embedder.get('name')))}" if r.embedder else "")
            + "</p>"]
    if v.violations:
        body.append("<h2>Violations</h2><ul>" + "".join(f"<li>{esc(x)}</li>" for x in v.violations) + "</ul>")
    if v.notes:
        body.append('<div class="banner warn small"><ul>' + "".join(f"<li>{esc(n)}</li>" for n in v.notes)
                    + "</ul></div>")
    body += ["<h2>Release-level checks</h2>", _release_checks(v), "<h2>Flagged images</h2>",
             '<p class="muted small">Withheld images are pixelated here: they may show a patient. The full view, '
             "beside the training image each one matches, is in the private report.</p>"]
    body += _flagged(view)
    calibrated = any(_scores.holdout_of(info, r.calibration) for info in _scores.SCORES)
    body += ["<h2>Scores: release against holdout</h2>" if calibrated else "<h2>Scores</h2>",
             '<p class="muted small">' + ("Holdout: images of patients the model never saw, scored the same way; "
                                          if calibrated else "") + "the dashed line is the policy's limit.</p>"]
    body += _histograms(r)
    body += ["<h2>Membership inference</h2>"] + _membership(r, v)
    body += _fidelity(r)
    return page(f"synfundus-guard report: {v.verdict}", body)


@register
class HtmlFormat(ReportFormat):
    """Self-contained HTML pages for people: public, plus a private page beside the evidence."""

    name = "html"
    file_name = "report.html"
    description = "HTML pages for people (report.html public, private/report.html with training matches)"

    def render(self, view: ReportView) -> bytes:
        return public_page(view)

    def render_private(self, view: ReportView) -> bytes | None:
        from ._private_page import private_page

        return private_page(view)
