"""Face check: LFW faces (held-out half) pasted into fundus photographs; clean photographs pass."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from synfundus_guard.audit.base import Candidate
from synfundus_guard.audit.identity import FaceCheck, detect_faces
from synfundus_guard.audit.identity.overlays import paste_face
from synfundus_guard.data.fov import resize_image
from synfundus_guard.data.phantom import PhantomPatient, render_visit


@pytest.fixture(scope="module")
def retina256() -> np.ndarray:
    return resize_image(skdata.retina().astype(np.float32) / 255.0, 256, 256)


def test_pasted_faces_are_flagged(retina256: np.ndarray) -> None:
    faces = skdata.lfw_subset()[50:100]  # the half not used to train or tune
    rng = np.random.default_rng(5)
    picks = rng.choice(len(faces), size=6, replace=False)
    batch = []
    for k, i in enumerate(picks):
        side = int(rng.integers(60, 120))
        top, left = int(rng.integers(0, 256 - side)), int(rng.integers(0, 256 - side))
        batch.append(Candidate(f"{k}.png", paste_face(retina256, faces[i], side=side, top=top, left=left)))
    findings = FaceCheck().check_batch(batch)
    # The two detectors together find 96 % of held-out pasted faces (bench/bench_identity.py), so allow one miss.
    assert sum(f.flagged for f in findings) >= 5
    hit = next(f for f in findings if f.flagged)
    assert hit.reasons[0].startswith("face detected") and hit.private["boxes"]


def test_real_photograph_of_a_face_is_flagged() -> None:
    finding = FaceCheck().check_batch([Candidate("a.png", skdata.astronaut() / 255.0)])[0]
    assert finding.flagged


def test_clean_photographs_pass(retina256: np.ndarray) -> None:
    images = [retina256, skdata.retina().astype(np.float32) / 255.0, skdata.coffee() / 255.0]
    images += [render_visit(PhantomPatient.from_seed(4, i), visit=0, size=256)[0] for i in range(4)]
    findings = FaceCheck().check_batch([Candidate(f"{i}.png", im) for i, im in enumerate(images)])
    assert not any(f.flagged for f in findings)
    assert all(set(f.scores) == {"faces.votes", "faces.hog"} for f in findings)


def test_odd_inputs_do_not_crash() -> None:
    assert [b.detector for b in detect_faces(np.zeros((40, 30), np.float32))] == ["hog"]
    assert all(b.detector == "hog" for b in detect_faces(np.ones((300, 90, 3), np.float32)))
    assert FaceCheck().fingerprint()["hog_model"]


def test_small_images_are_searched_only_for_faces_of_min_face_px() -> None:
    from synfundus_guard.audit.identity.faces import FaceOptions

    opts = FaceOptions()
    boxes = []
    for i in range(6):  # 32 px images are enlarged to 96 px for the detectors; windows still span >= 16 px
        img = resize_image(render_visit(PhantomPatient.from_seed(4, i), visit=0, size=64)[0], 32, 32)
        boxes += detect_faces(img, opts)
    assert boxes, "the detectors must still scan small images"
    assert min(b.box[2] - b.box[0] for b in boxes) >= opts.min_face_px - 1
