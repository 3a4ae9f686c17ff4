"""Burned-in text: structural detector on real and phantom fundus images, OCR blocklist, fail-closed OCR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

from synfundus_guard.audit.base import Candidate
from synfundus_guard.audit.identity import TextCheck, TextOptions, detect_text
from synfundus_guard.audit.identity import _ocr
from synfundus_guard.audit.identity.overlays import draw_text, font_names
from synfundus_guard.audit.identity.text import FAINT_LEVEL, identifiers_of, spellings
from synfundus_guard.data.folder import ImageRecord
from synfundus_guard.data.fov import resize_image
from synfundus_guard.data.phantom import PhantomPatient, render_visit
from synfundus_guard.errors import InputError

DEJAVU = [f for f in font_names() if "DejaVuSans.ttf" in f or "DejaVuSerif-Bold.ttf" in f]


@pytest.fixture(scope="module")
def retina512() -> np.ndarray:
    return resize_image(skdata.retina().astype(np.float32) / 255.0, 512, 512)


def _overlaps(box: tuple[int, int, int, int], rows: list) -> bool:
    x0, y0, x1, y1 = box
    return any(r.box[0] < x1 and r.box[2] > x0 and r.box[1] < y1 and r.box[3] > y0 for r in rows)


CASES = [  # font, size, position, light, colour
    ("pil-default", 8, "top-left", True, (255, 255, 255)),
    ("pil-bitmap", 11, "bottom-right", False, (0, 0, 0)),
    ("pil-default", 24, "centre", False, (0, 0, 128)),
    ("pil-default", 14, "centre", True, (255, 255, 0)),
    ("pil-default", 18, "top-right", True, (0, 255, 0)),
    ("dejavu", 10, "bottom-left", True, (230, 230, 230)),
    ("dejavu", 20, "centre", True, (0, 255, 255)),
    ("dejavu", 12, "top-right", False, (60, 0, 0)),
]


@pytest.mark.parametrize("font,size,position,light,colour", CASES)
def test_overlays_are_found(retina512: np.ndarray, font: str, size: int, position: str, light: bool,
                            colour: tuple[int, int, int]) -> None:
    if font == "dejavu":
        if not DEJAVU:
            pytest.skip("no DejaVu TrueType font installed")
        font = DEJAVU[size % len(DEJAVU)]
    img, overlay = draw_text(retina512, "ID 20231114 DOE", font=font, size=size, position=position, light=light,
                             colour=colour)
    rows = detect_text(img)
    assert _overlaps(overlay.box, rows)


def _clean_images(retina512: np.ndarray) -> list[np.ndarray]:
    ma = skdata.microaneurysms().astype(np.float32) / 255.0
    images = [retina512, skdata.retina().astype(np.float32) / 255.0, np.repeat(ma[..., None], 3, axis=2)]
    for index in range(40):  # diseased eyes: exudate rings, haemorrhages, drusen, new vessels
        patient = PhantomPatient.from_seed(11, index)
        if patient.dr_grade(1) >= 3 or patient.amd:
            images.append(render_visit(patient, visit=1, size=512, seed=11)[0])
        if len(images) == 8:
            break
    return images


def test_clean_fundus_images_have_no_text(retina512: np.ndarray) -> None:
    for img in _clean_images(retina512):
        assert detect_text(img) == []


def test_check_flags_with_public_reason(retina512: np.ndarray) -> None:
    img, _ = draw_text(retina512, "SMITH^ANNA", font="pil-default", size=16, position="top-left", light=True,
                       colour=(255, 255, 255))
    dirty, clean = TextCheck(ocr=False).check_batch([Candidate("a.png", img), Candidate("b.png", retina512)])
    assert dirty.flagged and dirty.reasons[0].startswith("burned-in text")
    assert dirty.scores["text.rows"] >= 1 and dirty.scores["text.max_glyphs"] >= 3
    assert "SMITH" not in " ".join(dirty.reasons) and dirty.private["rows"]
    assert not clean.flagged and clean.scores == {"text.rows": 0.0, "text.max_glyphs": 0.0}


def test_blocklist_without_tesseract_fails_closed_where_there_is_text_to_read(monkeypatch: pytest.MonkeyPatch,
                                                                               retina512: np.ndarray) -> None:
    monkeypatch.setattr(_ocr, "tesseract_path", lambda: None)
    img, _ = draw_text(retina512, "ID 4829163", font="pil-default", size=20, position="bottom-left", light=True,
                       colour=(255, 255, 255))
    text, clean = TextCheck(blocklist=["P00012"]).check_batch([Candidate("a.png", img), Candidate("b.png", retina512)])
    assert text.flagged and text.error and _ocr.INSTALL_LINE in text.reasons[0]
    assert not clean.flagged and clean.error is None, "no text row: nothing to read, nothing to fail"


def test_identifiers_of_records_are_ids_and_identifying_columns_only(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    recs = [ImageRecord("a.png", tmp_path / "a.png", "IMG-7", "PAT-7",
                        {"Patient_Name": "DOE^JANE", "study_date": "2021-03-04", "dr_grade": "2", "site": "Lyon"}),
            ImageRecord("b.png", tmp_path / "b.png", "b.png", "?b.png", {}),
            ImageRecord("c.png", tmp_path / "c.png", "c.png", "PAT-7", {"name": " "})]
    assert identifiers_of(recs) == ["03/04/2021", "04/03/2021", "2021-03-04", "DOE^JANE", "IMG-7", "JANE DOE",
                                    "PAT-7"]
    assert spellings("20210304") == ["20210304", "04/03/2021", "03/04/2021"]
    assert spellings("2021-13-04") == ["2021-13-04"] and spellings("P00012") == ["P00012"]


def test_blocklist_needs_ocr() -> None:
    with pytest.raises(InputError):
        TextCheck(blocklist=["P00012"], ocr=False)


@pytest.mark.skipif(_ocr.tesseract_path() is None, reason="tesseract not installed (apt-get install -y tesseract-ocr)")
def test_ocr_finds_a_training_identifier(retina512: np.ndarray) -> None:
    img, _ = draw_text(retina512, "ID 4829163", font="pil-default", size=20, position="bottom-left", light=True,
                       colour=(255, 255, 255))
    [hit] = TextCheck(blocklist=["4829163", "DOE^JANE"]).check_batch([Candidate("a.png", img)])
    assert hit.flagged and hit.scores["text.identifier"] == 1.0
    assert hit.reasons[0].startswith("burned-in identifier") and "4829163" not in " ".join(hit.reasons)
    assert hit.private["matched_identifier"] == "4829163"
    [miss] = TextCheck(blocklist=["7777777"]).check_batch([Candidate("a.png", img)])
    assert miss.flagged and miss.scores["text.identifier"] == 0.0


def test_identifier_matching_is_fuzzy_but_not_loose() -> None:
    assert _ocr.normalise("Doe, John  O1/02") == "D0EJ0HN0102"
    assert _ocr.match_identifier("Pat: DOE^J0HN", [_ocr.normalise("DOE^JOHN")]) == _ocr.normalise("DOE^JOHN")
    assert _ocr.match_identifier("ID 4829l63", ["4829163"]) == "4829163"  # OCR confusion l -> 1
    assert _ocr.match_identifier("ID 4820000", ["4829163"]) is None
    assert _ocr.match_identifier("OD", ["0D"]) is None  # too short to identify anyone
    assert _ocr.match_identifier('PAT"004', ["PAT000", "PAT004", "PAT008"]) == "PAT004", "the closest, not the first"


def test_short_rows_of_anatomy_inside_the_field_of_view_pass() -> None:
    """Hard exudates in a line or the optic cup cut by vessels look like 3 glyphs; inside the FOV a row needs 4."""
    img = render_visit(PhantomPatient.from_seed(1007, 28), visit=0, size=256, seed=1007)[0]
    assert TextCheck(ocr=False, min_glyphs_in_fov=3).check_batch([Candidate("a.png", img)])[0].flagged
    (finding,) = TextCheck(ocr=False).check_batch([Candidate("a.png", img)])
    assert not finding.flagged and finding.scores["text.rows"] == 0


def test_short_text_outside_the_field_of_view_is_still_flagged(retina512: np.ndarray) -> None:
    img, _ = draw_text(retina512, "OD 7", font="pil-default", size=16, position="top-left", light=True,
                       colour=(255, 255, 255))
    (finding,) = TextCheck(ocr=False).check_batch([Candidate("a.png", img)])
    assert finding.flagged and finding.scores["text.max_glyphs"] >= 3


def _quarter_turned(img: np.ndarray, text: str, *, turns: int, size: int = 16) -> np.ndarray:
    """``text`` burned in at a quarter turn (``turns`` = 1: reads bottom to top, 3: top to bottom) on the left."""
    strip, _ = draw_text(np.zeros((size * 2, img.shape[0] - 20, 3), np.float32), text, font="pil-default",
                         size=size, position="centre", light=True, colour=(255, 255, 255))
    strip = np.rot90(strip, turns)
    out = img.copy()
    out[10:10 + strip.shape[0], 4:4 + strip.shape[1]] = np.maximum(out[10:10 + strip.shape[0], 4:4 + strip.shape[1]],
                                                                   strip)
    return out


@pytest.mark.parametrize("turns", [1, 3])
def test_quarter_turned_text_is_found(retina512: np.ndarray, turns: int) -> None:
    img = _quarter_turned(retina512, "ID 20231114 DOE", turns=turns)
    rows = detect_text(img)
    assert any(r.vertical and r.box[0] < 40 for r in rows)
    assert TextCheck(ocr=False).check_batch([Candidate("a.png", img)])[0].flagged
    off = TextCheck(ocr=False, options=TextOptions(vertical=False)).check_batch([Candidate("a.png", img)])[0]
    assert not off.flagged  # found only by the vertical search


@pytest.mark.skipif(_ocr.tesseract_path() is None, reason="tesseract not installed (apt-get install -y tesseract-ocr)")
def test_ocr_reads_a_quarter_turned_identifier(retina512: np.ndarray) -> None:
    img = _quarter_turned(retina512, "ID 4829163", turns=1, size=20)
    [hit] = TextCheck(blocklist=["4829163"]).check_batch([Candidate("a.png", img)])
    assert hit.flagged and hit.scores["text.identifier"] == 1.0


def test_faint_rows_inside_the_field_of_view_need_six_glyphs() -> None:
    """The optic disc cut by vessels reads as a faint 4-glyph row at the lowest contrast level; inside the field
    of view such a weak row needs 6 glyphs, so the clean image passes."""
    img = render_visit(PhantomPatient.from_seed(41, 96), visit=0, size=256, seed=41)[0]
    assert any(r.level < FAINT_LEVEL for r in detect_text(img))
    (finding,) = TextCheck(ocr=False).check_batch([Candidate("a.png", img)])
    assert not finding.flagged and finding.scores["text.rows"] == 0


def test_a_faint_row_reaching_the_rim_needs_the_glyphs_of_an_ordinary_row() -> None:
    """A dark stamp cut by the rim of the field of view shows the inner parts of its glyphs, faint against the dark
    periphery: where no other row counts, a faint row that reaches the rim (the outer fifth of the radius) needs 4
    glyphs, like an ordinary row inside the field of view; faint rows nearer the centre (the disc's anatomy) and
    quarter-turned rows still need 6."""
    from synfundus_guard.audit.identity.text import TextRow
    from synfundus_guard.data.fov import detect_fov

    img = render_visit(PhantomPatient.from_seed(41, 96), visit=0, size=256, seed=41)[0]
    fov = detect_fov(img)
    assert fov.is_disc
    check = TextCheck(ocr=False)
    cx, top = int(round(fov.cx)), int(round(fov.cy - fov.radius))

    def row(y0: int, level: float = 0.08, vertical: bool = False, height: int = 10) -> TextRow:
        return TextRow((cx - 30, y0, cx + 30, y0 + height), 4, "dark", 0, level, vertical)

    def needed(r: TextRow) -> int:
        return check._needed(r, fov, rim=True)

    assert needed(row(top - 2)) == 4  # straddles the rim
    assert check._needed(row(top - 2), fov) == 6  # (the first reading, beside rows that count anyway)
    assert needed(row(top + 1)) == 4  # its glyphs' inner parts stop short of the rim
    assert needed(row(top + 12)) == 4  # several glyphs short of it (vignetting), still in the outer band
    assert needed(row(top + int(0.35 * fov.radius))) == 6  # its farthest corner ~0.7 radii out: the disc's region
    assert needed(row(int(fov.cy) - 5)) == 6  # the middle of the field
    assert needed(row(top - 2, vertical=True)) == 6
    assert needed(row(top + 12, level=0.25)) == 4  # not faint


@pytest.mark.parametrize("position", ["fov-top", "fov-bottom", "fov-left", "fov-right"])
def test_grey_stamps_on_the_rim_of_the_field_of_view_are_found(position: str) -> None:
    img = render_visit(PhantomPatient.from_seed(5, 3), visit=0, size=512, seed=5)[0]
    stamped, _ = draw_text(img, "ID 48213377", font="pil-default", size=14, position=position, light=True,
                           colour=(96, 96, 96))
    assert TextCheck(ocr=False).check_batch([Candidate("a.png", stamped)])[0].flagged
    assert not TextCheck(ocr=False).check_batch([Candidate("a.png", img)])[0].flagged


@pytest.mark.skipif(_ocr.tesseract_path() is None, reason="tesseract not installed (apt-get install -y tesseract-ocr)")
def test_a_name_split_over_two_rows_is_matched_in_page_order(retina512: np.ndarray) -> None:
    """Given name and family name burned in far enough apart to be two rows: neither row alone is the identifier,
    the rows joined in page order are (the labels store the DICOM form SMITH^ANNA)."""
    img, _ = draw_text(retina512, "ANNA", font="pil-default", size=20, position="bottom-left", light=True,
                       colour=(255, 255, 255))
    img, _ = draw_text(img, "SMITH", font="pil-default", size=20, position="bottom-right", light=True,
                       colour=(255, 255, 255))
    [hit] = TextCheck(blocklist=spellings("SMITH^ANNA")).check_batch([Candidate("a.png", img)])
    assert hit.scores["text.rows"] >= 2 and hit.scores["text.identifier"] == 1.0, hit.private["ocr"]


@pytest.mark.skipif(_ocr.tesseract_path() is None, reason="tesseract not installed (apt-get install -y tesseract-ocr)")
def test_an_iso_date_of_the_labels_is_found_burned_in_day_first(retina512: np.ndarray) -> None:
    img, _ = draw_text(retina512, "11/08/2020 17:51", font="pil-default", size=20, position="bottom-left",
                       light=True, colour=(255, 255, 255))
    [hit] = TextCheck(blocklist=spellings("2020-08-11")).check_batch([Candidate("a.png", img)])
    assert hit.scores["text.identifier"] == 1.0, hit.private["ocr"]
    [miss] = TextCheck(blocklist=["2020-08-11"]).check_batch([Candidate("a.png", img)])
    assert miss.scores["text.identifier"] == 0.0, "the ISO spelling alone is not what the camera burned in"


def test_opencv_morphology_equals_scipy_which_defined_the_detector() -> None:
    from scipy import ndimage as ndi

    from synfundus_guard.audit.identity._textdetect import _components, chessboard_distance, top_hat

    rng = np.random.default_rng(3)
    for shape in [(7, 7), (40, 90), (257, 131)]:
        chan = ndi.gaussian_filter(rng.random(shape), 1.0).astype(np.float32)
        assert np.array_equal(top_hat(chan, 7, "light"), ndi.white_tophat(chan, size=7))
        assert np.array_equal(top_hat(chan, 7, "dark"), ndi.black_tophat(chan, size=7))
        mask = chan > np.quantile(chan, 0.6)
        assert np.array_equal(chessboard_distance(mask), ndi.distance_transform_cdt(mask, metric="chessboard"))
        n, lab, box = _components(mask)
        ref, m = ndi.label(mask, structure=np.ones((3, 3), bool))
        assert n == m
        assert sorted(map(tuple, box.tolist())) == sorted(
            (s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndi.find_objects(ref))
        # the same partition, whatever the numbering
        pairs = {(int(a), int(b)) for a, b in zip(lab.ravel(), ref.ravel())}
        assert len(pairs) == n + 1
    full = np.ones((5, 8), bool)
    assert np.array_equal(chessboard_distance(full), ndi.distance_transform_cdt(full, metric="chessboard"))


def test_rows_are_chained_as_scipy_numbers_connected_components() -> None:
    from scipy.sparse.csgraph import connected_components

    from synfundus_guard.audit.identity._textdetect import _component_minima

    rng = np.random.default_rng(4)
    for n in [1, 2, 7, 40, 120]:
        for density in (0.0, 0.02, 0.1, 0.5):
            adj = rng.random((n, n)) < density
            adj = adj | adj.T
            np.fill_diagonal(adj, False)
            _, ref = connected_components(adj, directed=False)
            mins = _component_minima(adj)
            # same partition, and components in the same order (scipy numbers them by their smallest node)
            assert np.array_equal(np.unique(mins, return_inverse=True)[1], ref)


def test_glyph_table_does_not_depend_on_the_frame_around_the_glyphs() -> None:
    """The glyph table works inside the kept components' box and a one-pixel frame: the same components inside a
    larger empty frame, or beside a glyph far away that widens that box, give the same glyphs (shifted), in rows
    and at a quarter turn."""
    from scipy import ndimage as ndi

    from synfundus_guard.audit.identity._textdetect import (
        TextOptions, _components, _extents, _glyph_table, _transposed)
    from synfundus_guard.audit.identity.overlays import draw_text, random_identifier

    opts = TextOptions()
    far = np.zeros((12, 12), bool)
    far[1:11, 1] = far[1, 1:11] = far[10, 1:11] = far[1:11, 10] = True  # an "O", glyph-sized either way up
    shift = np.r_[1, 1, 1, 1, 0, 0]
    found = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        img = np.zeros((54, 150, 3), np.float32)
        for position, size in zip(("top-left", "centre", "bottom-right"), (9, 12, 16)):
            img, _ = draw_text(img, random_identifier(rng), font=("pil-default", "pil-bitmap")[seed % 2], size=size,
                               position=position, light=True, colour=(255, 255, 255), margin=1)
        resp = ndi.gaussian_filter(img[..., 0], 0.6 + 0.1 * seed)  # thicker strokes glue letters into words
        tables = []
        for pad, extra in [(1, False), (9, False), (9, True)]:
            r = np.pad(resp, pad)
            if extra:  # in the top-left corner: the box then starts at the image's origin
                r = np.pad(r, ((30, 0), (30, 0)))
                r[:12, :12] = np.where(far, 1.0, 0.0)
            half, heights, widths = _extents(r >= 0.3)
            comps = _components(r >= 0.6)
            rows = _glyph_table(comps, (half, heights), opts)
            turned = _glyph_table(_transposed(comps), (half.T, widths), opts)
            if extra:  # the corner glyph comes first in raster order either way up: drop it
                assert tuple(rows[0][:4]) == tuple(turned[0][:4]) == (1, 1, 11, 11)
                rows, turned, pad = rows[1:], turned[1:], pad + 30
            tables.append((rows - shift * pad, turned - shift * pad))
        for rows, turned in tables[1:]:
            assert np.array_equal(rows, tables[0][0]) and np.array_equal(turned, tables[0][1])
        found += len(tables[0][0])
    assert found >= 10  # the random masks hold glyph-like components
