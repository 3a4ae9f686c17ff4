"""Vessel biometrics: another visit of a training patient is flagged; other patients are not."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from synfundus_guard.audit.base import Candidate
from synfundus_guard.audit.pixel_match import QuerySketch, make_sketch
from synfundus_guard.audit.runner import build_checks, prepare_guard
from synfundus_guard.audit.vessels import SCORE_KEY, VesselCheck
from synfundus_guard.data.fov import resize_image
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


def test_vesselness_equals_scikit_image_frangi():
    """The shorter-kernel Frangi gives scikit-image's result (stored templates stay valid) on real and phantom
    maps."""
    from skimage.filters import frangi

    from synfundus_guard.audit._frangi import frangi_dark
    from synfundus_guard.audit.pixel_match import _equalised

    retina = resize_image(skdata.retina().astype(np.float32) / 255.0, 256, 256)
    phantom = render_visit(PhantomPatient.from_seed(3, 1), visit=0, size=256, seed=3)[0]
    for img in (retina, phantom):
        eq, _ = _equalised(img)
        ours, ref = frangi_dark(eq, (1.0, 1.5, 2.0)), frangi(eq, sigmas=(1.0, 1.5, 2.0), black_ridges=True)
        assert ours.dtype == ref.dtype and ref.max() > 0.5
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
