"""The phantom fundus generator: determinism, identity across visits, pose inside a fixed FOV, lesions, files."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats

from synfundus_guard.data.folder import scan_folder
from synfundus_guard.data.images import load_image
from synfundus_guard.audit.membership.run import check_disjoint
from synfundus_guard.data import phantom as phantom_module
from synfundus_guard.data.phantom import (
    FOV_FRACTION,
    LABEL_COLUMNS,
    MAX_PATIENTS,
    MAX_VISITS,
    PhantomPatient,
    _vessel_tree,
    generate_phantom,
    render_vessel_mask,
    render_visit,
)
from synfundus_guard.errors import InputError
from synfundus_guard.progress import Progress, ProgressTask

S = 128


def _patients(pred, *, seed: int = 0, n: int = 1) -> list[PhantomPatient]:
    """The first ``n`` patients of ``seed`` that satisfy ``pred``."""
    found = [p for p in (PhantomPatient.from_seed(seed, i) for i in range(300)) if pred(p)]
    assert len(found) >= n
    return found[:n]


def _radius(size: int) -> np.ndarray:
    c = np.arange(size) + 0.5 - size / 2
    return np.hypot(c[None, :], c[:, None]) / (FOV_FRACTION * size / 2)


def _unpose(layer: np.ndarray, pose: dict) -> np.ndarray:
    """Map an image layer back to patient coordinates using the documented pose of its labels."""
    size = layer.shape[0]
    th, s, c = math.radians(pose["rotation_deg"]), pose["scale"], (size - 1) / 2
    m = s * np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])  # (row, col) order
    t = np.array([pose["shift_y"], pose["shift_x"]]) * size
    return ndimage.affine_transform(layer, m, offset=c + t - m @ np.array([c, c]), order=1)


def test_patient_is_a_pure_function_of_seed_and_index():
    a, b = PhantomPatient.from_seed(5, 3), PhantomPatient.from_seed(5, 3)
    assert a == b and hash(a) == hash(b)
    assert a != PhantomPatient.from_seed(5, 4) and a != PhantomPatient.from_seed(6, 3)
    assert a.patient_id == "S5-P00003"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.eye = "OS"  # type: ignore[misc]


@pytest.mark.parametrize("seed,index", [(-1, 0), (0, -2)])
def test_patient_rejects_negative_seed_or_index(seed, index):
    with pytest.raises(InputError, match="non-negative"):
        PhantomPatient.from_seed(seed, index)


def test_patient_anatomy_is_plausible():
    patients = [PhantomPatient.from_seed(2, i) for i in range(200)]
    for p in patients:
        nasal = 1 if p.eye == "OD" else -1  # right eye: disc on the right of the image
        assert 0.25 <= nasal * p.disc_x <= 0.4 and abs(p.disc_y) <= 0.06
        assert nasal * p.macula_x < nasal * p.disc_x  # macula temporal to the disc
        assert p.glaucoma_suspect == (p.cup_to_disc > 0.6)
        assert all(p.dr_grade(v) <= p.dr_grade(v + 1) <= 4 for v in range(6))  # DR never regresses
    assert {p.eye for p in patients} == {"OD", "OS"}
    assert 0.03 < np.mean([p.glaucoma_suspect for p in patients]) < 0.3
    assert {p.dr_grade(0) for p in patients} == {0, 1, 2, 3, 4}
    assert any(p.amd for p in patients) and not all(p.amd for p in patients)


def test_vessel_tree_has_arcades_branches_and_tapering_tubes():
    for p in (PhantomPatient.from_seed(0, i) for i in range(10)):
        tree = _vessel_tree(p)
        assert 50 <= len(tree) <= 150
        kinds = {k for _, _, k in tree}
        assert kinds == {0, 1}  # arteries and veins
        widest = {k: max(w[0] for _, w, kk in tree if kk == k) for k in kinds}
        assert widest[0] < widest[1]  # arteries thinner than veins
        assert all(w[-1] <= w[0] for _, w, _ in tree)  # taper
        starts = np.array([pts[0] for pts, _, _ in tree])
        from_disc = np.hypot(starts[:, 0] - p.disc_x, starts[:, 1] - p.disc_y) < 0.2 * p.disc_radius
        assert from_disc.sum() == 8  # four arcades, each an artery and a vein, leave from the cup


def test_render_is_deterministic_and_seed_dependent():
    p = PhantomPatient.from_seed(1, 2)
    a, la = render_visit(p, visit=1, size=S, seed=4)
    b, lb = render_visit(p, visit=1, size=S, seed=4)
    assert np.array_equal(a, b) and la == lb
    c, _ = render_visit(p, visit=1, size=S, seed=5)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size", [64, 97, 256, 1024])
def test_render_sizes_dtype_and_black_fov_background(size):
    img, labels = render_visit(PhantomPatient.from_seed(0, 1), visit=0, size=size, seed=0)
    assert img.shape == (size, size, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    r = _radius(size)
    outside = r > 1 + 1.0 / (FOV_FRACTION * size / 2)
    assert np.all(img[outside] == 0.0)  # black outside the circular field of view
    assert img[r < 0.9].mean() > 0.1 and np.all(img[r < 0.9].max(axis=1) > 0)
    fundus = img[r < 0.9].mean(axis=0)
    assert fundus[0] > fundus[1] > fundus[2]  # orange-red fundus
    assert 0.0 <= labels["quality"] <= 1.0


@pytest.mark.parametrize("kwargs", [{"size": 32}, {"size": 4096}, {"size": 128, "visit": -1},
                                    {"size": 128, "seed": -3}, {"size": 128.0}])
def test_render_rejects_bad_arguments(kwargs):
    kwargs = {"visit": 0, **kwargs}
    with pytest.raises(InputError):
        render_visit(PhantomPatient.from_seed(0, 0), **kwargs)


def test_pose_moves_the_retina_inside_a_fixed_fov():
    p = PhantomPatient.from_seed(0, 3)
    fov = []
    masks = []
    for visit in range(4):
        img, labels = render_visit(p, visit=visit, size=S, seed=0)
        lit = img.sum(axis=2) > 0
        ys, xs = np.nonzero(lit)
        fov.append((xs.mean(), ys.mean(), lit.sum()))
        pose = labels["pose"]
        assert math.hypot(pose["shift_x"], pose["shift_y"]) <= 0.02
        assert abs(pose["rotation_deg"]) <= 5 and abs(pose["scale"] - 1) <= 0.03
        masks.append(render_vessel_mask(p, size=S, visit=visit, seed=0))
    fov = np.array(fov)
    assert np.ptp(fov[:, 0]) < 0.5 and np.ptp(fov[:, 1]) < 0.5 and np.ptp(fov[:, 2]) < 0.01 * fov[0, 2]
    assert max(np.abs(m - masks[0]).mean() for m in masks[1:]) > 0.01  # while the vessels move


def test_vessel_mask_matches_the_dark_vessels_and_the_documented_pose():
    p = PhantomPatient.from_seed(0, 4)
    img, labels = render_visit(p, visit=2, size=S, seed=0)
    mask = render_vessel_mask(p, size=S, visit=2, seed=0)
    inner = _radius(S) < 0.85
    contrast = img[..., 1] / (ndimage.median_filter(img[..., 1], 9) + 1e-6)  # vs the local background
    assert contrast[inner & (mask > 0.6)].mean() < 0.85
    assert abs(contrast[inner & (mask < 0.01)].mean() - 1) < 0.05
    unposed = _unpose(mask, labels["pose"])
    reference = render_vessel_mask(p, size=S)
    assert np.corrcoef(unposed[inner], reference[inner])[0, 1] > 0.85


def _vessel_feature(img: np.ndarray, pose: dict) -> np.ndarray:
    """Vessel-enhanced green channel (dark thin structures), mapped back to patient coordinates."""
    green = img[..., 1]
    vessels = _unpose(np.clip(ndimage.gaussian_filter(green, 3) - green, 0, None), pose)
    f = ndimage.gaussian_filter(vessels, 1.0)[_radius(S) < 0.85]
    return (f - f.mean()) / f.std()


def test_identity_persists_across_visits():
    """Every later visit is re-identified among all patients' first visits from the image alone.

    Pose is undone with the visit's labels; illumination, blur, noise and lesions are not: identity must survive
    them, as it does for a real eye.
    """
    n = 12
    feats = {}
    for i in range(n):
        p = PhantomPatient.from_seed(0, i)
        for visit in range(3):
            img, labels = render_visit(p, visit=visit, size=S, seed=0)
            feats[i, visit] = _vessel_feature(img, labels["pose"])
    same = [np.mean(feats[i, 0] * feats[i, v]) for i in range(n) for v in (1, 2)]
    other = [np.mean(feats[i, 0] * feats[j, 1]) for i in range(n) for j in range(n) if i != j]
    assert np.mean(same) > np.mean(other) + 0.4
    for i in range(n):
        for v in (1, 2):
            scores = [np.mean(feats[i, v] * feats[j, 0]) for j in range(n)]
            assert int(np.argmax(scores)) == i


def test_dr_grade_zero_has_no_lesions():
    (p,) = _patients(lambda p: p.dr_grade(0) == 0 and not p.amd)
    with_lesions, labels = render_visit(p, visit=0, size=S, seed=0)
    without, _ = render_visit(p, visit=0, size=S, seed=0, lesions=False)
    assert labels["dr_grade"] == 0 and sum(labels["lesions"].values()) == 0
    assert np.array_equal(with_lesions, without)


@pytest.mark.parametrize("grade", [1, 2, 3, 4])
def test_dr_lesions_follow_the_grade(grade):
    (p,) = _patients(lambda p: p.dr_grade(0) == grade and not p.amd)
    img, labels = render_visit(p, visit=0, size=256, seed=0)
    clean, _ = render_visit(p, visit=0, size=256, seed=0, lesions=False)
    n = labels["lesions"]
    assert labels["dr_grade"] == grade and n["microaneurysm"] > 0
    assert (n["haemorrhage"] > 0) == (grade >= 2)
    assert (n["cotton_wool"] > 0) == (grade >= 3)
    assert (n.get("neovascularisation", 0) > 0) == (grade == 4)
    lit = clean[..., 1] > 0.02
    ratio = img[..., 1][lit] / clean[..., 1][lit]
    assert ratio.min() < 0.9  # dark red dots darken the green channel
    if grade >= 2:
        assert ratio.min() < 0.6  # haemorrhages
    if n["exudate"] or n["cotton_wool"]:
        assert ratio.max() > 1.3  # bright yellow/white lesions


def test_amd_drusen_are_yellow_spots_near_the_macula():
    (p,) = _patients(lambda p: p.amd and p.dr_grade(0) == 0)
    img, labels = render_visit(p, visit=0, size=S, seed=0)
    clean, _ = render_visit(p, visit=0, size=S, seed=0, lesions=False)
    assert labels["amd"] and labels["lesions"]["drusen"] > 0
    brighter = (img - clean)[..., :2].min(axis=2) > 0.03  # red and green both rise: yellow
    unposed = _unpose(brighter.astype(np.float32), labels["pose"]) > 0.5
    ys, xs = np.nonzero(unposed)
    radius = FOV_FRACTION * S / 2
    dist = np.hypot((xs + 0.5 - S / 2) / radius - p.macula_x, (ys + 0.5 - S / 2) / radius - p.macula_y)
    assert len(dist) > 5 and np.median(dist) < 0.3


def test_quality_falls_with_blur_and_darkness():
    qualities, measured = [], []
    inner = _radius(S) < 0.85
    for p in (PhantomPatient.from_seed(3, 0), PhantomPatient.from_seed(3, 1)):
        for visit in range(12):
            img, labels = render_visit(p, visit=visit, size=S, seed=0)
            vessels = inner & (render_vessel_mask(p, size=S, visit=visit, seed=0) > 0.5)
            green = img[..., 1]
            contrast = 1 - green[vessels].mean() / ndimage.median_filter(green, 9)[vessels].mean()  # blur lowers it
            qualities.append(labels["quality"])
            measured.append(img[inner].mean() * contrast)
    assert min(qualities) < 0.7 and max(qualities) > 0.9
    assert stats.spearmanr(qualities, measured)[0] > 0.4


class _Recorder(Progress):
    def __init__(self) -> None:
        self.done = 0

    def task(self, description: str, total: int | None = None) -> ProgressTask:
        recorder = self

        class _Task(ProgressTask):
            def advance(self, n: int = 1) -> None:
                recorder.done += n

        return _Task()


def test_generate_writes_images_and_labels(tmp_path):
    rec = _Recorder()
    ds = generate_phantom(tmp_path / "ds", patients=3, visits=2, size=64, seed=9, progress=rec)
    assert rec.done == 6 and ds.images == 6 and sum(ds.dr_grade_counts) == 6
    with open(ds.labels_path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == LABEL_COLUMNS
        rows = list(reader)
    assert [r["file_name"] for r in rows] == [f"p{i:05d}_v{v}.png" for i in range(3) for v in range(2)]
    assert rows[3]["image_id"] == "S9-P00001-V1" and rows[3]["patient_id"] == "S9-P00001"
    for r in rows:
        p = PhantomPatient.from_seed(9, int(r["patient_id"].removeprefix("S9-P")))
        assert r["eye"] == p.eye and int(r["dr_grade"]) == p.dr_grade(int(r["image_id"][-1]))
        assert r["amd"] == str(int(p.amd)) and r["glaucoma_suspect"] == str(int(p.glaucoma_suspect))
        assert 0 <= float(r["quality"]) <= 1
    records = scan_folder(ds.root)  # loads with the toolkit's own folder reader
    assert [r.patient_id for r in records] == [r["patient_id"] for r in rows]
    img = load_image(records[0].path)
    expected, _ = render_visit(PhantomPatient.from_seed(9, 0), visit=0, size=64, seed=9)
    assert np.abs(img - expected).max() <= 0.5 / 255 + 1e-6  # the PNG is the render, rounded to 8 bits


def test_generate_is_byte_identical(tmp_path):
    a = generate_phantom(tmp_path / "a", patients=2, visits=2, size=64, seed=4)
    b = generate_phantom(tmp_path / "b", patients=2, visits=2, size=64, seed=4)
    names = sorted(f.name for f in a.root.iterdir())
    assert names == sorted(f.name for f in b.root.iterdir()) and len(names) == 5
    assert all((a.root / n).read_bytes() == (b.root / n).read_bytes() for n in names)
    assert not any(n.endswith(".tmp") or n.startswith(".") for n in names)


def test_generate_refuses_non_empty_output(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        generate_phantom(tmp_path, patients=1, visits=1, size=64)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(InputError, match="not a folder"):
        generate_phantom(tmp_path / "keep.txt", patients=1, visits=1, size=64)


@pytest.mark.parametrize("kwargs,match", [
    ({"patients": 0, "visits": 1}, "patients"),
    ({"patients": 1, "visits": 0}, "visits"),
    ({"patients": 1, "visits": 1, "size": 63}, "size"),
    ({"patients": 1, "visits": 1, "seed": -1}, "seed"),
    ({"patients": MAX_PATIENTS + 1, "visits": 1}, f"patients must be between 1 and {MAX_PATIENTS}"),
    ({"patients": 10**20, "visits": 1}, f"patients must be between 1 and {MAX_PATIENTS}"),
    ({"patients": 1, "visits": MAX_VISITS + 1}, f"visits must be between 1 and {MAX_VISITS}"),
    ({"patients": 2.0, "visits": 1}, "patients must be between"),
])
def test_generate_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        generate_phantom(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


# --- ids: unique per seed, seed 0 unchanged ------------------------------------------------------------------


def test_ids_carry_the_seed_except_for_seed_zero():
    """Seed 0 keeps ``P00012`` (the default model's card names those files); other seeds are prefixed."""
    assert PhantomPatient.from_seed(0, 12).patient_id == "P00012"
    assert PhantomPatient.from_seed(7, 12).patient_id == "S7-P00012"
    assert PhantomPatient.from_seed(70, 12).patient_id == "S70-P00012"  # not a prefix clash with seed 7
    _, labels = render_visit(PhantomPatient.from_seed(0, 12), visit=1, size=64)
    assert (labels["patient_id"], labels["image_id"]) == ("P00012", "P00012-V1")
    _, labels = render_visit(PhantomPatient.from_seed(7, 12), visit=1, size=64, seed=7)
    assert (labels["patient_id"], labels["image_id"]) == ("S7-P00012", "S7-P00012-V1")


def test_seed_zero_dataset_keeps_its_file_names_and_ids(tmp_path):
    ds = generate_phantom(tmp_path / "zero", patients=2, visits=2, size=64, seed=0)
    with open(ds.labels_path, newline="") as fh:
        rows = [(r["file_name"], r["image_id"], r["patient_id"]) for r in csv.DictReader(fh)]
    assert rows == [("p00000_v0.png", "P00000-V0", "P00000"), ("p00000_v1.png", "P00000-V1", "P00000"),
                    ("p00001_v0.png", "P00001-V0", "P00001"), ("p00001_v1.png", "P00001-V1", "P00001")]


def test_seed_zero_ids_still_give_the_default_models_split():
    """The default model's card lists the train/holdout files of ``--seed 0``; the split hashes patient ids, so
    seed 0's ids must not change. Records are built from the patients alone (no rendering needed)."""
    from synfundus_guard.data.folder import ImageRecord
    from synfundus_guard.data.split import split_by_patient
    from synfundus_guard.generation.card import read_card
    from synfundus_guard.generation.default import PHANTOM
    from synfundus_guard.generation.model import DEFAULT_MODEL_DIR

    card = read_card(DEFAULT_MODEL_DIR)
    assert card is not None and PHANTOM["seed"] == 0
    records = []
    for i in range(PHANTOM["patients"]):
        pid = PhantomPatient.from_seed(0, i).patient_id
        records += [ImageRecord(f"p{i:05d}_v{v}.png", Path(f"p{i:05d}_v{v}.png"), f"{pid}-V{v}", pid)
                    for v in range(PHANTOM["visits"])]
    train, holdout = split_by_patient(records, holdout_fraction=card.data.holdout_fraction,
                                      seed=card.data.split_seed)
    assert [r.file_name for r in train] == sorted(card.data.train_files)
    assert [r.file_name for r in holdout] == sorted(card.data.holdout_files)


def test_datasets_of_two_seeds_are_disjoint_patients(tmp_path):
    """One phantom set can be the holdout of another of a different seed; the same seed still overlaps."""
    a = scan_folder(generate_phantom(tmp_path / "a", patients=3, visits=1, size=64, seed=3).root)
    b = scan_folder(generate_phantom(tmp_path / "b", patients=3, visits=1, size=64, seed=4).root)
    zero = scan_folder(generate_phantom(tmp_path / "z", patients=3, visits=1, size=64, seed=0).root)
    assert {r.patient_id for r in a} == {"S3-P00000", "S3-P00001", "S3-P00002"}
    check_disjoint(a, b)  # no InputError
    check_disjoint(zero, a)
    again = scan_folder(generate_phantom(tmp_path / "a2", patients=1, visits=1, size=64, seed=4).root)
    with pytest.raises(InputError, match=r"1 patient\(s\) appear in both"):
        check_disjoint(b, again)


# --- all or nothing ------------------------------------------------------------------------------------------


def _interrupt_after(monkeypatch, n: int, exc: BaseException) -> None:
    """Make the phantom renderer raise ``exc`` on its ``n+1``-th call (after ``n`` images were written)."""
    real, calls = phantom_module.render_visit, []

    def render(*args, **kwargs):
        calls.append(1)
        if len(calls) > n:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom_module, "render_visit", render)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), MemoryError(), OSError(28, "No space left on device")])
def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch, exc):
    _interrupt_after(monkeypatch, 3, exc)
    with pytest.raises(type(exc)):
        generate_phantom(tmp_path / "new" / "ds", patients=3, visits=2, size=64, seed=1)
    assert list(tmp_path.iterdir()) == []  # no dataset, no staging folder, not even the parent it made


def test_interrupted_generation_keeps_an_existing_empty_folder(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    out.mkdir()
    _interrupt_after(monkeypatch, 1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        generate_phantom(out, patients=2, visits=1, size=64)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"] and list(out.iterdir()) == []


def test_generation_fills_an_existing_empty_folder_without_leftovers(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    ds = generate_phantom(out, patients=1, visits=2, size=64, seed=2)
    assert ds.root == out and sorted(p.name for p in out.iterdir()) == ["labels.csv", "p00000_v0.png",
                                                                        "p00000_v1.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # the staging sibling became ``out``


def test_generation_refuses_a_symlink_and_a_folder_filled_meanwhile(tmp_path, monkeypatch):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(InputError, match="not a folder"):
        generate_phantom(tmp_path / "link", patients=1, visits=1, size=64)
    assert list(target.iterdir()) == []
    out = tmp_path / "race"
    real = phantom_module.render_visit

    def render_then_fill(*args, **kwargs):  # someone else writes into ``out`` while we render
        out.mkdir(exist_ok=True)
        (out / "theirs.txt").write_text("keep me")
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom_module, "render_visit", render_then_fill)
    with pytest.raises(InputError, match="not empty"):
        generate_phantom(out, patients=1, visits=1, size=64)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and (out / "theirs.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "race", "target"]  # staging removed
