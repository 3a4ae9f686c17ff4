"""Label consistency and downstream utility of a synthetic release, measured on image features.

A release is worth using only when its images show the labels they were conditioned on and when a model trained
on them works on real patients. Both are measured one label at a time with one fixed classifier on extractor
features (``N x D`` floats), so numbers compare across releases. :func:`label_consistency`: a classifier trained
on real images reads the synthetic ones; its agreement with the conditioning labels comes with its own
cross-validated score on real data (the ceiling) and the chance level. :func:`utility`: real-test AUROC of the
classifier trained on real (TRTR), synthetic (TSTR) or both, with paired CIs of the differences ("does synthetic
data help?"); :func:`utility_without_train` first splits one real set by patient (:func:`patient_split`).
:func:`fit_label_classifier` + :func:`confident_mask`: the HistoDiffusion filter for the guarded sampler.

Labels are 1-D arrays of comparable values (CSV strings are fine); integer-valued ones (``"0"``..``"4"``) count as
ordinal grades, whose kappa is quadratic-weighted. Pure functions, no I/O; a bad input is an :class:`InputError`,
never a scikit-learn traceback. CIs are percentile bootstrap ``{point, lower, upper}`` (widened to contain the
point, as in the membership metrics). Every number here is higher-is-better.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import InputError
from ..intervals import interval

FOLDS = 5
MIN_PER_CLASS = FOLDS
"""Real images every class needs (train and test sides): one per cross-validation fold, a few AUROC positives."""
N_BOOT = 1000
_DIGITS = 6


def _fit(x: np.ndarray, y: np.ndarray, seed: int, what: str) -> Pipeline:
    # Standardised features + class-balanced logistic regression: convex (lbfgs reaches the same optimum on every
    # run), seconds on thousands of 512-d features, and balanced weights keep rare grades (DR 3-4) in play.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                               random_state=seed))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit(x, y)
    except ValueError as e:  # a safety net: the checks below leave nothing known for scikit-learn to refuse
        raise InputError(f"cannot fit the label classifier on {what}: {str(e).splitlines()[0]}") from None


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _features(what: str, x: Any, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or 0 in x.shape or x.dtype.kind not in "fiub":
        raise InputError(f"{what} features must be a non-empty numeric N x D array (got {x.dtype} {x.shape})")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"{what} features have {x.shape[1]} dimensions, expected {dim} (same extractor?)")
    x = x if x.dtype.kind == "f" else x.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"{what} features contain {int((~np.isfinite(x)).sum())} NaN or infinite value(s)")
    return x


def _values(what: str, y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.size != n:
        raise InputError(f"{what} labels: {y.size} value(s) in shape {y.shape} for {n} feature row(s)")
    if any(v is None or v != v for v in y.tolist()):
        raise InputError(f"{what} labels have missing values (None or NaN)")
    try:
        np.unique(y)
    except TypeError:
        raise InputError(f"{what} labels mix value types that cannot be compared") from None
    return y


def _encode(what: str, y: np.ndarray, classes: np.ndarray, minimum: int = 0) -> np.ndarray:
    """Class indices of ``y``; an unknown value (the classifier cannot say it) or a short class is an error."""
    index = {_py(c): i for i, c in enumerate(classes)}
    unknown = sorted({_py(v) for v in np.unique(y)} - index.keys(), key=str)
    if unknown:
        raise InputError(f"{what} labels have value(s) {unknown[:10]} that the real labels never take "
                         f"(known: {[_py(c) for c in classes]})")
    codes = np.fromiter((index[v] for v in y.tolist()), dtype=np.intp, count=y.size)
    short = [f"{_py(c)!r}: {k}" for c, k in zip(classes, np.bincount(codes, minlength=classes.size)) if k < minimum]
    if short:
        raise InputError(f"{what} labels need at least {minimum} images per class; too few for " + ", ".join(short))
    return codes


def _real(what: str, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Validated real features, class indices, classes (grades sorted as numbers) and whether they are grades."""
    x = _features(what, x)
    y = _values(what, y, x.shape[0])
    classes = np.unique(y)
    if classes.size < 2:
        raise InputError(f"{what} labels have one class only ({_py(classes[0])!r}); a classifier needs at least two")
    try:
        classes, grades = classes[np.argsort([int(str(v)) for v in classes.tolist()], kind="stable")], True
    except ValueError:
        grades = False
    return x, _encode(what, y, classes, MIN_PER_CLASS), classes, grades


def _other(what: str, x: Any, y: Any, dim: int, classes: np.ndarray, minimum: int = 0) -> tuple[np.ndarray, ...]:
    x = _features(what, x, dim)
    return x, _encode(what, _values(what, y, x.shape[0]), classes, minimum)


def _proba(model: Pipeline, x: np.ndarray, k: int) -> np.ndarray:
    """Probabilities over all ``k`` real classes; a class the model never saw gets 0 (AUROC 0.5 for that class)."""
    p = np.zeros((x.shape[0], k))
    p[:, model.classes_] = model.predict_proba(x)
    return p


def _confusions(truth: np.ndarray, pred: np.ndarray, k: int, n_boot: int = 0, seed: int = 0) -> np.ndarray:
    """The ``(k, k)`` confusion matrix (rows: truth), or with ``n_boot`` that of each resample of the images within
    each true class: a row's counts are then a multinomial draw of its size, exactly the distribution of resampled
    images, at k x k numbers per resample (a million-image release would need gigabytes of indices)."""
    cm = np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)
    if not n_boot:
        return cm
    rng = np.random.default_rng(seed)
    return np.stack([rng.multinomial(n, row / max(n, 1), size=n_boot) for n, row in zip(cm.sum(1), cm)], axis=1)


def _agreement(cm: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accuracy, balanced accuracy (over the classes in the truth) and weighted Cohen's kappa (NaN if undefined) of
    confusion matrices ``(..., k, k)``, as scikit-learn computes them: shape ``(3, ...)``."""
    cm = cm.astype(np.float64)
    rows, cols, n = cm.sum(-1), cm.sum(-2), cm.sum((-2, -1))
    diag, seen = np.diagonal(cm, axis1=-2, axis2=-1), rows > 0
    balanced = (diag / np.where(seen, rows, 1)).sum(-1) / seen.sum(-1)
    expected = (weights * rows[..., :, None] * cols[..., None, :]).sum((-2, -1)) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = 1 - (weights * cm).sum((-2, -1)) / expected
    return np.stack([diag.sum(-1) / n, balanced, kappa])


def _boot(n_boot: int) -> int:
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise InputError(f"bootstrap resamples must be a positive integer, got {n_boot!r}")
    return int(n_boot)


def _groups(patients: Any, n: int) -> np.ndarray:
    # Without patient ids each image is its own patient, as everywhere in the toolkit.
    return np.arange(n) if patients is None else _values("patient", patients, n)


def label_consistency(*, real_x: Any, real_y: Any, fake_x: Any, fake_y: Any, patients: Any = None, seed: int = 0,
                      ordinal: bool | None = None, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Do the synthetic images show the labels they were conditioned on, as far as a real-data classifier can tell?

    Returns ``synthetic``: accuracy, balanced accuracy and kappa of predicted vs conditioning labels, with CIs over
    the synthetic images (kappa None for a one-class release); ``real_cross_validated``: the same on the real
    images by :data:`FOLDS`-fold cross-validation, grouped by ``patients`` when given (the ceiling); ``chance``:
    majority-class accuracy of each set, ``1 / classes`` balanced accuracy, kappa 0. ``ordinal=None``: integer
    labels are grades. Raises :class:`InputError` for mismatched lengths or dimensions, a real label with one
    class or a class under :data:`MIN_PER_CLASS` images, under :data:`FOLDS` patients, unknown synthetic values.
    """
    n_boot = _boot(n_boot)
    real_x, real_c, classes, grades = _real("real", real_x, real_y)
    fake_x, fake_c = _other("synthetic", fake_x, fake_y, real_x.shape[1], classes)
    ordinal, k, groups = grades if ordinal is None else ordinal, classes.size, _groups(patients, real_c.size)
    if np.unique(groups).size < FOLDS:
        raise InputError(f"label consistency cross-validates over {FOLDS} patient-disjoint folds: the real set "
                         f"needs at least {FOLDS} patients (got {np.unique(groups).size})")
    weights = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2).astype(float) if ordinal else 1.0 - np.eye(k)
    oof = np.empty_like(real_c)
    with warnings.catch_warnings():  # "least populated class has fewer members than folds": grouping comes first
        warnings.simplefilter("ignore", UserWarning)
        folds = list(StratifiedGroupKFold(FOLDS, shuffle=True, random_state=seed).split(real_x, real_c, groups))
    for train, test in (f for f in folds if f[1].size):  # skewed patient sizes can leave a fold empty
        oof[test] = _proba(_fit(real_x[train], real_c[train], seed, "a cross-validation fold of the real images"),
                           real_x[test], k).argmax(1)
    pred = _proba(_fit(real_x, real_c, seed, "the real images"), fake_x, k).argmax(1)
    point = _agreement(_confusions(fake_c, pred, k), weights)
    reps = _agreement(_confusions(fake_c, pred, k, n_boot, seed), weights)
    ceiling = _agreement(_confusions(real_c, oof, k), weights)
    names, shown = ("accuracy", "balanced_accuracy", "kappa"), np.unique(fake_c).size
    majority = [round(float(np.bincount(c).max() / c.size), _DIGITS) for c in (fake_c, real_c)]
    return {
        "classes": [_py(c) for c in classes], "ordinal": bool(ordinal), "n_real": int(real_c.size),
        "n_synthetic": int(fake_c.size), "kappa_weighting": "quadratic" if ordinal else "none",
        "synthetic": {m: None if m == "kappa" and shown < 2 else interval(point[j], reps[j])
                      for j, m in enumerate(names)},
        "real_cross_validated": {**{m: round(float(v), _DIGITS) for m, v in zip(names, ceiling)},
                                 "folds": FOLDS, "grouped_by_patient": patients is not None},
        "chance": {"synthetic_accuracy": majority[0], "real_accuracy": majority[1],
                   "balanced_accuracy": round(1 / shown, _DIGITS), "kappa": 0.0},
    }


def _auroc(codes: np.ndarray, p: np.ndarray) -> float:
    if p.shape[1] == 2:
        return float(roc_auc_score(codes, p[:, 1]))
    return float(roc_auc_score(codes, p, multi_class="ovr", average="macro", labels=np.arange(p.shape[1])))


def _resamples(codes: np.ndarray, n_boot: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """``(<= chunk, n)`` index arrays, ``n_boot`` rows in all, resampled within each class: class counts stay fixed,
    so every class is in every resample (AUROC stays defined) and position ``j`` always holds the same class."""
    rng, groups = np.random.default_rng(seed), [np.flatnonzero(codes == c) for c in np.unique(codes)]
    for start in range(0, n_boot, chunk):
        yield np.concatenate([rng.choice(g, size=(min(chunk, n_boot - start), g.size)) for g in groups], axis=1)


def _auroc_resampled(codes: np.ndarray, p: np.ndarray, n_boot: int, seed: int, chunk: int = 0) -> np.ndarray:
    """:func:`_auroc` of ``n_boot`` resamples of the test images (the same ones for the same ``seed``: differences
    between models are paired), by ranks (Mann-Whitney, ties one half: scikit-learn's number) and vectorised:
    1000 resamples x 3 models is the hot loop. Chunks bound the memory at a few times ``4e6`` numbers."""
    cols = [1] if p.shape[1] == 2 else list(range(p.shape[1]))
    chunk = chunk or max(1, 4_000_000 // (codes.size * len(cols)))
    reps = []
    for idx in _resamples(codes, n_boot, seed, chunk):
        pos = np.stack([codes[idx[0]] == c for c in cols], axis=1)
        n1 = pos.sum(0)
        u = (rankdata(p[idx][:, :, cols], axis=1) * pos).sum(1) - n1 * (n1 + 1) / 2
        reps.append((u / (n1 * (codes.size - n1))).mean(1))
    return np.concatenate(reps)


def utility(*, real_train_x: Any, real_train_y: Any, real_test_x: Any, real_test_y: Any, fake_x: Any,
            fake_y: Any, seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Real-test AUROC of the classifier trained on real (``trtr``), synthetic (``tstr``) and both (``combined``).

    Binary labels: AUROC; more classes: macro one-vs-rest AUROC over every real class (a class the synthetic set
    lacks scores 0.5 for TSTR). Each is a CI over the test images (resampled within class); the paired differences
    ``combined_minus_trtr`` and ``tstr_minus_trtr`` use the same resamples. Raises :class:`InputError` for
    mismatched lengths or dimensions, a real label with one class or a class under :data:`MIN_PER_CLASS` images
    (train and test), one synthetic class only, unknown test or synthetic values.
    """
    n_boot = _boot(n_boot)
    train_x, train_c, classes, _ = _real("real train", real_train_x, real_train_y)
    test_x, test_c = _other("real test", real_test_x, real_test_y, train_x.shape[1], classes, MIN_PER_CLASS)
    fake_x, fake_c = _other("synthetic", fake_x, fake_y, train_x.shape[1], classes)
    if np.unique(fake_c).size < 2:
        raise InputError(f"synthetic labels have one class only ({_py(classes[fake_c[0]])!r}); training on "
                         "synthetic images (TSTR) needs at least two")
    k = classes.size
    models = {"trtr": _fit(train_x, train_c, seed, "the real train images"),
              "tstr": _fit(fake_x, fake_c, seed, "the synthetic images"),
              "combined": _fit(np.concatenate([train_x, fake_x]), np.concatenate([train_c, fake_c]), seed,
                               "real train + synthetic images")}
    probs = {m: _proba(model, test_x, k) for m, model in models.items()}
    points = {m: _auroc(test_c, p) for m, p in probs.items()}
    reps = {m: _auroc_resampled(test_c, p, n_boot, seed) for m, p in probs.items()}
    out: dict[str, Any] = {
        "metric": "auroc" if k == 2 else "macro_ovr_auroc", "classes": [_py(c) for c in classes],
        "n_train": int(train_c.size), "n_test": int(test_c.size), "n_synthetic": int(fake_c.size),
        "synthetic_classes_missing": [_py(c) for c in classes[np.bincount(fake_c, minlength=k) == 0]],
        **{m: interval(points[m], reps[m]) for m in probs}}
    for m in ("combined", "tstr"):
        out[f"{m}_minus_trtr"] = interval(points[m] - points["trtr"], reps[m] - reps["trtr"])
    return out


def patient_split(*, y: Any, patients: Any = None, test_fraction: float = 1 / 3,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` row indices of one real set with no patient on both sides, stratified by ``y`` as far as
    whole patients allow (seeded StratifiedGroupKFold; the test side is one of ``round(1 / test_fraction)`` folds).
    Raises :class:`InputError` for a fraction outside (0, 0.5], mismatched lengths or too few patients."""
    y = np.asarray(y)
    y = _values("real", y, len(y) if y.ndim else 0)
    if not 0 < test_fraction <= 0.5:
        raise InputError(f"test fraction must be in (0, 0.5], got {test_fraction}")
    groups, splits = _groups(patients, y.size), max(2, round(1 / test_fraction))
    if np.unique(groups).size < splits:
        raise InputError(f"a patient-disjoint split needs at least {splits} patients (got {np.unique(groups).size})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train, test = next(StratifiedGroupKFold(splits, shuffle=True, random_state=seed).split(y, y, groups))
    return np.sort(train), np.sort(test)


def utility_without_train(*, real_x: Any, real_y: Any, fake_x: Any, fake_y: Any, patients: Any = None,
                          seed: int = 0, n_boot: int = N_BOOT) -> dict[str, Any]:
    """:func:`utility` on a :func:`patient_split` of one real set (no separate real training set)."""
    x = _features("real", real_x)
    y = _values("real", real_y, x.shape[0])
    train, test = patient_split(y=y, patients=patients, seed=seed)
    out = utility(real_train_x=x[train], real_train_y=y[train], real_test_x=x[test], real_test_y=y[test],
                  fake_x=fake_x, fake_y=fake_y, seed=seed, n_boot=n_boot)
    return {**out, "split": "patient-disjoint" if patients is not None else "image-disjoint"}


def fit_label_classifier(*, x: Any, y: Any, seed: int = 0) -> Pipeline:
    """This module's classifier fitted on real images (features ``x``, labels ``y``), for :func:`confident_mask`.
    Raises :class:`InputError` for mismatched lengths, one class, or a class under :data:`MIN_PER_CLASS` images."""
    x, _, _, _ = _real("real", x, y)
    return _fit(x, np.asarray(y), seed, "the real images")


def confident_mask(*, classifier: Pipeline, x: Any, y: Any, threshold: float) -> np.ndarray:
    """True where ``classifier`` gives the conditioning label ``y`` a probability >= ``threshold`` (keep it).
    Raises :class:`InputError` for a threshold outside [0, 1], an unfitted classifier, features or labels that do
    not match, or a label value the classifier never saw."""
    if not 0 <= threshold <= 1:
        raise InputError(f"confidence threshold must be in [0, 1], got {threshold}")
    if not hasattr(classifier, "classes_") or not hasattr(classifier, "n_features_in_"):
        raise InputError("the label classifier is not fitted (use fit_label_classifier)")
    x, codes = _other("synthetic", x, y, classifier.n_features_in_, np.asarray(classifier.classes_))
    return _log_proba(classifier, x)[np.arange(x.shape[0]), codes] >= np.log(threshold) if threshold > 0 else \
        np.ones(x.shape[0], dtype=bool)


def _log_proba(classifier: Pipeline, x: np.ndarray) -> np.ndarray:
    """Log class probabilities from the decision values, exact where ``predict_proba`` saturates.

    ``log p_k = -log1p(sum_{j != k} exp(z_j - z_k))``: a sample 40 logits into one class has probability
    ``1 - 4e-18``, which ``predict_proba`` rounds to exactly 1.0; here it stays below 0 in log space, so a
    threshold of 1.0 (certainty) confirms nothing.
    """
    z = np.asarray(classifier.decision_function(x), dtype=np.float64)
    if z.ndim == 1:  # binary: the decision value is the logit of classes_[1]
        z = np.stack([np.zeros_like(z), z], axis=1)
    diff = z[:, None, :] - z[:, :, None]  # [n, k, j] = z_j - z_k
    k = z.shape[1]
    diff[:, np.arange(k), np.arange(k)] = -np.inf  # leave out j == k (summing exp(0) = 1 would drown 1e-18)
    with np.errstate(over="ignore"):
        return -np.log1p(np.exp(diff).sum(axis=2))
