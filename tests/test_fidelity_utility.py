"""Label consistency and utility (TRTR / TSTR AUROC) on seeded features whose labels are learnable.

Faithful synthetic sets are drawn from the same class-conditional Gaussians as the real ones; "shuffled" sets are
the same images with their conditioning labels permuted, i.e. a generator that ignores its labels. Point
estimates are checked against scikit-learn's own metrics; CIs must separate the two kinds of release.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, roc_auc_score

from synfundus_guard.errors import InputError
from synfundus_guard.fidelity import utility as U
from synfundus_guard.fidelity.utility import (MIN_PER_CLASS, confident_mask, fit_label_classifier,
                                              label_consistency, patient_split, utility, utility_without_train)

D = 8
BOOT = 200


def _blobs(n: int, k: int, *, seed: int, sep: float = 0.6, p: list[float] | None = None):
    """``n`` features of ``k`` classes (fixed class centres, unit noise) and their integer labels."""
    centres = np.random.default_rng(1234 + k).normal(0.0, sep, (k, D))
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=p)
    return (centres[y] + rng.normal(0.0, 1.0, (n, D))).astype(np.float32), y


def _shuffled(y: np.ndarray) -> np.ndarray:
    return np.random.default_rng(7).permutation(y)


@pytest.fixture(scope="module")
def grades():
    """Five ordinal grades as CSV strings: real (with patients, 2 images each), synthetic, real test."""
    rx, ry = _blobs(400, 5, seed=1)
    fx, fy = _blobs(300, 5, seed=2)
    tx, ty = _blobs(300, 5, seed=3)
    return {"rx": rx, "ry": ry.astype(str), "fx": fx, "fy": fy.astype(str), "tx": tx, "ty": ty.astype(str),
            "patients": np.repeat([f"P{i:03d}" for i in range(200)], 2)}


def test_consistency_high_when_faithful_and_chance_when_labels_are_shuffled(grades):
    kw = dict(real_x=grades["rx"], real_y=grades["ry"], fake_x=grades["fx"], patients=grades["patients"], n_boot=BOOT)
    good = label_consistency(fake_y=grades["fy"], **kw)
    bad = label_consistency(fake_y=_shuffled(grades["fy"]), **kw)
    assert good["classes"] == ["0", "1", "2", "3", "4"] and good["ordinal"] and good["kappa_weighting"] == "quadratic"
    assert good["real_cross_validated"]["grouped_by_patient"] and good["real_cross_validated"]["folds"] == 5
    for metric in ("accuracy", "balanced_accuracy", "kappa"):
        assert good["synthetic"][metric]["lower"] > bad["synthetic"][metric]["upper"], metric
    # Faithful images are read about as well as real ones (the cross-validated ceiling) ...
    assert abs(good["synthetic"]["accuracy"]["point"] - good["real_cross_validated"]["accuracy"]) < 0.1
    assert good["synthetic"]["accuracy"]["point"] > 2 * good["chance"]["synthetic_accuracy"]
    # ... shuffled ones at chance: the interval holds 1 / classes, and kappa is about 0.
    ci = bad["synthetic"]["balanced_accuracy"]
    assert ci["lower"] <= bad["chance"]["balanced_accuracy"] == 0.2 <= ci["upper"]
    assert abs(bad["synthetic"]["kappa"]["point"]) < 0.15
    majority = np.bincount(grades["fy"].astype(int)).max() / 300
    assert bad["chance"]["synthetic_accuracy"] == pytest.approx(majority, abs=1e-6)


@pytest.mark.parametrize("nominal", [False, True])
def test_consistency_points_equal_scikit_learn_metrics(grades, nominal):
    names = np.array(list("abcde"))  # letters: not integer-valued, so nominal (unweighted kappa)
    ry, fy = (names[grades["ry"].astype(int)], names[grades["fy"].astype(int)]) if nominal else (grades["ry"],
                                                                                              grades["fy"])
    fy = fy.copy()
    fy[::3] = _shuffled(fy)[::3]  # some disagreement, so kappa is not trivially 1
    out = label_consistency(real_x=grades["rx"], real_y=ry, fake_x=grades["fx"], fake_y=fy, n_boot=BOOT)
    pred = fit_label_classifier(x=grades["rx"], y=ry).predict(grades["fx"])
    assert out["kappa_weighting"] == ("none" if nominal else "quadratic")
    assert not out["real_cross_validated"]["grouped_by_patient"]
    want = {"accuracy": accuracy_score(fy, pred), "balanced_accuracy": balanced_accuracy_score(fy, pred),
            "kappa": cohen_kappa_score(fy, pred, weights=None if nominal else "quadratic")}
    for metric, value in want.items():
        ci = out["synthetic"][metric]
        assert ci["point"] == pytest.approx(value, abs=1e-6) and ci["lower"] <= ci["point"] <= ci["upper"]


def test_real_ceiling_is_cross_validated_across_patients():
    """Labels that only patient identity predicts (4 images of 100 patients, no class signal): image-level folds
    would put each patient on both sides and report a ceiling the classifier cannot reach on new patients."""
    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(100), 4)
    y = rng.integers(0, 2, 100)[patients].astype(bool)
    x = rng.normal(0, 3, (100, 64))[patients] + rng.normal(0, 0.3, (400, 64))
    kw = dict(real_x=x, real_y=y, fake_x=x[:50], fake_y=y[:50], n_boot=BOOT)
    grouped, per_image = label_consistency(patients=patients, **kw), label_consistency(**kw)
    assert per_image["real_cross_validated"]["balanced_accuracy"] > 0.8
    assert abs(grouped["real_cross_validated"]["balanced_accuracy"] - 0.5) < 0.15
    assert grouped["classes"] == [False, True] and not grouped["ordinal"]


def test_one_class_release_is_judged_without_kappa(grades):
    keep = grades["fy"] == "2"  # e.g. `guard generate --labels dr_grade=2`
    out = label_consistency(real_x=grades["rx"], real_y=grades["ry"], fake_x=grades["fx"][keep],
                            fake_y=grades["fy"][keep], n_boot=BOOT)
    assert out["synthetic"]["kappa"] is None and out["chance"]["balanced_accuracy"] == 1.0
    assert out["synthetic"]["accuracy"] == out["synthetic"]["balanced_accuracy"]


def test_utility_tstr_matches_trtr_when_faithful_and_drops_when_shuffled(grades):
    kw = dict(real_train_x=grades["rx"], real_train_y=grades["ry"], real_test_x=grades["tx"],
              real_test_y=grades["ty"], fake_x=grades["fx"], n_boot=BOOT)
    good, bad = utility(fake_y=grades["fy"], **kw), utility(fake_y=_shuffled(grades["fy"]), **kw)
    assert good["metric"] == "macro_ovr_auroc" and good["n_test"] == 300 and good["synthetic_classes_missing"] == []
    assert 0.8 < good["trtr"]["point"] < 0.99  # learnable, not trivial
    assert good["trtr"] == bad["trtr"]  # the real-only model does not see the synthetic set
    assert abs(good["tstr_minus_trtr"]["point"]) < 0.03
    assert good["tstr_minus_trtr"]["lower"] > -0.05 and good["combined_minus_trtr"]["lower"] > -0.03
    assert bad["tstr"]["point"] < good["trtr"]["point"] - 0.2 and bad["tstr_minus_trtr"]["upper"] < -0.15
    assert bad["tstr"]["upper"] < good["tstr"]["lower"]
    for out in (good, bad):
        for key in ("tstr", "combined"):
            diff, a, b = out[f"{key}_minus_trtr"], out[key], out["trtr"]
            assert diff["point"] == pytest.approx(a["point"] - b["point"], abs=2e-6)


def test_binary_auroc_equals_scikit_learn_and_missing_synthetic_classes_score_half():
    rx, ry = _blobs(300, 2, seed=11)
    tx, ty = _blobs(200, 2, seed=12)
    fx, fy = _blobs(200, 2, seed=13)
    out = utility(real_train_x=rx, real_train_y=ry, real_test_x=tx, real_test_y=ty, fake_x=fx, fake_y=fy,
                  n_boot=BOOT)
    p = fit_label_classifier(x=rx, y=ry).predict_proba(tx)[:, 1]
    assert out["metric"] == "auroc" and out["trtr"]["point"] == pytest.approx(roc_auc_score(ty, p), abs=1e-6)
    # Three real classes, synthetic images of two: TSTR knows nothing of the third, which scores 0.5 for it.
    rx, ry = _blobs(300, 3, seed=21)
    tx, ty = _blobs(200, 3, seed=22)
    fx, fy = _blobs(200, 3, seed=23)
    keep = fy != 2
    out = utility(real_train_x=rx, real_train_y=ry, real_test_x=tx, real_test_y=ty, fake_x=fx[keep],
                  fake_y=fy[keep], n_boot=BOOT)
    assert out["synthetic_classes_missing"] == [2]
    assert out["tstr"]["point"] < out["trtr"]["point"] and out["trtr"]["lower"] <= out["trtr"]["upper"]


@pytest.mark.parametrize("k", [2, 4])
def test_resampled_auroc_equals_scikit_learn_on_each_resample(k):
    """The vectorised bootstrap AUROC (ranks, ties one half) is scikit-learn's number on every resample."""
    rng = np.random.default_rng(k)
    y = np.sort(rng.integers(0, k, 150))
    p = np.round(rng.dirichlet(np.ones(k), 150), 1)  # rounded: many ties
    p /= p.sum(1, keepdims=True)
    idx = np.concatenate(list(U._resamples(y, 5, 3, chunk=2)))
    reps = U._auroc_resampled(y, p, 5, 3, chunk=2)
    for row, value in zip(idx, reps):
        assert np.array_equal(np.bincount(y[row], minlength=k), np.bincount(y, minlength=k))
        want = (roc_auc_score(y[row], p[row, 1]) if k == 2 else
                roc_auc_score(y[row], p[row], multi_class="ovr", average="macro", labels=np.arange(k)))
        assert value == pytest.approx(want, abs=1e-12)


def test_patient_split_never_puts_a_patient_on_both_sides():
    rng = np.random.default_rng(5)
    patients = np.repeat([f"S3-P{i:05d}" for i in range(90)], rng.integers(1, 5, 90))
    y = rng.choice(["0", "1", "2"], size=patients.size, p=[0.6, 0.3, 0.1])
    train, test = patient_split(y=y, patients=patients, seed=1)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(patients.size))
    assert not set(patients[train]) & set(patients[test])
    assert 0.25 < test.size / patients.size < 0.42 and set(y[test]) == set(y[train]) == {"0", "1", "2"}
    again, other = patient_split(y=y, patients=patients, seed=1), patient_split(y=y, patients=patients, seed=2)
    assert np.array_equal(again[1], test) and not np.array_equal(other[1], test)


def test_utility_without_train_splits_the_real_set_by_patient(grades):
    out = utility_without_train(real_x=np.concatenate([grades["rx"], grades["tx"]]),
                                real_y=np.concatenate([grades["ry"], grades["ty"]]), fake_x=grades["fx"],
                                fake_y=grades["fy"], patients=np.repeat(np.arange(350), 2), n_boot=BOOT)
    assert out["split"] == "patient-disjoint" and out["n_train"] + out["n_test"] == 700
    assert out["n_train"] % 2 == 0 and out["n_test"] % 2 == 0  # whole patients on each side
    assert abs(out["tstr_minus_trtr"]["point"]) < 0.05


def test_confident_mask_keeps_samples_whose_label_the_classifier_confirms(grades):
    model = fit_label_classifier(x=grades["rx"], y=grades["ry"])
    proba = model.predict_proba(grades["fx"])
    good = confident_mask(classifier=model, x=grades["fx"], y=grades["fy"], threshold=0.5)
    bad = confident_mask(classifier=model, x=grades["fx"], y=_shuffled(grades["fy"]), threshold=0.5)
    col = np.searchsorted(model.classes_, grades["fy"])
    assert np.array_equal(good, proba[np.arange(300), col] >= 0.5) and good.dtype == bool
    assert good.mean() > 0.45 and bad.mean() < 0.2  # the filter keeps faithful samples 3x as often
    strict = confident_mask(classifier=model, x=grades["fx"], y=grades["fy"], threshold=0.7)
    assert not (strict & ~good).any() and strict.sum() < good.sum()  # a higher threshold only drops more
    assert confident_mask(classifier=model, x=grades["fx"], y=grades["fy"], threshold=0.0).all()


def _bad(grades, **change):
    kw = dict(real_x=grades["rx"], real_y=grades["ry"], fake_x=grades["fx"], fake_y=grades["fy"], n_boot=20)
    kw.update(change)
    return kw


@pytest.mark.parametrize("change, message", [
    (lambda g: {"real_y": np.full(400, "1")}, "one class only ('1')"),
    (lambda g: {"fake_y": np.where(g["fy"] == "4", "7", g["fy"])}, "value(s) ['7'] that the real labels never take"),
    (lambda g: {"real_y": np.where(np.arange(400) < 3, "9", g["ry"])}, f"at least {MIN_PER_CLASS} images per class; "
                                                                       "too few for '9': 3"),
    (lambda g: {"fake_y": g["fy"][:-1]}, "299 value(s) in shape (299,) for 300 feature row(s)"),
    (lambda g: {"fake_x": g["fx"][:, :4]}, "4 dimensions, expected 8"),
    (lambda g: {"real_x": np.where(np.arange(8) == 2, np.nan, g["rx"])}, "contain 400 NaN or infinite"),
    (lambda g: {"real_y": np.array([None] + list(g["ry"][1:]), dtype=object)}, "missing values"),
    (lambda g: {"patients": np.arange(400) % 4}, "needs at least 5 patients (got 4)"),
    (lambda g: {"patients": np.arange(3)}, "patient labels: 3 value(s)"),
    (lambda g: {"real_x": np.zeros((400,))}, "non-empty numeric N x D array"),
    (lambda g: {"fake_y": np.array([1] + ["2"] * 299, dtype=object)}, "mix value types"),
    (lambda g: {"n_boot": 0}, "bootstrap resamples must be a positive integer, got 0"),
])
def test_label_consistency_bad_inputs_are_one_line_input_errors(grades, change, message):
    with pytest.raises(InputError) as err:
        label_consistency(**_bad(grades, **change(grades)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_utility_and_helpers_bad_inputs_are_input_errors(grades):
    kw = dict(real_train_x=grades["rx"], real_train_y=grades["ry"], real_test_x=grades["tx"],
              real_test_y=grades["ty"], fake_x=grades["fx"], fake_y=grades["fy"], n_boot=20)
    cases = [
        (dict(fake_y=np.full(300, "3")), "synthetic labels have one class only ('3')"),
        (dict(real_test_y=np.where(grades["ty"] == "4", "3", grades["ty"])), "real test labels need at least 5"),
        (dict(real_test_x=grades["tx"][:10]), "real test labels: 300 value(s)"),
    ]
    for change, message in cases:
        with pytest.raises(InputError, match=None) as err:
            utility(**{**kw, **change})
        assert message in str(err.value), message
    with pytest.raises(InputError, match=r"test fraction must be in \(0, 0.5\]"):
        patient_split(y=grades["ry"], test_fraction=0.8)
    with pytest.raises(InputError, match="needs at least 3 patients"):
        patient_split(y=grades["ry"][:4], patients=["a", "a", "b", "b"])
    model = fit_label_classifier(x=grades["rx"], y=grades["ry"])
    with pytest.raises(InputError, match=r"threshold must be in \[0, 1\]"):
        confident_mask(classifier=model, x=grades["fx"], y=grades["fy"], threshold=1.5)
    with pytest.raises(InputError, match="never take"):
        confident_mask(classifier=model, x=grades["fx"], y=np.full(300, "x"), threshold=0.5)
    with pytest.raises(InputError, match="not fitted"):
        confident_mask(classifier=U.LogisticRegression(), x=grades["fx"], y=grades["fy"], threshold=0.5)
    with pytest.raises(InputError, match="one class only"):
        fit_label_classifier(x=grades["rx"], y=np.zeros(400))


@pytest.mark.slow
def test_phantom_amd_is_read_from_faithful_but_not_from_shuffled_synthetic_images():
    """Real images: AMD (drusen) is learnable from 8 x 8 mean and max-pooled pixels of 64 px phantoms; another
    seed's patients stand in for a faithful generator. About 10 s on 2 busy cores, hence slow."""
    from synfundus_guard.data.phantom import PhantomPatient, render_visit

    def dataset(seed: int, n: int):
        rows = [render_visit(PhantomPatient.from_seed(seed, i), visit=0, size=64) for i in range(n)]
        cells = np.stack([img for img, _ in rows]).reshape(n, 8, 8, 8, 8, 3)
        x = np.concatenate([cells.mean((2, 4)).reshape(n, -1), cells.max((2, 4)).reshape(n, -1)], axis=1)
        return x, np.array([str(lab["amd"]) for _, lab in rows]), np.array([lab["patient_id"] for _, lab in rows])

    rx, ry, patients = dataset(0, 120)
    fx, fy, _ = dataset(1, 60)
    kw = dict(real_x=rx, real_y=ry, fake_x=fx, patients=patients, n_boot=BOOT)
    good, bad = label_consistency(fake_y=fy, **kw), label_consistency(fake_y=_shuffled(fy), **kw)
    assert good["synthetic"]["balanced_accuracy"]["point"] > 0.75 > 0.6 > bad["synthetic"]["balanced_accuracy"]["point"]
