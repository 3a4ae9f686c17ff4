"""The private HTML page: each flagged image beside the training image it matches. Owner-only; never ship it.

Per flagged image: for a memorization match, the synthetic image, its closest training image, the synthetic
image warped by the check's own transform onto the training image, and their difference (dark where they agree);
for a vessel match, the matched training image and both vessel maps in one picture (synthetic magenta, training
green, shared vessels white); for faces and burned-in text, the image with the detected boxes drawn. Training
file names and patient ids from the evidence are shown here, and only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import GuardError
from ..fsutil import safe_join
from ..results import ImageResult
from . import _pictures
from ._page import banner, esc, page
from ._text import flagged_checks, lines_by_check
from .interface import ReportView

MAX_SHOWN = 200
FACE_COLOURS = {"dlib": (230, 40, 40), "haar": (40, 110, 240)}
TEXT_COLOUR = (250, 200, 0)


def _figure(img: np.ndarray, caption: str) -> str:
    return (f'<figure><img class="pair" src="{_pictures.data_uri(img)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _training_image(view: ReportView, name: Any) -> np.ndarray | None:
    if view.train_dir is None or not isinstance(name, str):
        return None
    try:
        path = safe_join(view.train_dir, name)
    except GuardError:  # a name in hand-edited evidence that points outside the training folder
        return None
    return _pictures.read(path)


def _match(view: ReportView, query: np.ndarray, ev: Mapping[str, Any], key: str, *, vessels: bool,
           shown: set[str]) -> list[str]:
    """The synthetic image beside training image ``ev[key]``, aligned, with a difference or vessel view.

    A training image already shown for this synthetic image (memorization and vessels often match the same
    one) is not repeated: only the new view is added.
    """
    name = ev.get(key)
    train = _training_image(view, name)
    if train is None:
        return [f'<p class="muted small">training image {esc(name)} not at hand (pass --train)</p>']
    transform = ev.get("transform") if isinstance(ev.get("transform"), Mapping) else {}
    reference = _pictures.canonical(train)
    warped = _pictures.aligned(query, transform)
    figures = [] if name in shown else [
        _figure(_pictures.canonical(query), "synthetic (field of view)"), _figure(reference, f"training: {name}"),
        _figure(warped, "synthetic, aligned to it")]
    shown.add(str(name))
    if vessels:
        figures.append(_figure(_pictures.vessel_overlay(warped, reference),
                               f"vessels vs {name}: synthetic magenta, training green, shared white"))
    else:
        figures.append(_figure(_pictures.difference(warped, reference), "difference x4 (dark = same)"))
    patient = ev.get("closest_patient_id") or ev.get("matched_patient_id")
    facts = ", ".join(f"{k} {v}" for k, v in transform.items())
    caption = f"{key.split('_')[0]} match: patient {patient}; transform: {facts}"
    return ['<div class="grid">' + "".join(figures) + "</div>", f'<p class="muted small">{esc(caption)}</p>']


def _boxes(query: np.ndarray, ev: Mapping[str, Any], check: str) -> list[str]:
    items = ev.get("boxes" if check == "faces" else "rows")
    if not isinstance(items, list) or not items:
        return []
    out = query
    for item in items:
        box = item.get("box") if isinstance(item, Mapping) else None
        if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            colour = FACE_COLOURS.get(str(item.get("detector")), (230, 40, 40)) if check == "faces" else TEXT_COLOUR
            out = _pictures.draw_boxes(out, [box], colour)
    legend = "faces: dlib red, Haar blue" if check == "faces" else "burned-in text rows"
    return [f'<div class="grid">{_figure(out, legend)}</div>']


def _image_section(view: ReportView, img: ImageResult, evidence: Mapping[str, Any]) -> list[str]:
    lines = lines_by_check(img)
    reasons = "".join(f"<li>{esc(line)}</li>" for c in flagged_checks(img) + [""] for line in lines.get(c, []))
    out = [f"<h2>{esc(img.file_name)} <span class=\"muted small\">{esc(img.verdict)}</span></h2>",
           f'<ul class="reasons">{reasons}</ul>']
    query = _pictures.view_image(view, img.file_name)
    if query is None:
        return out + ['<p class="muted small">image not at hand</p>']
    shown: set[str] = set()
    for check in flagged_checks(img):
        ev = evidence.get(check) if isinstance(evidence.get(check), Mapping) else {}
        if check == "memorization" and ev.get("closest_training_image"):
            out += _match(view, query, ev, "closest_training_image", vessels=False, shown=shown)
        elif check == "vessels" and ev.get("matched_training_image"):
            out += _match(view, query, ev, "matched_training_image", vessels=True, shown=shown)
        elif check in ("faces", "text"):
            out += _boxes(query, ev, check)
    return out


def private_page(view: ReportView) -> bytes:
    """The owner-only page (see the module docstring)."""
    v = view.verdict
    images = view.evidence.get("images", {}) if isinstance(view.evidence, Mapping) else {}
    images = images if isinstance(images, Mapping) else {}
    body = ["<h1>synfundus-guard audit: PRIVATE evidence</h1>",
            banner("fail", "Private: names and shows training images. Keep inside the hospital; never publish."),
            banner(v.verdict, f"verdict under policy '{v.policy_name}': {v.verdict} "
                   f"({v.image_failures} of {v.images} images withheld)")]
    flagged = [img for img in view.report.images if img.verdict != "pass" or img.warnings]
    for img in flagged[:MAX_SHOWN]:
        ev = images.get(img.file_name)
        body += _image_section(view, img, ev if isinstance(ev, Mapping) else {})
    if len(flagged) > MAX_SHOWN:
        body.append(f"<p>... and {len(flagged) - MAX_SHOWN} more flagged images (see evidence.json).</p>")
    if not flagged:
        body.append("<p>No image was flagged.</p>")
    return page("synfundus-guard PRIVATE evidence", body)
