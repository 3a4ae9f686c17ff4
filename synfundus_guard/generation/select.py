"""Confident selection (``--select-confident``): release only samples whose conditioning labels a real-data
classifier confirms.

HistoDiffusion's filter: a conditional model sometimes draws an image that does not show the label it was asked
for (a "grade 3" that looks healthy). Such an image is no leak, but it is a wrong training example for whoever
uses the release. :class:`ConfidentSelector` fits one classifier per conditioning label
(:func:`~synfundus_guard.fidelity.utility.fit_label_classifier`, on :class:`~synfundus_guard.embed.stats.
StatsEmbedder` features, weight-free so every machine computes the same ones) on the model's *training* images,
as the model saw them (centre-cropped and resized to its resolution), and keeps a sample when every
conditioning label gets a probability >= the threshold.

The training images are private: their features live in memory only, and :meth:`ConfidentSelector.fingerprint`
(which goes into the public manifest) holds counts, never a name. The decision is made on the sample quantised
to 8 bits, i.e. on exactly the pixels that are released, so a reader holding the classifier can re-check it.
Sample ``i``'s decision depends only on ``(seed, i)`` and the model, which keeps resume and "same seed, same
release" intact. :func:`exhausted` bounds the draws a selection may cost (the sampler's hard stop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..data.images import to_uint8
from ..embed.stats import StatsEmbedder
from ..errors import InputError, ModelError
from ..progress import NULL_PROGRESS, Progress
from .model import LoadedModel
from .sample import Sample

UNSELECTED_LIMIT_FACTOR = 10
"""Hard stop after ``UNSELECTED_LIMIT_FACTOR * n + min_samples_before_stop`` unconfirmed samples: a classifier
that confirms fewer than about 1 in 11 of the samples passing the checks cannot grind out a release."""
CLASSIFIER = ("StandardScaler + LogisticRegression(class_weight=balanced), one per label, fitted on the model's "
              "training images")


@dataclass(frozen=True)
class ConfidentSelector:
    """Fitted label classifiers and the threshold; build with :meth:`fit`."""

    threshold: float
    """Least probability every conditioning label must get, in (0, 1]."""
    labels: tuple[str, ...]
    """The label columns the run conditions on (``--labels``), each confirmed."""
    classifiers: Mapping[str, Any]
    """Label column -> fitted scikit-learn pipeline (private: fitted on training images)."""
    training_images: Mapping[str, int]
    """Label column -> training images its classifier was fitted on (a count only)."""

    @classmethod
    def fit(cls, *, model: LoadedModel, labels: Sequence[str], threshold: float, cache_dir: Path | None = None,
            progress: Progress = NULL_PROGRESS) -> "ConfidentSelector":
        """Fit the classifiers on ``model``'s training split (``cache_dir``: where a phantom recipe regenerates it).

        Raises :class:`InputError` for a threshold outside (0, 1], no labels, or a class with too few training
        images; :class:`ModelError` for a model without a training card or not conditioned on a label, or
        training labels that lack a column or a value the model was conditioned on.
        """
        threshold = _check_threshold(threshold)
        labels = tuple(dict.fromkeys(str(name) for name in labels))
        if not labels:
            raise InputError("--select-confident needs conditioning labels (--labels column=value): an "
                             "unconditional run has no label to confirm")
        if model.card is None:
            raise ModelError(f"{model.path}: no training card; --select-confident fits its classifiers on the "
                             "model's training images, which only a card names")
        columns = model.conditioning.columns if model.conditioning is not None else ()
        absent = [name for name in labels if name not in columns]
        if absent:
            raise ModelError(f"the model is not conditioned on {', '.join(map(repr, absent))}; "
                             "--select-confident confirms conditioning labels only")
        x, rows = _training_features(model, cache_dir, progress)
        classifiers = {name: _fit_one(model, name, x, rows) for name in labels}
        return cls(threshold=threshold, labels=labels, classifiers=classifiers,
                   training_images={name: len(rows) for name in labels})

    def keep(self, samples: Sequence[Sample]) -> list[bool]:
        """Per sample: True when every conditioning label is confirmed with probability >= the threshold."""
        from ..fidelity.utility import confident_mask

        if not samples:
            return []
        x = features([s.image for s in samples])
        mask = np.ones(len(samples), dtype=bool)
        for name in self.labels:
            y = np.array([s.labels[name] for s in samples])
            mask &= confident_mask(classifier=self.classifiers[name], x=x, y=y, threshold=self.threshold)
        return mask.tolist()

    def fingerprint(self) -> dict[str, Any]:
        """What the public manifest says about the selection: no training file names, counts only."""
        return {"threshold": self.threshold, "labels": list(self.labels),
                "features": StatsEmbedder().feature_fingerprint(), "classifier": CLASSIFIER,
                "training_images": dict(self.training_images)}


def features(images: Sequence[np.ndarray]) -> np.ndarray:
    """Stats features of float RGB images as released (quantised to 8 bits first), as float64: in float32 the
    classifier's probabilities saturate at exactly 1.0 a logit of 17 away, and threshold 1.0 would keep those."""
    return StatsEmbedder().features([to_uint8(img).astype(np.float32) / 255.0 for img in images]).astype(np.float64)


def exhausted(*, unselected: int, n: int, warmup: int) -> bool:
    """Whether a run has drawn too many unconfirmed samples to go on (see :data:`UNSELECTED_LIMIT_FACTOR`)."""
    return unselected >= UNSELECTED_LIMIT_FACTOR * n + warmup


def unselected_count(*, accepted: Sequence[int], quarantined: Sequence[int], next_index: int, complete: bool) -> int:
    """Samples of a run that passed every check but were not confirmed, from the committed sample indices.

    Samples are judged in index order; in a complete run, those after the last released one were surplus of the
    last batch (never considered), so the count stops there.
    """
    end = max(accepted) + 1 if complete and accepted else next_index
    return max(0, end - len(accepted) - sum(1 for i in quarantined if i < end))


def limit_message(selector: ConfidentSelector, *, accepted: int, unselected: int, n: int) -> str:
    """The one line for a run stopped by :func:`exhausted`."""
    return (f"too few samples confirmed: {unselected} samples passed the checks but their labels were not "
            f"confirmed at --select-confident {selector.threshold:g} ({accepted} of {n} released); the release "
            "was not finalized (lower the threshold or improve the model)")


def _check_threshold(threshold: Any) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value <= 1:  # NaN fails too
        raise InputError(f"--select-confident must be a probability in (0, 1], got {threshold!r}")
    return value


def _training_features(model: LoadedModel, cache_dir: Path | None, progress: Progress) -> tuple[np.ndarray, list]:
    """Features of the card's training images as the model saw them, and their label rows (in memory only)."""
    from ..audit.runner import default_cache_dir
    from ..data.folder import scan_folder
    from ..data.images import load_image
    from .data import to_model_input
    from .default import training_data_dir

    folder = training_data_dir(model, cache_dir=cache_dir or default_cache_dir(), progress=progress)
    by_name = {r.file_name: r for r in scan_folder(folder)}
    names = list(model.card.data.train_files)  # type: ignore[union-attr]
    missing = [f for f in names if f not in by_name]
    if missing:
        raise ModelError(f"{len(missing)} training image(s) of the model are missing from {folder}")
    images = []
    with progress.task("Fitting the label classifiers (training images)", total=len(names)) as task:
        for name in names:
            t = to_model_input(load_image(by_name[name].path), model.resolution)
            images.append(t.permute(1, 2, 0).numpy().astype(np.float32) / 255.0)
            task.advance()
    return features(images), [by_name[f].labels for f in names]


def _fit_one(model: LoadedModel, name: str, x: np.ndarray, rows: list[dict[str, str]]) -> Any:
    from ..fidelity.utility import fit_label_classifier

    values = [row.get(name, "") for row in rows]
    empty = sum(1 for v in values if not v)
    if empty:
        raise ModelError(f"the model's training labels lack column {name!r} for {empty} of {len(rows)} images; "
                         "--select-confident cannot fit its classifier")
    try:
        clf = fit_label_classifier(x=x, y=np.array(values), seed=0)
    except InputError as exc:
        raise InputError(f"--select-confident, label {name!r}: {exc}") from None
    unknown = sorted(set(model.conditioning.vocab[name]) - set(clf.classes_.tolist()))  # type: ignore[union-attr]
    if unknown:
        raise ModelError(f"the model's training labels no longer have {name}={unknown[0]!r}, which it was "
                         "conditioned on (labels.csv changed since training?)")
    return clf
