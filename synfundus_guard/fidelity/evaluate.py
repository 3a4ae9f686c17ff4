"""``guard evaluate``: is a release worth using? Fidelity and utility against real images, as a public report.

Features of the release, the real images (``--real``: a holdout of patients the model never saw) and, optionally,
the training images (``--train``: needed for authenticity, and as the real training set of the utility test) come
from one extractor (:mod:`.extract`). The distribution metrics (:mod:`.metrics`: FD, KD, precision, recall,
density, coverage, authenticity, with bootstrap CIs) compare release and real; with ``labels``, a classifier
trained on real labelled images reads the release (label consistency) and train-on-synthetic / test-on-real
AUROCs say whether the synthetic images teach what the real ones do (:mod:`.utility`).

``fidelity.json`` is public: aggregate numbers, counts, the extractor's fingerprint, warnings. It names no image,
training or synthetic.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..data.folder import ImageRecord, scan_folder
from ..data.images import list_images
from ..errors import InputError
from ..progress import NULL_PROGRESS, Progress
from .extract import DEFAULT_FEATURES, extract_features, extractor_fingerprint

SCHEMA = "synfundus-guard/fidelity/v1"


@dataclass(frozen=True)
class EvaluateOptions:
    """How to evaluate (every field has a sensible default)."""

    features: str = DEFAULT_FEATURES
    """Extractor spec: ``stats`` (built in, no weights), ``torchvision:ARCH:CHECKPOINT`` or
    ``openclip:ARCH:CHECKPOINT`` (local weight files)."""
    labels: tuple[str, ...] = ()
    """Label columns to test (release ``metadata.jsonl`` labels against the real ``labels.csv``)."""
    k: int = 5
    """Neighbours for precision/recall/density/coverage."""
    n_boot: int = 200
    """Bootstrap resamples for the confidence intervals."""
    seed: int = 0
    workers: int = 0
    """Feature-extraction processes (0: one per core)."""


@dataclass
class _Set:
    name: str
    paths: list[Path]
    labels: list[dict[str, Any]] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)


def _release_set(release_dir: Path) -> _Set:
    from ..release.manifest import METADATA_NAME, read_metadata

    rels = list_images(release_dir, follow_links=False)
    meta = read_metadata(release_dir) if (release_dir / METADATA_NAME).is_file() else {}
    names = [rel.as_posix() for rel in rels]
    labels = [dict(meta.get(n, {}).get("labels", {}) or {}) for n in names]
    return _Set("release", [release_dir / rel for rel in rels], labels, [f"synthetic:{n}" for n in names])


def _real_set(folder: Path, what: str) -> _Set:
    records: list[ImageRecord] = scan_folder(folder)
    if not records:
        raise InputError(f"{what} folder {folder} holds no images")
    return _Set(what, [r.path for r in records], [dict(r.labels) for r in records], [r.patient_id for r in records])


def _label_arrays(s: _Set, label: str) -> np.ndarray:
    missing = sum(1 for row in s.labels if str(row.get(label, "")).strip() == "")
    if missing:
        raise InputError(f"{missing} of {len(s.labels)} {s.name} images have no {label!r} label "
                         f"({'an unconditional model has none' if s.name == 'release' else 'see labels.csv'})")
    return np.asarray([str(row[label]).strip() for row in s.labels])


def _utility(sets: Mapping[str, _Set], feats: Mapping[str, np.ndarray], labels: Sequence[str], *,
             seed: int, n_boot: int) -> dict[str, Any]:
    from .utility import label_consistency, utility

    real, fake, train = sets["real"], sets["release"], sets.get("train")
    out: dict[str, Any] = {}
    for label in labels:
        real_y, fake_y = _label_arrays(real, label), _label_arrays(fake, label)
        source = train if train is not None else real
        source_y = _label_arrays(source, label)
        entry = {"label_consistency": label_consistency(
            real_x=feats[source.name], real_y=source_y, fake_x=feats["release"], fake_y=fake_y,
            patients=np.asarray(source.patients), seed=seed, n_boot=n_boot)}
        if train is not None:
            entry["utility"] = utility(real_train_x=feats["train"], real_train_y=source_y, real_test_x=feats["real"],
                                       real_test_y=real_y, fake_x=feats["release"], fake_y=fake_y, seed=seed,
                                       n_boot=n_boot)
        else:
            from .utility import utility_without_train

            entry["utility"] = utility_without_train(real_x=feats["real"], real_y=real_y,
                                                     patients=np.asarray(real.patients), fake_x=feats["release"],
                                                     fake_y=fake_y, seed=seed, n_boot=n_boot)
        out[label] = entry
    return out


def evaluate_release_fidelity(*, release_dir: Path, real_dir: Path, train_dir: Path | None = None,
                              options: EvaluateOptions = EvaluateOptions(),
                              progress: Progress = NULL_PROGRESS) -> dict[str, Any]:
    """The public ``fidelity.json`` document for ``release_dir`` against ``real_dir`` (see the module docstring).

    Raises :class:`InputError` for a missing or empty folder, an unreadable image, a label that a set lacks.
    """
    from .metrics import fidelity_metrics

    release_dir, real_dir = Path(release_dir), Path(real_dir)
    fingerprint = extractor_fingerprint(options.features)  # an unknown extractor fails before any work
    sets = {"release": _release_set(release_dir), "real": _real_set(real_dir, "real")}
    if train_dir is not None:
        sets["train"] = _real_set(Path(train_dir), "train")
    for label in options.labels:  # fail on a missing label before the slow part
        for s in sets.values():
            _label_arrays(s, label)
    feats = {name: extract_features(s.paths, spec=options.features, workers=options.workers, what=name,
                                    progress=progress) for name, s in sets.items()}
    metrics = fidelity_metrics(feats["real"], feats["release"], train=feats.get("train"), k=options.k,
                               n_boot=options.n_boot, seed=options.seed, progress=progress)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "tool": {"name": "synfundus-guard", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "features": {"spec": options.features, "fingerprint": fingerprint,
                     "dim": int(feats["real"].shape[1])},
        "counts": {name: len(s.paths) for name, s in sets.items()},
        "metrics": metrics,
        "options": {"k": options.k, "n_boot": options.n_boot, "seed": options.seed},
    }
    if options.labels:
        progress.log("training label classifiers")
        doc["labels"] = _utility(sets, feats, options.labels, seed=options.seed, n_boot=options.n_boot)
    return doc


FIDELITY_NAME = "fidelity.json"


def _holds_fidelity(folder: Path) -> bool:
    from ..release.report import holds_document

    return holds_document(folder, FIDELITY_NAME, SCHEMA)


def check_out(out_dir: Path) -> None:
    """Refuse an output folder guard may not write into (a file; a non-empty folder with no guard report)."""
    from ..release.report import check_report_folder

    check_report_folder(out_dir, option="--out", accept=_holds_fidelity)


def write_fidelity(out_dir: Path, doc: Mapping[str, Any]) -> Path:
    """Write ``fidelity.json`` atomically into ``out_dir`` (public: the usual mode); returns its path."""
    from ..fsutil import atomic_write_json

    path = Path(out_dir) / FIDELITY_NAME
    atomic_write_json(path, dict(doc))
    return path


def read_fidelity(path: Path) -> dict[str, Any]:
    """Load a ``fidelity.json`` (or the folder holding it); raises :class:`InputError` when missing or not one."""
    from ..safeload import read_json

    path = Path(path)
    if path.is_dir():
        path = path / FIDELITY_NAME
    try:
        doc = read_json(path, error=InputError, expect=dict)
    except FileNotFoundError:
        raise InputError(f"fidelity results not found: {path}") from None
    if doc.get("schema") != SCHEMA:
        raise InputError(f"{path}: not synfundus-guard fidelity results (expected schema {SCHEMA!r})")
    return doc
