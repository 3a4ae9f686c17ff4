"""Burned-in text check: flags images that carry text overlays, and blocks those that spell an identifier.

Fundus cameras, X-ray consoles, dermatoscopes and slide scanners burn patient names, ids and dates into the
pixels, and generators learn to reproduce them. Any row of text the structural detector
(:mod:`._textdetect`) finds flags the image ("burned-in text"): a release has no reason to carry text. Inside
a fundus field of view a row needs :data:`MIN_GLYPHS_IN_FOV` glyphs, where anatomy can mimic a short row.
When identifying strings from the training metadata are given (``blocklist``; an audit or the guarded
sampler passes the training and holdout sets' :func:`identifiers_of`), the rows are also read by OCR
(tesseract) and a fuzzy match is reported as "burned-in identifier" with ``text.identifier = 1``, which every
policy treats as a hard block whatever the text filter's action (``policies.evaluate.HARD_BLOCKS``). Without
OCR the check still flags every text row; with a blocklist but no tesseract, an image with a text row fails
closed (it cannot be read), and an image without one passes (there is nothing to read).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from ...data.fov import Fov, detect_fov
from ...errors import InputError, MissingDependencyError
from ..base import Candidate, Check, Finding, failed_closed
from ._ocr import MIN_IDENTIFIER, match_identifier, normalise, read_line, require_tesseract
from ._textdetect import TextOptions, TextRow, detect_text

NAME = "text"
KEY_ROWS = "text.rows"
"""Public score: number of distinct text rows found (0 = clean; lower is better)."""
KEY_GLYPHS = "text.max_glyphs"
"""Public score: glyphs in the longest row (0 = clean; lower is better)."""
MIN_GLYPHS_IN_FOV = 4
"""Glyphs a row inside the fundus field of view needs (outside it: ``TextOptions.min_glyphs``). Anatomy mimics
short rows there (a string of hard exudates; the optic cup cut by vessels): at 3 glyphs, 3 of 150 clean 256 px
phantoms of seed 1007 and 5 of 200 of seed 4242 were flagged, none at 4; identifiers (names, ids, dates) are
longer than 4 characters, and overlay recall in ``bench/bench_identity.py`` stayed at 99.8 %."""
MIN_GLYPHS_WEAK_IN_FOV = 6
"""Glyphs a weak row inside the field of view needs: one read at a quarter turn, or one found only below
:data:`FAINT_LEVEL` contrast. Light gaps between parallel vessel trunks read top to bottom as a short row, and
the optic disc cut by vessels as a faint one: on clean images of the tuning split (phantom seed 41 and the second
renderer's seed 23, 128-512 px) 4- and 5-glyph rows of these kinds were the only flags. Labels printed at a
quarter turn sit in the black surround, where ``options.min_glyphs_vertical`` still applies, and identifiers
(ids, names, dates) have at least 6 characters.

Where no other row of an image counts, a faint row that reaches the rim of the field of view (:func:`_at_rim`) needs
only :data:`MIN_GLYPHS_IN_FOV` (beside rows that count anyway it would only widen their merged box, which OCR then
reads worse): a dark stamp cut by the rim shows the inner parts of its glyphs, faint against the dark periphery, and
the anatomy behind the weak rows above (disc, trunks) lies far from the rim. Found on the misses of
``bench_identity.py --only text`` (all 7 were dark stamps on the rim; 614 -> 616 of 621 caught, 0 of 207 clean
flagged before and after); validated on sets that played no part (phantom seeds 5/9 and second-renderer seed 29,
128-768 px): dark stamps on the rim 247 -> 253 of 270, random stamps 527 -> 529 of 540, clean images flagged 1 -> 1
of 270. "Reaching the rim" first meant a corner within ``max(2, 0.3 x row height)`` pixels of the circle; where
vignetting hides a stamp's outer glyphs the row found stops several glyphs short, so it now means reaching the
outer band (:data:`RIM_BAND`). Chosen on the misses of one fresh set (phantom seeds 401/409, second renderer 403);
on two others that played no part (501/503/509 and 601/603/609, 128-768 px, 330 clean images each with 3 random
stamps each and one dark stamp on the rim): random stamps 982 -> 984 and 973 -> 975 of 990, dark stamps on the rim
306 -> 307 and 311 -> 313 of 330, clean images flagged 3 -> 3 and 0 -> 0 of 330; the bench's 616 of 621 and 0 of
207 unchanged."""
RIM_BAND = 0.8
"""Where a faint row counts as reaching the rim (:func:`_at_rim`), in field-of-view radii from the centre: outside
the optic disc and the trunks at it. On 867 clean images (phantoms, the second renderer, the real photographs) no
image that nothing else flags had a faint 4-5 glyph row reaching beyond 0.53 radii."""
FAINT_LEVEL = 0.15
"""Contrast below which a row is faint (the detector's lowest level, 0.08, finds grey or dark stamps over the
dark periphery of the fundus)."""
KEY_IDENTIFIER = "text.identifier"
"""Public score, present when OCR ran: 1 when a row spells a blocklisted identifier, else 0."""


IDENTIFYING_COLUMNS = ("name", "patient_name", "mrn", "medical_record_number", "accession", "accession_number",
                       "study_id", "series_id", "dob", "birth_date", "date_of_birth", "study_date", "exam_date",
                       "acquisition_date")
"""labels.csv columns, beside ``patient_id`` and ``image_id`` (record fields, not labels), whose values identify
a person or an examination (matched case-insensitively)."""


_ISO_DATE = re.compile(r"^\s*(\d{4})[-/.]?(\d{2})[-/.]?(\d{2})(?:[T ].*)?$")
_PERSON_NAME = re.compile(r"^\s*([^\^]+)\^([^\^]+)")


def spellings(value: str) -> list[str]:
    """``value`` and the other ways a camera burns it in: an ISO date (``2021-03-04``) also as day-month-year
    and month-day-year (``04/03/2021``, ``03/04/2021``); a DICOM person name (``DOE^JANE``) also given name
    first (``JANE DOE``)."""
    out = [value]
    if m := _ISO_DATE.match(value):
        year, month, day = m.groups()
        if 1 <= int(month) <= 12 and 1 <= int(day) <= 31:
            out += [f"{day}/{month}/{year}", f"{month}/{day}/{year}"]
    if m := _PERSON_NAME.match(value):
        out.append(f"{m.group(2).strip()} {m.group(1).strip()}")
    return out


def identifiers_of(records: Sequence[Any]) -> list[str]:
    """The identifying strings of image records (:class:`~synfundus_guard.data.folder.ImageRecord`): patient and
    image ids, and the values of :data:`IDENTIFYING_COLUMNS` in their labels, each in its other burned-in
    :func:`spellings`; ids guard made up for images without labels.csv rows (``"?" + file name``) are left out.
    Sorted, unique; private."""
    found: set[str] = set()
    for rec in records:
        values = [rec.patient_id, rec.image_id if rec.image_id != rec.file_name else ""]
        values += [v for k, v in rec.labels.items() if k.strip().lower() in IDENTIFYING_COLUMNS]
        found.update(s for v in values if v and v.strip() and not v.startswith("?") for s in spellings(v.strip()))
    return sorted(found)


def merge_rows(rows: Sequence[TextRow]) -> list[TextRow]:
    """Merge the rows found in several channels and levels that overlap into one row each (largest first)."""
    merged: list[TextRow] = []
    for row in sorted(rows, key=lambda r: -r.glyphs):
        x0, y0, x1, y1 = row.box
        for k, m in enumerate(merged):
            a0, b0, a1, b1 = m.box
            iw, ih = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
            if iw > 0 and ih > 0 and iw * ih >= 0.3 * min((x1 - x0) * (y1 - y0), (a1 - a0) * (b1 - b0)):
                box = (min(x0, a0), min(y0, b0), max(x1, a1), max(y1, b1))
                merged[k] = TextRow(box, m.glyphs, m.polarity, m.channel, m.level, m.vertical)
                break
        else:
            merged.append(row)
    return merged


def _inside(row: TextRow, fov: Fov) -> bool:
    """Whether a row's centre lies inside the field-of-view disc (never for a whole-frame FOV)."""
    x0, y0, x1, y1 = row.box
    return fov.is_disc and np.hypot((x0 + x1) / 2 - fov.cx, (y0 + y1) / 2 - fov.cy) < fov.radius


def _at_rim(row: TextRow, fov: Fov) -> bool:
    """Whether a row reaches the outer band of the field-of-view disc: its farthest corner lies at least
    :data:`RIM_BAND` radii from the centre (the glyph parts the detector finds stop short of the rim, by several
    glyphs where vignetting darkens the periphery)."""
    x0, y0, x1, y1 = row.box
    reach = max(np.hypot(x - fov.cx, y - fov.cy) for x in (x0, x1) for y in (y0, y1))
    return fov.is_disc and reach >= RIM_BAND * fov.radius


def _crops(image: np.ndarray, row: TextRow) -> list[np.ndarray]:
    """The row's pixels (one channel, padded) upright for OCR: a vertical row is read turned both ways."""
    x0, y0, x1, y1 = row.box
    pad = max(3, int(0.4 * ((x1 - x0) if row.vertical else (y1 - y0))))
    h, w = image.shape[:2]
    chan = image[..., row.channel] if image.ndim == 3 else image
    crop = chan[max(0, y0 - pad):min(h, y1 + pad), max(0, x0 - pad):min(w, x1 + pad)]
    return [np.rot90(crop, -1), np.rot90(crop, 1)] if row.vertical else [crop]


class TextCheck(Check):
    """Flags images with burned-in text; with a blocklist, OCR looks for training identifiers in it.

    ``ocr``: None (default) uses OCR exactly when a blocklist is given; True always reads detected rows (the
    text goes to the private report); False never does, and then a blocklist is a usage error.
    """

    name = NAME

    def __init__(self, *, blocklist: Sequence[str] = (), ocr: bool | None = None,
                 options: TextOptions = TextOptions(), max_ocr_rows: int = 4,
                 min_glyphs_in_fov: int = MIN_GLYPHS_IN_FOV):
        self.blocklist = sorted({n for n in (normalise(s) for s in blocklist) if len(n) >= MIN_IDENTIFIER})
        self.min_glyphs_in_fov = max(min_glyphs_in_fov, options.min_glyphs)
        self.min_glyphs_weak_in_fov = max(MIN_GLYPHS_WEAK_IN_FOV, self.min_glyphs_in_fov, options.min_glyphs_vertical)
        self.ocr = bool(self.blocklist) if ocr is None else bool(ocr)
        if self.blocklist and not self.ocr:
            raise InputError("text check: a blocklist of identifiers needs OCR (ocr=False was given)")
        self.options = options
        self.max_ocr_rows = max_ocr_rows

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "ocr": self.ocr, "blocklist_entries": len(self.blocklist),
                "levels": list(self.options.levels), "min_glyphs": self.options.min_glyphs,
                "vertical": self.options.vertical, "min_glyphs_vertical": self.options.min_glyphs_vertical,
                "min_glyphs_in_fov": self.min_glyphs_in_fov,
                "min_glyphs_weak_in_fov": self.min_glyphs_weak_in_fov, "faint_level": FAINT_LEVEL,
                "faint_at_rim": "min_glyphs_in_fov", "rim_band": RIM_BAND}

    def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
        binary, missing = None, None
        if self.ocr:
            try:
                binary = require_tesseract()
            except MissingDependencyError as exc:
                missing = str(exc)
        return [self._check_one(c.image, binary, missing) for c in batch]

    def _needed(self, row: TextRow, fov: Fov, *, rim: bool = False) -> int:
        """Glyphs ``row`` needs to count: more inside the field of view, more still for a weak row there (a
        quarter-turned one, or a faint one; with ``rim``, a faint one that reaches the rim is not weak:
        :data:`MIN_GLYPHS_WEAK_IN_FOV`)."""
        if not _inside(row, fov):
            return 0  # the detector's own minimum already applies
        weak = row.vertical or (row.level < FAINT_LEVEL and not (rim and _at_rim(row, fov)))
        return self.min_glyphs_weak_in_fov if weak else self.min_glyphs_in_fov

    def _check_one(self, image: np.ndarray, binary: str | None, missing: str | None = None) -> Finding:
        fov = detect_fov(image if image.ndim == 3 else image[..., None])
        found = detect_text(image, self.options)
        # faint rows on the rim count only where nothing else does: beside text found anyway they would only
        # widen its merged box (a light stamp's faint dark gaps), which OCR then reads worse
        rows = (merge_rows([r for r in found if r.glyphs >= self._needed(r, fov)])
                or merge_rows([r for r in found if r.glyphs >= self._needed(r, fov, rim=True)]))
        if rows and missing is not None:  # text that should be read for identifiers, and no engine to read it
            return failed_closed(self.name, f"{len(rows)} text row(s) to read for identifiers, but {missing}")
        scores = {KEY_ROWS: float(len(rows)), KEY_GLYPHS: float(max((r.glyphs for r in rows), default=0))}
        private: dict[str, Any] = {"rows": [{"box": list(r.box), "glyphs": r.glyphs, "polarity": r.polarity,
                                             "vertical": r.vertical} for r in rows]}
        reasons = []
        if rows:
            reasons.append(f"burned-in text: {len(rows)} row(s), up to {int(scores[KEY_GLYPHS])} characters")
        if binary is not None:
            # read in page order, so that an identifier split over two rows (a date and its time, a name and
            # its initial) is also matched in the rows' joined text
            ordered = sorted(rows[: self.max_ocr_rows], key=lambda r: (r.box[1], r.box[0]))
            texts = [read_line(crop, light=r.polarity == "light", binary=binary)
                     for r in ordered for crop in _crops(image, r)]
            joined = [" ".join(texts)] if len(texts) > 1 else []
            hit = next((m for m in (match_identifier(t, self.blocklist) for t in texts + joined) if m), None)
            scores[KEY_IDENTIFIER] = float(hit is not None)
            private["ocr"] = texts
            if hit is not None:
                private["matched_identifier"] = hit
                reasons.insert(0, "burned-in identifier: text matches an identifier from the training metadata")
        return Finding(check=self.name, flagged=bool(rows), reasons=tuple(reasons), scores=scores, private=private)
