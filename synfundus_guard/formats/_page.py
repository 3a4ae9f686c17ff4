"""The HTML skeleton both report pages share: inline CSS, no script, no external resource of any kind."""

from __future__ import annotations

from collections.abc import Iterable

from ._text import html_text

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
 padding:0 20px 40px;color:#1d1d1f}
h1{font-size:22px;margin:24px 0 8px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.banner{padding:12px 16px;border-radius:6px;font-size:17px;font-weight:600;margin:12px 0}
.pass{background:#e3f4e6;color:#14532d} .fail{background:#fde2e1;color:#7f1d1d}
.warn{background:#fff4d6;color:#713f12} .muted{color:#666} .small{font-size:12px}
table{border-collapse:collapse;width:100%;margin:8px 0} th,td{border-bottom:1px solid #e5e5e5;padding:6px 8px;
 text-align:left;vertical-align:top} th{background:#f6f6f6}
td.status-fail{color:#b91c1c;font-weight:600} td.status-pass{color:#15803d} td.status-skipped{color:#666}
.grid{display:flex;flex-wrap:wrap;gap:12px} .grid figure{margin:0} figcaption{font-size:12px;color:#555}
img.thumb{width:120px;height:auto;image-rendering:pixelated;border-radius:4px}
img.pair{width:192px;height:auto;border-radius:4px} ul.reasons{margin:0;padding-left:18px}
svg{max-width:100%;height:auto}
"""


def esc(value: object) -> str:
    """Escaped text (see :func:`~synfundus_guard.formats._text.html_text`)."""
    return html_text(value)


def page(title: str, body: Iterable[str]) -> bytes:
    """A whole self-contained document; ``body`` parts are trusted HTML built with :func:`esc`."""
    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'\"><title>{esc(title)}</title><style>{CSS}</style></head><body>")
    return (head + "\n".join(body) + "</body></html>\n").encode("utf-8")


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table from trusted cell HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def banner(verdict: str, text: str) -> str:
    """The verdict line, coloured by verdict."""
    return f'<div class="banner {"pass" if verdict == "pass" else "fail"}">{esc(text)}</div>'
