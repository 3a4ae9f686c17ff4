"""Calibration: how close do *new patients* get to the training set?

Holdout images (other patients, never trained on) are scored against the training index exactly like release
images. Their score distributions are the reference: a release image is flagged when it is closer to a
training image than the policy's quantile of holdout images. Calibration results are cached in the index
folder, keyed by the holdout set's content fingerprint and the matchers' versions.
"""

from __future__ import annotations

import hashlib
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audit.memorization import MATCH_VERSION as PIXEL_MATCH
from ..audit.memorization import score_images
from ..audit.vessels import MATCH_VERSION as VESSEL_MATCH
from ..audit.vessels import vessel_scores, vessel_search
from ..data.folder import ImageRecord
from ..data.images import load_image
from ..data.memo import pinned
from ..embed.base import Embedder
from ..errors import IndexBuildError, InputError
from ..fsutil import atomic_write_json
from ..parallel import auto_workers, ordered_map, single_thread_blas
from ..progress import NULL_PROGRESS, Progress
from ..safeload import read_json
from .store import GuardIndex, dataset_fingerprint, hash_records, load_index

MIN_HOLDOUT = 20
"""Fewer holdout images cannot support a quantile threshold; calibration refuses them."""
HIST_BINS = 40
"""Bins of the holdout score histograms in the public report."""
CACHED = ("embedding_sims", "pixel_nccs", "vessel_scores", "vessel_margins")
"""The holdout score samples a calibration cache entry holds, in :class:`Calibration`'s order."""


@dataclass(frozen=True)
class Calibration:
    """Holdout→train score samples."""

    embedding_sims: np.ndarray
    pixel_nccs: np.ndarray
    vessel_scores: np.ndarray
    vessel_margins: np.ndarray
    """NaN where a holdout image had no candidate of a second training patient."""
    holdout_fingerprint: str
    k: int

    def threshold(self, scores: np.ndarray, quantile: float) -> float:
        """The ``quantile`` of a holdout score sample.

        An empirical quantile cannot resolve ``q`` beyond ``1 - 1/n`` (with 200 holdout images, the 0.999
        quantile is just the sample maximum, exceeded by ~1/(n+1) of new patients). There the upper tail is
        extrapolated with a Gumbel law fitted by moments (on ``-log(1 - s)``) — nearest-neighbour similarities are maxima over many
        training images, the Gumbel's domain — and never set below the sample maximum.
        """
        return tail_quantile(np.asarray(scores, dtype=np.float64), quantile)

    def summary(self) -> dict:
        """Public summary (no identities): sample size, distribution quantiles and a histogram per score.

        The histograms (:data:`HIST_BINS` bins between the sample's minimum and maximum) let a report show where a
        release image's score sits against the holdout's, and say what fraction of new patients score lower.
        """
        def q(a: np.ndarray) -> dict:
            counts, edges = np.histogram(a, bins=HIST_BINS)
            out = {f"q{p}": round(float(np.quantile(a, p / 100)), 6) for p in (50, 90, 99, 100)}
            return out | {"hist": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}}

        margins = self.vessel_margins[np.isfinite(self.vessel_margins)]
        return {"n_holdout": int(len(self.embedding_sims)), "k": self.k,
                "embedding_sim": q(self.embedding_sims), "pixel_ncc": q(self.pixel_nccs),
                "vessel_score": q(self.vessel_scores)} | ({"vessel_margin": q(margins)} if len(margins) else {})

    def margin_threshold(self, quantile: float) -> float | None:
        """The vessels check's margin threshold at ``quantile`` (:func:`spacing_quantile`); ``None`` (the rule is
        off) unless every holdout image had a margin (the index holds two or more patients)."""
        m = self.vessel_margins
        return spacing_quantile(m, quantile) if len(m) and np.isfinite(m).all() else None


def tail_quantile(x: np.ndarray, q: float) -> float:
    """Empirical quantile where the sample resolves it, else a Gumbel tail fit (see Calibration.threshold).

    Scores are similarities bounded by 1, so the fit is made on ``-log(1 - s)`` (unbounded, larger = closer)
    and mapped back: the threshold can approach but never reach 1, and a check is never made unable to flag.
    """
    n = len(x)
    if q <= 1.0 - 1.0 / n:
        return float(np.quantile(x, q))
    if q >= 1.0:
        return float(x.max())
    z = -np.log(np.clip(1.0 - x, 1e-9, None))
    beta = float(z.std(ddof=1)) * np.sqrt(6.0) / np.pi
    mu = float(z.mean()) - 0.5772156649 * beta
    zq = mu - beta * np.log(-np.log(q))
    return max(float(x.max()), float(1.0 - np.exp(-zq)))


def spacing_quantile(x: np.ndarray, q: float) -> float:
    """Empirical quantile of a sample of margins (best match less the best match of another patient) where the
    sample resolves it, else an exponential tail fitted by the sample mean; never below the sample maximum.

    A margin is the gap between the two largest of many similarities, and the gap between the top two of a sample
    from the Gumbel's domain is exponential, a heavier tail than a Gumbel fit would give it. Holdout margins agree:
    mean ~0.02 with standard deviation ~ mean, and the largest of 100 near ``mean * ln(100)`` (phantom and second
    renderer, 128 and 256 px). The Gumbel fit of :func:`tail_quantile` let a new patient of phantom seed 3 through
    (margin 0.125 over a threshold of 0.107; exponential: 0.143).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if q <= 1.0 - 1.0 / n:
        return float(np.quantile(x, q))
    if q >= 1.0:
        return float(x.max())
    return max(float(x.max()), float(np.clip(x, 0.0, None).mean()) * float(np.log(1.0 / (1.0 - q))))


def check_disjoint(train: GuardIndex, holdout: Sequence[ImageRecord], holdout_shas: Sequence[str]) -> None:
    """Refuse a holdout set that shares patients or images with the training set (InputError with counts)."""
    train_patients = {r["patient_id"] for r in train.records if not r["patient_id"].startswith("?")}
    overlap = {r.patient_id for r in holdout} & train_patients
    if overlap:
        raise InputError(
            f"holdout overlaps the training set: {len(overlap)} patient(s) appear in both; splits must be "
            "patient-disjoint"
        )
    shared = set(holdout_shas) & {r["sha256"] for r in train.records}
    if shared:
        raise InputError(f"holdout overlaps the training set: {len(shared)} identical image(s) appear in both")


CALIBRATION_ITEMS_PER_WORKER = 200
"""Automatic worker counts of a calibration give each worker at least this many holdout images (a worker starts
and loads the index in ~5 s; a holdout image costs ~60 ms at 256 px)."""


def _score_files(index: GuardIndex, paths: Sequence[Path], k: int) -> list[tuple[float, float, float, float]]:
    """(embedding similarity, pixel correlation, vessel score, vessel margin) of holdout image files against the
    index."""
    images = [load_image(p) for p in paths]
    with single_thread_blas(), pinned(images):
        ves = vessel_scores(index, images)
        return [(s.embedding_sim, s.pixel_ncc, v.score, v.margin)
                for s, v in zip(score_images(index, images, k=k), ves)]


_SCORER: dict = {}


def _init_scorer(index_dir: Path, embedder: Embedder, k: int) -> None:
    _SCORER.update(index=load_index(index_dir, embedder), k=k)


def _score_in_worker(paths: Sequence[Path]) -> list[tuple[float, float, float, float]]:
    return _score_files(_SCORER["index"], paths, _SCORER["k"])


def calibrate(
    index: GuardIndex,
    holdout: Sequence[ImageRecord],
    *,
    k: int,
    batch_size: int = 16,
    workers: int = 1,
    progress: Progress = NULL_PROGRESS,
) -> Calibration:
    """Score the holdout set against the index (cached in the index folder), in ``workers`` processes (0: one per
    core, as far as each gets :data:`CALIBRATION_ITEMS_PER_WORKER` images)."""
    if len(holdout) < MIN_HOLDOUT:
        raise InputError(f"holdout set has {len(holdout)} images; at least {MIN_HOLDOUT} are needed to calibrate")
    shas = hash_records(holdout, progress, "holdout set")
    check_disjoint(index, holdout, shas)
    fp = dataset_fingerprint(shas)
    # the matchers' versions are part of the key: scores cached by another matcher are recomputed
    match = hashlib.sha256(f"{VESSEL_MATCH}|{PIXEL_MATCH}".encode()).hexdigest()[:8]
    cache_path = Path(index.path) / "calibration" / f"{fp[:24]}-k{k}-v{match}.json"
    if cache_path.is_file():
        try:
            data = read_json(cache_path, expect=dict)
            arrays = [np.asarray(data[key], dtype=np.float64) for key in CACHED]
            if all(a.shape == (len(holdout),) for a in arrays) and all(np.isfinite(a).all() for a in arrays[:3]):
                return Calibration(*arrays, fp, k)
        except (OSError, ValueError, KeyError, TypeError, InputError):
            pass  # recompute a damaged cache entry
    emb, pix, ves, mar = [], [], [], []
    batches = [[r.path for r in holdout[i : i + batch_size]] for i in range(0, len(holdout), batch_size)]
    n_workers = auto_workers(len(holdout), workers, min_per_worker=CALIBRATION_ITEMS_PER_WORKER)
    if n_workers <= 1:
        scored = (_score_files(index, paths, k) for paths in batches)
    else:
        vessel_search(index)  # kept in the index folder once, for the workers to load, not built by each
        scored = ordered_map(_score_in_worker, batches, workers=n_workers, setup=_init_scorer,
                             setup_args=(Path(index.path), index.embedder, k))
    with progress.task("Calibrating on holdout", total=len(holdout)) as t:
        try:
            for rows in scored:
                for e, p, v, m in rows:
                    emb.append(e)
                    pix.append(p)
                    ves.append(v)
                    mar.append(m)
                t.advance(len(rows))
        except BrokenProcessPool as exc:
            raise IndexBuildError(f"a calibration worker process died ({exc}); nothing was kept. Run again, with "
                                  "fewer --workers if memory is short") from None
    cache_path.parent.mkdir(mode=0o700, exist_ok=True)
    arrays = [np.asarray(a, dtype=np.float64) for a in (emb, pix, ves, mar)]
    entry = {key: [None if np.isnan(x) else float(x) for x in a] for key, a in zip(CACHED, arrays)}
    atomic_write_json(cache_path, entry, private=True)  # JSON has no NaN: a missing margin is null
    return Calibration(*arrays, fp, k)
