"""Vessel biometrics: another visit of a training patient is flagged; other patients are not."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

from synfundus_guard.audit.base import Candidate
from synfundus_guard.audit.pixel_match import QuerySketch, make_sketch
from synfundus_guard.audit.runner import build_checks, prepare_guard
from synfundus_guard.audit.vessels import REVISIT_GRID, SCORE_KEY, VesselCheck
from synfundus_guard.data.fov import detect_fov, resize_image, rotate_scale
from synfundus_guard.data.folder import write_image_folder
from synfundus_guard.data.perturb import random_copy
from synfundus_guard.data.phantom import PhantomPatient, render_visit
from synfundus_guard.policies import load_policy

SEED, SIZE = 5, 256


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    root = tmp_path_factory.mktemp("vessels")
    train, holdout = [], []
    for p in range(40):
        img = render_visit(PhantomPatient.from_seed(SEED, p), visit=0, size=SIZE, seed=SEED)[0]
        (train if p < 20 else holdout).append((f"p{p}.png", img, f"I{p}", f"P{p}"))
    write_image_folder(root / "train", train)
    write_image_folder(root / "holdout", holdout)
    return prepare_guard(train_dir=root / "train", holdout_dir=root / "holdout", k=10, cache_dir=root / "cache")


def test_another_visit_of_a_training_patient_is_flagged_and_new_patients_are_not(guard):
    policy = load_policy("public")
    check = next(c for c in build_checks(policy=policy, guard=guard) if isinstance(c, VesselCheck))
    revisits = [render_visit(PhantomPatient.from_seed(SEED, p), visit=2, size=SIZE, seed=SEED)[0] for p in range(4)]
    novel = [render_visit(PhantomPatient.from_seed(SEED + 9, p), visit=0, size=SIZE, seed=SEED + 9)[0] for p in range(4)]
    findings = check.check_batch([Candidate(f"x{i}.png", im) for i, im in enumerate(revisits + novel)])
    rev, new = findings[:4], findings[4:]
    assert all(f.flagged and "vessel pattern" in f.reasons[0] for f in rev)
    assert min(f.scores[SCORE_KEY] for f in rev) > max(f.scores[SCORE_KEY] for f in new)
    assert [f.private["matched_patient_id"] for f in rev] == ["P0", "P1", "P2", "P3"]
    assert not any(f.flagged for f in new)


def test_real_photo_matches_its_transformed_copy_not_a_phantom():
    retina = resize_image(skdata.retina().astype(np.float32) / 255.0, 256, 256)
    template = make_sketch(retina, "vessel")
    copy, params = random_copy(retina, np.random.default_rng(2), family="combined")
    o = 4 if params.get("flip") else 0
    own = max(QuerySketch(copy, kind="vessel").score(template, orientation=o, angle=a)[0] for a in (-6, 0, 6))
    phantom = render_visit(PhantomPatient.from_seed(1, 1), visit=0, size=256, seed=1)[0]
    other = max(QuerySketch(phantom, kind="vessel").score(template, orientation=oo, angle=a)[0]
                for oo in (0, 4) for a in (-6, 0, 6))
    assert own > 0.6 > other


def test_vessel_search_retrieves_the_patient_at_another_visit(guard):
    """The candidates come from the vessel-map index: another visit's patient is among them, with the pixel
    embedding (built to find copies) it mostly is not."""
    from synfundus_guard.audit.memorization import retrieve
    from synfundus_guard.audit.vessels import vessel_search

    revisits = [render_visit(PhantomPatient.from_seed(SEED, p), visit=1, size=SIZE, seed=SEED)[0] for p in range(20)]
    pid = [r["patient_id"] for r in guard.index.records]
    search = vessel_search(guard.index)
    by_vessels = search.retrieve([QuerySketch(im, kind="vessel").template() for im in revisits], k=3)
    by_pixels = retrieve(guard.index, revisits, k=3)

    def found(retrievals):
        return sum(f"P{p}" in {pid[j] for j, _ in r.candidates} for p, r in enumerate(retrievals))

    assert found(by_vessels) >= 18 and found(by_vessels) > found(by_pixels)
    assert search is vessel_search(guard.index)  # built once per loaded index


@pytest.mark.parametrize("flip,angle", [(False, 0.0), (True, 0.0), (False, 6.0), (True, -12.0)])
def test_vessel_search_reports_the_view_the_alignment_uses(guard, flip, angle):
    """The view the descriptor search reports is the orientation and rotation under which QuerySketch aligns
    the query with the template (the two warp the same way)."""
    from synfundus_guard.audit.pixel_match import COARSE
    from synfundus_guard.audit.vessel_search import view_params
    from synfundus_guard.audit.vessels import vessel_search
    from synfundus_guard.data.fov import rotate_scale

    j = 7
    train_img = np.asarray(guard.index.vessels[j], dtype=np.float32)
    src = render_visit(PhantomPatient.from_seed(SEED, int(guard.index.records[j]["patient_id"][1:])), visit=0,
                       size=SIZE, seed=SEED)[0]
    query = src[:, ::-1] if flip else src
    query = np.clip(rotate_scale(query, angle), 0, 1) if angle else query
    q = QuerySketch(query, kind="vessel")
    r = vessel_search(guard.index).retrieve([q.template()], k=1)[0]
    assert r.candidates[0][0] == j
    o, a = view_params(r.candidates[0][1][0])
    best = max(((q.score(train_img, orientation=oo, angle=aa, grid=COARSE)[0], oo, aa)
                for oo in range(8) for aa in (0.0, -6.0, 6.0, -12.0, 12.0)))
    assert (o, a) == best[1:]
    assert (o >= 4) == flip


def test_group_views_keeps_each_view_once_at_its_best_row():
    """Several query rows may describe one view (the search's shifted rows): a candidate's views are distinct, each
    at the best similarity any of its rows reached, and candidates are ordered by their best view."""
    from synfundus_guard.audit.memorization import group_views

    sims = np.array([[0.90, 0.50], [0.95, 0.40], [0.30, 0.20]])
    idx = np.array([[1, 2], [1, 3], [2, 1]])
    r = group_views(sims, idx, k=3, views_per_candidate=3, view_ids=[0, 0, 1])
    assert r.embedding_sim == 0.95
    assert r.candidates == ((1, (0, 1)), (2, (0, 1)), (3, (0,)))
    plain = group_views(sims, idx, k=3, views_per_candidate=3)  # a row per view: row r is view r
    assert plain.candidates == ((1, (1, 0, 2)), (2, (0, 2)), (3, (1,)))


def test_group_views_equals_grouping_row_by_row():
    """The vectorised grouping gives what grouping the rows one by one in dicts gives (the earlier code), ties
    included: candidates tied on their best similarity in the order the rows first name them, views tied on
    similarity larger first; -1 (no neighbour) ignored."""
    from synfundus_guard.audit.memorization import group_views

    def by_rows(sims, idx, k, per, view_ids):
        views: dict[int, dict[int, float]] = {}
        for row in range(len(sims)):
            view = row if view_ids is None else int(view_ids[row])
            for s, j in zip(sims[row], idx[row]):
                if j >= 0:
                    seen = views.setdefault(int(j), {})
                    seen[view] = max(seen.get(view, -np.inf), float(s))
        best = {j: sorted(((s, v) for v, s in vs.items()), reverse=True)[:per] for j, vs in views.items()}
        cands = sorted(best, key=lambda j: -best[j][0][0])[:k]
        return (best[cands[0]][0][0] if cands else -1.0, tuple((j, tuple(v for _, v in best[j])) for j in cands))

    rng = np.random.default_rng(0)
    for t in range(400):
        rows, cols = int(rng.integers(1, 90)), int(rng.integers(1, 35))
        idx = rng.integers(-1 if t % 3 == 0 else 0, int(rng.integers(1, 60)), size=(rows, cols))
        sims = rng.random((rows, cols)).astype(np.float32)
        if t % 2:
            sims = np.round(sims * 5).astype(np.float32) / 5  # many ties
        view_ids = None if t % 4 == 0 else rng.integers(0, max(1, rows // 2), size=rows)
        k, per = int(rng.integers(1, 40)), int(rng.integers(1, 4))
        r = group_views(sims, idx, k, per, view_ids=view_ids)
        assert (r.embedding_sim, r.candidates) == by_rows(sims, idx, k, per, view_ids)
    assert group_views(np.zeros((2, 3)), np.full((2, 3), -1), 5).candidates == ()


def test_a_template_moved_inside_the_frame_is_retrieved_by_the_shifted_rows(guard):
    """Between visits the eye moves inside the field of view; the search also describes the unmirrored views
    shifted by one descriptor pixel (4 template pixels), so a template moved by 4 template pixels keeps nearly all
    of its similarity to its own training template, and one moved by 6 most of it, which the unshifted rows lose."""
    from scipy import ndimage as ndi

    from synfundus_guard.audit.vessel_search import QUERY_VIEWS, SEARCHED, descriptors, query_descriptors
    from synfundus_guard.audit.vessels import vessel_search

    j = 4
    own = np.asarray(guard.index.vessels[j], dtype=np.float32)
    d = descriptors(own[None])[0]
    for shift, kept in ((4, 0.95), (6, 0.7)):
        moved = ndi.shift(own, (shift, -shift), order=1)
        sims = query_descriptors(moved) @ d
        assert len(sims) == len(QUERY_VIEWS)
        assert sims.max() > kept and sims.max() > sims[:SEARCHED].max() + 0.2
        assert QUERY_VIEWS[int(np.argmax(sims))] == 0  # a shifted row of the image itself
        assert vessel_search(guard.index).retrieve([moved], k=3)[0].candidates[0] == (j, (0,))


def test_a_visit_rotated_beyond_the_searched_views_is_aligned_at_its_rotation(guard):
    """A second visit rotated by 21 degrees is retrieved at the search's 12-degree view; the check also tries the
    wider rotations (18, 24 degrees) of the image itself, so the alignment reaches the true rotation."""
    from synfundus_guard.audit.vessels import vessel_scores
    from synfundus_guard.data.fov import rotate_scale

    j = 6
    src = render_visit(PhantomPatient.from_seed(SEED, int(guard.index.records[j]["patient_id"][1:])), visit=0,
                       size=SIZE, seed=SEED)[0]
    for angle in (21.0, -21.0):
        (v,) = vessel_scores(guard.index, [np.clip(rotate_scale(src, angle), 0, 1)])
        # rotate_scale turns the image by -angle: the check aligns it back at -angle
        assert v.best == j and abs(v.transform["angle"] + angle) <= 2.0 and v.transform["orientation"] == 0
        assert v.score > 0.8


def test_an_eye_magnified_inside_the_same_field_of_view_is_aligned_at_its_scale():
    """Another visit through a narrower field angle shows the eye larger inside a field of view of the same size:
    the query is shrunk to match, and the field's rim must not then enter the correlation as a vessel (the vessel
    map drops the edge of the image data, :data:`~synfundus_guard.audit.pixel_match.VESSEL_EDGE`). The real photo
    and a phantom, the eye magnified by 1/0.9 in an unchanged field: aligned at a scale of 0.86-0.94 and scored
    above 0.75 (with the rim's response: 0.71 and 0.66, the phantom at scale 0.96)."""
    from synfundus_guard.audit.pixel_match import sketch_spectra

    retina = resize_image(skdata.retina().astype(np.float32) / 255.0, 256, 256)
    phantom = render_visit(PhantomPatient.from_seed(3, 1), visit=0, size=256, seed=3)[0]
    for img in (retina, phantom):
        fov = detect_fov(img)
        yy, xx = np.mgrid[:256, :256]
        field = (np.hypot(yy - fov.cy, xx - fov.cx) <= fov.radius)[..., None]
        magnified = rotate_scale(img, 0.0, 1 / 0.9) * field  # the eye 1/0.9 larger, same field
        assert abs(detect_fov(magnified).radius - fov.radius) < 2
        template = sketch_spectra(make_sketch(img, "vessel")[None].astype(np.float32))
        score, t = QuerySketch(magnified, kind="vessel", disc_grid=REVISIT_GRID).score_many(template, [(0, 0, 0.0)])[0]
        assert 0.86 <= t["scale"] <= 0.94 and score > 0.75, (score, t)


def test_peak_heights_recover_a_peak_between_the_searched_shifts():
    """A correlation peak that lies between integer shifts: the parabolic estimate gives the paraboloid's own vertex
    height (exact for a paraboloid), not the highest sample; a peak on the window's border or one without a
    maximum's curvature keeps its sampled height; and the vessel kind scores by it while band sketches keep the
    highest sample."""
    from synfundus_guard.audit.pixel_match import SUBPIXEL, peak_heights

    w = 9
    yy, xx = np.mgrid[:w, :w].astype(np.float64)
    inner = 0.9 - 0.05 * ((xx - 4.3) ** 2 + (yy - 3.6) ** 2)  # vertex 0.9 at (3.6, 4.3)
    edge = 0.8 - 0.05 * ((xx - 8.4) ** 2 + (yy - 4.0) ** 2)  # its best sample is on the last column
    flat = np.full((w, w), 0.5)
    windows = np.stack([inner, edge, flat])[:, None]  # (3 pairs, 1 view, w, w)
    best = np.argmax(windows.reshape(3, -1), axis=1)
    heights = peak_heights(windows, best)
    sampled = windows.reshape(3, -1)[np.arange(3), best]
    assert abs(heights[0] - 0.9) < 1e-9 and sampled[0] < 0.9 - 1e-3
    assert heights[1] == sampled[1] < 0.8  # the vertex lies beyond the last column searched: no estimate there
    assert heights[2] == sampled[2]
    assert SUBPIXEL == frozenset({"vessel"})
    img = render_visit(PhantomPatient.from_seed(SEED, 1), visit=0, size=SIZE, seed=SEED)[0]
    other = render_visit(PhantomPatient.from_seed(SEED, 1), visit=1, size=SIZE, seed=SEED)[0]
    vessel, band = QuerySketch(other, kind="vessel"), QuerySketch(other)
    assert vessel.subpixel and not band.subpixel
    template = make_sketch(img, "vessel")
    nearest = copy.copy(vessel)
    nearest.subpixel = False
    assert vessel.score(template)[0] >= nearest.score(template)[0]


def test_vesselness_equals_scikit_image_frangi():
    """The shorter-kernel Frangi gives scikit-image's result (stored templates stay valid) on real and phantom
    maps, to float rounding: where the two eigenvalues' magnitudes tie to rounding, Frangi's ratio may take them in
    the other order (it is discontinuous there), so a rare pixel may differ more."""
    from skimage.filters import frangi

    from synfundus_guard.audit._frangi import frangi_dark
    from synfundus_guard.audit.pixel_match import _equalised

    retina = resize_image(skdata.retina().astype(np.float32) / 255.0, 256, 256)
    phantom = render_visit(PhantomPatient.from_seed(3, 1), visit=0, size=256, seed=3)[0]
    for img in (retina, phantom):
        eq, _, _ = _equalised(img)
        ours, ref = frangi_dark(eq, (1.0, 1.5, 2.0)), frangi(eq, sigmas=(1.0, 1.5, 2.0), black_ridges=True)
        assert ours.dtype == ref.dtype and ref.max() > 0.5
        off = np.abs(ours - ref) > 1e-6
        assert off.sum() <= 2 and np.abs(ours - ref).max() < 1e-2


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_suppress_lesions_flattens_blobs_and_spots_and_keeps_vessels():
    """A dark blob (haemorrhage) is filled and a bright spot (cotton-wool) clipped; a curved vessel as wide as the
    blob keeps its depth, thin oblique ones at least half of it, and the Frangi map still finds the vessel. The
    image is smoothed as :func:`_equalised` smooths a canonical image (sigma 0.7) before ranking it."""
    from scipy import ndimage as ndi

    from synfundus_guard.audit.pixel_match import LESION_CLIP, suppress_lesions, vesselness

    side = 96
    yy, xx = np.mgrid[:side, :side]
    inner = (yy > 8) & (yy < side - 8) & (xx > 8) & (xx < side - 8)
    bend = np.abs(yy - (20 + 0.004 * (xx - 48) ** 2)) <= 1.5  # a 4 px wide, gently curved vessel
    blob = _disc((side, side), 62, 25, 2.5)  # 6 px across, as wide as that vessel
    spot = _disc((side, side), 70, 45, 3.0)  # 7 px across
    for slope, offset in ((0.3, 60.0), (0.7, 60.4), (-0.45, 70.5)):  # thin vessels between the segments' angles
        thin = np.abs(xx - slope * yy - offset) <= 0.5
        eq = np.zeros((side, side), np.float32)
        eq[bend | thin | blob] = -1.0
        eq[spot] = 1.0
        eq = ndi.gaussian_filter(eq, 0.7)
        out = suppress_lesions(eq)
        core = thin & inner & ~_disc((side, side), 62, 25, 6.0) & ~_disc((side, side), 70, 45, 8.0)
        assert np.mean(out[core] / eq[core]) > 0.5, slope  # thin oblique vessels keep at least half their depth
        assert np.mean(out[bend & inner] / eq[bend & inner]) > 0.9
        assert out[blob].min() > 0.3 * eq[blob].min()  # filled towards the background
        assert out[spot].max() < LESION_CLIP + 0.1 < 0.5 * eq[spot].max()  # clipped near the local median
        assert vesselness(out)[bend].mean() > 0.5 * vesselness(eq)[bend].mean()


def test_lesions_change_a_visit_s_vessel_template_less_than_before():
    """The template of a DR grade >= 3 visit correlates better with the same visit rendered without lesions
    (same pose, light, blur) once lesions are suppressed."""
    from unittest import mock

    from synfundus_guard.audit import pixel_match

    def ncc(a, b):
        a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    seed, rows = SEED, []
    patients = [p for p in range(60) if PhantomPatient.from_seed(seed, p).dr_grade(1) >= 3][:4]
    assert len(patients) == 4
    for p in patients:
        pt = PhantomPatient.from_seed(seed, p)
        sick, clean = (render_visit(pt, visit=1, size=SIZE, seed=seed, lesions=lesions)[0] for lesions in (True, False))
        now = ncc(make_sketch(sick, "vessel"), make_sketch(clean, "vessel"))
        with mock.patch.object(pixel_match, "suppress_lesions", lambda eq: eq):
            before = ncc(make_sketch(sick, "vessel"), make_sketch(clean, "vessel"))
        rows.append((before, now))
    assert all(now > before + 0.05 for before, now in rows), rows


def test_vessel_search_of_kind_ivfpq_retrieves_what_exact_search_retrieves():
    """Above EXACT_MAX training images the vessel search is an ivfpq index (its recall at 100 k and 1 M descriptors
    is measured by bench/bench_search.py); on 80 it visits every list and re-ranks exactly, so its candidates are
    exact search's, with the same views."""
    from synfundus_guard.audit.vessel_search import VesselSearch

    def template(p: int, visit: int) -> np.ndarray:
        img = render_visit(PhantomPatient.from_seed(SEED + 1, p), visit=visit, size=128, seed=SEED + 1)[0]
        return QuerySketch(img, kind="vessel").template()

    templates = np.stack([template(p, 0) for p in range(80)]).astype(np.float16)  # as the index stores them
    queries = [template(p, 1) for p in range(12)]
    exact, approx = (VesselSearch.build(templates, kind=kind) for kind in ("auto", "ivfpq"))
    assert exact.faiss_index.ntotal == approx.faiss_index.ntotal == 80
    assert type(approx.faiss_index).__name__ == "IndexRefineFlat"
    for e, a in zip(exact.retrieve(queries, k=5), approx.retrieve(queries, k=5)):
        assert e.candidates == a.candidates  # the same training images, each with the same best view
        assert a.embedding_sim == pytest.approx(e.embedding_sim, abs=1e-5)


def _revisit_templates(n: int) -> list[np.ndarray]:
    return [QuerySketch(render_visit(PhantomPatient.from_seed(SEED, p), visit=1, size=SIZE, seed=SEED)[0],
                        kind="vessel").template() for p in range(n)]


def test_vessel_search_is_kept_in_the_index_folder_and_loaded_from_it(guard, monkeypatch):
    """Built once (here by the calibration), written 0600 under the index folder's derived/, and loaded from there
    (memory-mapped) by every later load of the index: the same candidates as a fresh build, nothing rebuilt."""
    import stat

    from synfundus_guard.audit.vessel_search import VesselSearch
    from synfundus_guard.audit.vessels import vessel_search
    from synfundus_guard.embed.registry import embedder_from_spec
    from synfundus_guard.index.store import load_index

    kept = list((guard.index.path / "derived").glob("vessel_search-*.faiss"))
    assert len(kept) == 1 and stat.S_IMODE(kept[0].stat().st_mode) == 0o600
    queries = _revisit_templates(3)
    fresh = VesselSearch.build(guard.index.vessels).retrieve(queries, k=5)
    monkeypatch.setattr(VesselSearch, "build", classmethod(lambda cls, *a, **kw: pytest.fail("rebuilt")))
    again = load_index(guard.index.path, embedder_from_spec(guard.index.meta["embedder"]))
    loaded = vessel_search(again).retrieve(queries, k=5)
    assert [r.candidates for r in loaded] == [r.candidates for r in fresh]
    assert [r.embedding_sim for r in loaded] == pytest.approx([r.embedding_sim for r in fresh], abs=1e-6)


def test_a_damaged_or_unwritable_kept_vessel_search_is_rebuilt(guard, tmp_path, monkeypatch):
    import shutil

    from synfundus_guard.audit.vessels import vessel_search
    from synfundus_guard.embed.registry import embedder_from_spec
    from synfundus_guard.index import store

    folder = Path(shutil.copytree(guard.index.path, tmp_path / "idx"))
    (kept,) = (folder / "derived").glob("vessel_search-*.faiss")
    kept.write_bytes(b"not a faiss index")
    queries = _revisit_templates(2)
    want = [r.candidates for r in vessel_search(guard.index).retrieve(queries, k=5)]

    def load():
        return store.load_index(folder, embedder_from_spec(guard.index.meta["embedder"]))

    assert [r.candidates for r in vessel_search(load()).retrieve(queries, k=5)] == want
    assert store.read_faiss(kept).ntotal == guard.index.size  # rewritten whole
    kept.unlink()

    def unwritable(index, path):
        raise OSError("read-only file system")

    monkeypatch.setattr(store, "_write_faiss_atomic", unwritable)
    assert [r.candidates for r in vessel_search(load()).retrieve(queries, k=5)] == want  # kept in memory instead
    assert not list((folder / "derived").iterdir())


def test_first_pass_clears_what_it_does_not_flag_and_the_full_path_decides_the_rest(guard):
    """The check refines 3 candidate-views first: an image that flags nothing there keeps those scores (a match
    score at most the full path's); an image they flag has every candidate refined and ends with exactly the full
    path's scores and reasons. Either way, the decisions are the full path's on these images."""
    calibrated = next(c for c in build_checks(policy=load_policy("public"), guard=guard) if isinstance(c, VesselCheck))
    assert calibrated.first_pass and calibrated.fingerprint()["first_pass"]
    full = calibrated.full_path()
    assert full.fingerprint()["first_pass"] is None
    revisits = [render_visit(PhantomPatient.from_seed(SEED, p), visit=1, size=SIZE, seed=SEED)[0] for p in range(4)]
    novel = [render_visit(PhantomPatient.from_seed(SEED + 7, p), visit=1, size=SIZE, seed=SEED + 7)[0]
             for p in range(6)]
    batch = [Candidate(f"x{i}.png", im) for i, im in enumerate(revisits + novel)]
    cascaded, in_full = calibrated.check_batch(batch), full.check_batch(batch)
    assert [f.flagged for f in cascaded] == [f.flagged for f in in_full] == [True] * 4 + [False] * 6
    assert all(f.private["every_candidate_refined"] for f in in_full)
    for c, f in zip(cascaded, in_full):
        assert c.private["every_candidate_refined"] or not c.flagged  # a flag always comes from the full path
        if c.private["every_candidate_refined"]:
            assert (c.scores, c.reasons, c.private) == (f.scores, f.reasons, f.private)
        else:  # cleared by the first pass
            assert c.scores[SCORE_KEY] <= f.scores[SCORE_KEY]
    # most new patients stop at the first pass; one whose first-pass margin overstates the full one enough to
    # reach the threshold goes on (here one of 6: margin 0.113 in the first pass, 0.108 in full, threshold 0.112)
    assert sum(c.private["every_candidate_refined"] for c in cascaded[4:]) <= 1


def test_a_policy_can_turn_the_first_pass_off(guard):
    """``identity.vessels.first_pass: false`` aligns every candidate of every image (the check's fingerprint says
    so, so a cached audit under the other setting is not reused); a wrong type is a policy error."""
    from synfundus_guard.errors import PolicyError
    from synfundus_guard.policies.schema import parse_policy

    text = "name: exhaustive\nidentity:\n  vessels: {enabled: true, action: block, quantile: 0.999, first_pass: %s}\n"
    policy = parse_policy(text % "false")
    assert policy.identity.vessels.first_pass is False and parse_policy(text % "true").identity.vessels.first_pass
    check = next(c for c in build_checks(policy=policy, guard=guard) if isinstance(c, VesselCheck))
    assert not check.first_pass and check.fingerprint()["first_pass"] is None
    novel = render_visit(PhantomPatient.from_seed(SEED + 7, 0), visit=1, size=SIZE, seed=SEED + 7)[0]
    assert check.check_batch([Candidate("n.png", novel)])[0].private["every_candidate_refined"]
    with pytest.raises(PolicyError, match="first_pass: expected bool"):
        parse_policy(text % "'no'")


def test_margin_rule_flags_revisits_on_its_own_and_not_new_patients(guard):
    """The margin (match score less the best score of another patient's candidate) has its own holdout threshold:
    with the score rule out of reach, it still flags another visit of training patients, and no new patient."""
    from synfundus_guard.audit.vessels import MARGIN_KEY

    calibrated = next(c for c in build_checks(policy=load_policy("public"), guard=guard) if isinstance(c, VesselCheck))
    assert calibrated.margin_threshold is not None
    assert calibrated.fingerprint()["rule_quantile"] == pytest.approx(1 - (1 - 0.999) / 2)
    margin_only = VesselCheck(index=guard.index, threshold=1.0, margin_threshold=calibrated.margin_threshold)
    revisits = [render_visit(PhantomPatient.from_seed(SEED, p), visit=2, size=SIZE, seed=SEED)[0] for p in range(4)]
    novel = [render_visit(PhantomPatient.from_seed(SEED + 9, p), visit=0, size=SIZE, seed=SEED + 9)[0] for p in range(4)]
    findings = margin_only.check_batch([Candidate(f"x{i}.png", im) for i, im in enumerate(revisits + novel)])
    assert all(f.flagged and f.reasons == (f.reasons[0],) and "far better than any other" in f.reasons[0]
               for f in findings[:4])
    assert not any(f.flagged for f in findings[4:])
    assert all(f.scores[MARGIN_KEY] > calibrated.margin_threshold for f in findings[:4])


def test_margin_is_over_other_patients_not_the_same_patients_other_images(tmp_path):
    """A patient indexed twice (two visits) is one patient: a third visit's margin is taken over the best candidate
    of another patient, not over that patient's other image (which would make the margin of every patient with
    several training images small)."""
    from synfundus_guard.audit.memorization import align_candidates
    from synfundus_guard.audit.vessels import REFINE, REVISIT_GRID, SAME_EYE_VIEWS, vessel_scores, vessel_search
    from synfundus_guard.audit.vessel_search import view_params

    def img(seed, p, v):
        return render_visit(PhantomPatient.from_seed(seed, p), visit=v, size=128, seed=seed)[0]

    write_image_folder(tmp_path / "train", [(f"p{p}_{v}.png", img(SEED, p, v), f"I{p}-{v}", f"P{p}")
                                            for p in range(12) for v in ((0, 1) if p == 0 else (0,))])
    write_image_folder(tmp_path / "holdout", [(f"h{p}.png", img(SEED + 5, p, 0), f"H{p}", f"H{p}") for p in range(20)])
    g = prepare_guard(train_dir=tmp_path / "train", holdout_dir=tmp_path / "holdout", k=10, cache_dir=tmp_path / "c")
    query = img(SEED, 0, 2)
    (v,) = vessel_scores(g.index, [query])
    sketch = QuerySketch(query, kind="vessel", disc_grid=REVISIT_GRID)
    a = align_candidates(sketch, vessel_search(g.index).retrieve([sketch.template()], k=10)[0], g.index.vessels,
                         view_params=view_params, refine=REFINE, extra_views=SAME_EYE_VIEWS, refine_each=True)
    pid = {j: g.index.records[j]["patient_id"] for j in a.per_candidate}
    assert pid[v.best] == "P0" and list(pid.values()).count("P0") == 2  # both of P0's images are candidates
    others = max(s for j, s in a.per_candidate.items() if pid[j] != "P0")
    second = sorted(a.per_candidate.values())[-2]  # P0's other image
    assert v.margin == pytest.approx(v.score - others) and v.margin > v.score - second


def test_an_index_of_one_patient_has_no_margins_and_the_rule_is_off(tmp_path):
    """With one training patient there is no other patient to compare with: every holdout margin is missing
    (stored as null in the calibration cache, read back as NaN), and the check runs on its score alone."""
    def img(seed, p, v):
        return render_visit(PhantomPatient.from_seed(seed, p), visit=v, size=64, seed=seed)[0]

    write_image_folder(tmp_path / "train", [(f"p0_{v}.png", img(SEED, 0, v), f"I0-{v}", "P0") for v in range(2)])
    write_image_folder(tmp_path / "holdout", [(f"h{p}.png", img(SEED + 5, p, 0), f"H{p}", f"H{p}") for p in range(20)])
    runs = [prepare_guard(train_dir=tmp_path / "train", holdout_dir=tmp_path / "holdout", k=10,
                          cache_dir=tmp_path / "c") for _ in range(2)]  # the second reads the cache
    for g in runs:
        assert np.isnan(g.calibration.vessel_margins).all() and len(g.calibration.vessel_margins) == 20
        assert g.calibration.margin_threshold(0.999) is None
    np.testing.assert_array_equal(runs[0].calibration.vessel_scores, runs[1].calibration.vessel_scores)
    check = next(c for c in build_checks(policy=load_policy("public"), guard=runs[1]) if isinstance(c, VesselCheck))
    assert check.margin_threshold is None and check.fingerprint()["rule_quantile"] == 0.999
    (finding,) = check.check_batch([Candidate("x.png", img(SEED, 0, 2))])
    assert "vessels.margin" not in finding.scores


def test_spacing_quantile_holds_an_exponential_tail_to_its_quantile():
    """Margins (gaps between the top two similarities) have an exponential tail: from 100 samples, the 0.9995
    quantile is exceeded by about 0.05 % of new samples on average, never set below the sample maximum, and the
    empirical quantile is used where the sample resolves it."""
    from synfundus_guard.index.calibrate import spacing_quantile

    rng = np.random.default_rng(0)
    exceed = []
    for _ in range(200):
        holdout = rng.exponential(0.02, 100)
        thr = spacing_quantile(holdout, 0.9995)
        assert thr >= holdout.max()
        exceed.append(np.exp(-thr / 0.02))  # the true tail probability above the threshold
    assert 0.0002 < np.mean(exceed) < 0.0015
    sample = rng.exponential(0.02, 1000)
    assert spacing_quantile(sample, 0.99) == pytest.approx(np.quantile(sample, 0.99))


def test_vessel_map_skips_the_second_ranking_only_where_it_would_change_nothing():
    """Where the image data covers every ranked pixel the equalised crop is already its own ranking there, so the
    vessel map skips ranking it again: the same map as ranking it again, for fields inside the frame and cut by it."""
    from synfundus_guard.audit.pixel_match import _equalised, _rank_equalise, _ranked_mask, _vessel_map, vesselness

    img = render_visit(PhantomPatient.from_seed(6, 2), visit=0, size=256)[0]
    covered = 0
    for im in (img, np.ascontiguousarray(img[30:226]), np.ascontiguousarray(img[:, 40:])):
        eq, is_disc, data = _equalised(im)
        covered += np.array_equal(data, _ranked_mask(is_disc))
        np.testing.assert_array_equal(_vessel_map(eq, is_disc, data), vesselness(_rank_equalise(eq, data), data))
    assert covered == 1  # the whole field, and two cut by the frame
