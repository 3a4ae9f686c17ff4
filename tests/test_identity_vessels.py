"""Vessel biometrics: templates, matching, calibration and the check, on phantoms and the real retina photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from skimage import data as skdata

from synfundus_guard.audit.base import Candidate, run_checks
from synfundus_guard.audit.identity import (
    VesselCheck, VesselTemplate, build_template, calibrate_vessels, match, match_score, stack_templates,
    unstack_templates)
from synfundus_guard.data.fov import resize_image
from synfundus_guard.data.perturb import affine, jpeg, photometric
from synfundus_guard.data.phantom import PhantomPatient, render_visit

N = 6


@pytest.fixture(scope="module")
def visits() -> dict[int, list[VesselTemplate]]:
    """Templates of visits 0 and 1 of N phantom patients (256 px)."""
    out = {0: [], 1: []}
    for i in range(N):
        patient = PhantomPatient.from_seed(21, i)
        for v in (0, 1):
            out[v].append(build_template(render_visit(patient, visit=v, size=256, seed=21)[0]))
    return out


@pytest.fixture(scope="module")
def retina_template() -> VesselTemplate:
    return build_template(skdata.retina().astype(np.float32) / 255.0)


def test_same_eye_scores_above_other_eyes(visits: dict[int, list[VesselTemplate]]) -> None:
    for i in range(N):
        genuine = match_score(visits[1][i], visits[0][i])
        others = [match_score(visits[1][i], visits[0][j]) for j in range(N) if j != i]
        assert genuine > max(others) + 0.05, (i, genuine, others)


def test_real_photo_matches_its_copies_not_phantoms(retina_template: VesselTemplate,
                                                    visits: dict[int, list[VesselTemplate]]) -> None:
    r = resize_image(skdata.retina().astype(np.float32) / 255.0, 384, 384)
    copies = [affine(r, dx=14, dy=-9, angle=12, scale=1.05), jpeg(photometric(r, brightness=0.08, contrast=0.85,
                                                                              gamma=1.25), 50),
              np.ascontiguousarray(r[:, ::-1])]
    impostor = max(match_score(retina_template, t) for t in visits[0])
    for img in copies:
        assert match_score(build_template(img), retina_template) > impostor + 0.3
    found = match(build_template(copies[2]), retina_template)
    assert found.mirrored


def test_templates_round_trip_without_pickle(visits: dict[int, list[VesselTemplate]]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **stack_templates(visits[0]))
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        back = unstack_templates({k: data[k] for k in data.files})
    assert all(np.array_equal(a.maps, b.maps) for a, b in zip(back, visits[0]))
    one = VesselTemplate.from_arrays(visits[0][0].to_arrays())
    assert np.array_equal(one.maps, visits[0][0].maps)
    with pytest.raises(ValueError):
        VesselTemplate.from_arrays({"maps": one.maps, "version": np.array([99])})


def test_black_image_matches_nothing(visits: dict[int, list[VesselTemplate]]) -> None:
    empty = build_template(np.zeros((128, 128, 3), np.float32))
    assert empty.empty and match_score(empty, visits[0][0]) == 0.0 and match_score(visits[0][0], empty) == 0.0


def test_calibration_is_a_quantile_of_best_holdout_scores(visits: dict[int, list[VesselTemplate]]) -> None:
    train, holdout = visits[0][:3], visits[1][3:]
    neigh = [[0, 1, 2]] * len(holdout)
    best = [max(match_score(h, t) for t in train) for h in holdout]
    assert calibrate_vessels(holdout, train, neigh, 1.0) == pytest.approx(max(best))
    assert calibrate_vessels(holdout, train, neigh, 0.0) == pytest.approx(min(best))
    with pytest.raises(ValueError):
        calibrate_vessels(holdout, train, neigh, 1.5)
    with pytest.raises(ValueError):
        calibrate_vessels(holdout, train, neigh[:1], 0.5)


def test_check_flags_the_training_eye_privately(visits: dict[int, list[VesselTemplate]]) -> None:
    train = visits[0][:4]
    threshold = calibrate_vessels(visits[1][4:], train, [[0, 1, 2, 3]] * 2, 1.0)
    check = VesselCheck(train_templates=lambda j: train[j], neighbours=lambda imgs: [[3, 1, 0, 2]] * len(imgs),
                        threshold=threshold)
    again = render_visit(PhantomPatient.from_seed(21, 1), visit=2, size=256, seed=21)[0]
    other = render_visit(PhantomPatient.from_seed(21, 5), visit=0, size=256, seed=21)[0]
    hit, miss = check.check_batch([Candidate("a.png", again), Candidate("b.png", other)])
    assert hit.flagged and hit.private["train_index"] == 1
    assert hit.scores["vessels.match_score"] > threshold and "1" not in hit.reasons[0].split(":")[0]
    assert not miss.flagged and miss.scores["vessels.match_score"] <= threshold
    assert check.fingerprint()["threshold"] == threshold


def test_check_fails_closed_when_candidates_are_missing(visits: dict[int, list[VesselTemplate]]) -> None:
    def broken(images: list[np.ndarray]) -> list[list[int]]:
        raise RuntimeError("index unavailable")

    check = VesselCheck(train_templates=visits[0], neighbours=broken, threshold=0.5)
    [[finding]] = run_checks([check], [Candidate("a.png", np.zeros((64, 64, 3), np.float32))])
    assert finding.flagged and "index unavailable" in finding.error
