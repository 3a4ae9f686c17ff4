"""Memorization check: is an image a (transformed) copy of a training image?

Stage 1 embeds every query view (mirrors, quarter turns, small rotations) and retrieves the ``k`` nearest training images from
the FAISS index. Stage 2 aligns the image with each retrieved candidate in pixel space
(:mod:`.pixel_match`) and keeps the best normalised cross-correlation. Two scores per image:

* ``memorization.embedding_sim`` — best embedding inner product (higher = closer);
* ``memorization.pixel_ncc`` — best aligned pixel correlation over the candidates (higher = closer).

Each is compared with a threshold calibrated on holdout (other-patient) images scored the same way
(:mod:`synfundus_guard.index.calibrate`); the policy chooses the quantile. Both scores are higher-is-closer,
so "closer than a new patient gets" means "above the threshold".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np

from ..index.store import GuardIndex
from ._align_torch import device_fingerprint
from .base import Candidate, Check, Finding
from .pixel_match import ALIGN_VERSION, COARSE, SKETCH_VERSION, QuerySketch, sketch_spectra

EMB_KEY = "memorization.embedding_sim"
PIX_KEY = "memorization.pixel_ncc"
COARSE_ANGLES = (-8.0, -4.0, 0.0, 4.0, 8.0)
"""Rotations tried in stage 2 when the embedder cannot tell which rotation matched."""
REFINE = 3
"""Candidate-views (best by the coarse pass) refined over the full alignment grid."""
MATCH_VERSION = f"{SKETCH_VERSION}:{ALIGN_VERSION}:r{REFINE}"
"""Changes whenever the pixel scores would: calibrations cached under another version are recomputed, and an
audit journal of another version is not resumed."""


@dataclass(frozen=True)
class MemoScore:
    """Scores of one image against the training set, with private evidence."""

    embedding_sim: float
    pixel_ncc: float
    best: int
    """Index (into the training index) of the closest training image by pixel score."""
    transform: dict[str, float] = field(default_factory=dict)
    candidates: tuple[int, ...] = ()


VIEWS_PER_CANDIDATE = 3
"""Views kept per candidate: at low resolution the best-matching view can be a wrong orientation."""
IDENTITY_VIEW = 0
"""The query view that is the image itself (orientation 0, no rotation) for every embedder."""


@dataclass(frozen=True)
class Retrieval:
    """Stage 1 for one image: training candidates, closest first, each with its best views (best first)."""

    embedding_sim: float
    candidates: tuple[tuple[int, tuple[int, ...]], ...]


def group_views(sims: np.ndarray, idx: np.ndarray, k: int, views_per_candidate: int = VIEWS_PER_CANDIDATE, *,
                view_ids: Sequence[int] | None = None) -> Retrieval:
    """One image's search results ``(R, k')`` per query row, grouped by training image: the ``k`` closest, each
    with its best ``views_per_candidate`` distinct views (best first). Row ``r`` describes view ``view_ids[r]``
    (default: view ``r``; several rows may describe one view, e.g. at other shifts)."""
    sims, idx = np.asarray(sims), np.asarray(idx)
    rows, cols = idx.shape
    view = np.repeat(np.arange(rows) if view_ids is None else np.asarray(view_ids, dtype=np.int64)[:rows], cols)
    j, s = idx.ravel(), sims.ravel()
    keep = j >= 0
    j, view, s = j[keep], view[keep], s[keep]
    if not len(j):
        return Retrieval(-1.0, ())
    # a (candidates x views) table of each pair's best score; candidates tied on their best score keep the order
    # in which the rows first name them, and a candidate's views tied on score put the larger view first
    cand, first, inv = np.unique(j, return_index=True, return_inverse=True)
    n_views = int(view.max()) + 1
    table = np.full((len(cand), n_views), -np.inf)
    np.maximum.at(table, (inv, n_views - 1 - view), s.astype(np.float64))  # columns: views, largest first
    best = table.max(axis=1)
    order = np.lexsort((first, -best))[:k]
    top = np.argsort(-table[order], axis=1, kind="stable")[:, :views_per_candidate]
    return Retrieval(float(best[order[0]]), tuple(
        (int(cand[c]), tuple(n_views - 1 - int(v) for v in t if table[c, v] > -np.inf)) for c, t in zip(order, top)))


def retrieve(index: GuardIndex, images: Sequence[np.ndarray], *, k: int) -> list[Retrieval]:
    """Embed every view of every image and keep the ``k`` closest training images with their best views."""
    emb = index.embed(images, views=True)  # (n, V, D)
    n, v, d = emb.shape
    sims, idx = index.search(emb.reshape(n * v, d), k)
    sims, idx = sims.reshape(n, v, -1), idx.reshape(n, v, -1)
    return [group_views(sims[i], idx[i], k) for i in range(n)]


class Alignment(NamedTuple):
    """Best aligned correlation of a query with its candidates: score, training index, transform, and each
    candidate's own best score (``per_candidate``: training index -> score)."""

    score: float
    best: int
    transform: dict[str, float]
    per_candidate: dict[int, float]


class CoarsePass(NamedTuple):
    """The coarse pass of :func:`align_candidates` over one query's candidates: translation-only scores of every
    candidate-view, best first, which :func:`refine_pass` refines."""

    order: list[int]
    """Candidate training indices; a pair's first element is a slot in this list."""
    spectra: np.ndarray
    """The candidates' :func:`~.pixel_match.sketch_spectra`, in ``order``."""
    ranked: list[tuple[tuple[float, dict[str, float]], tuple[int, int, float]]]
    """((score, transform), (slot, orientation, angle)) of every candidate-view, best first."""

    def per_slot(self) -> dict[int, float]:
        """Each candidate's (slot's) best coarse score."""
        out: dict[int, float] = {}
        for (score, _), (slot, _, _) in self.ranked:
            out.setdefault(slot, score)  # best first
        return out

    def alignment(self) -> Alignment:
        """The coarse pass's own result: its best candidate-view and each candidate's best coarse score."""
        (score, t), (slot, _, _) = self.ranked[0]
        return Alignment(score, self.order[slot], t, {self.order[s]: v for s, v in self.per_slot().items()})


def coarse_pass(query: QuerySketch, retrieval: Retrieval, templates: np.ndarray, *,
                view_params: Callable[[int], tuple[int, float | None]],
                extra_views: Sequence[int] = ()) -> CoarsePass | None:
    """Translation-only scores of every retrieved candidate at the views that matched it, plus ``extra_views``
    (``view_params`` maps a view to its orientation and rotation, ``None`` when the retrieval cannot tell);
    ``None`` when there is no candidate."""
    order = list(dict.fromkeys(j for j, _ in retrieval.candidates))  # each candidate's templates, once
    slots = {j: slot for slot, j in enumerate(order)}
    pairs = []
    for j, views in retrieval.candidates:
        for view in dict.fromkeys((*views, *extra_views)):
            orientation, angle = view_params(view)
            pairs += [(slots[j], orientation, a) for a in (COARSE_ANGLES if angle is None else (angle,))]
    if not pairs:
        return None
    spectra = sketch_spectra(np.stack([np.asarray(templates[j]) for j in order]))
    ranked = sorted(zip(query.score_many(spectra, pairs, grid=COARSE), pairs), key=lambda c: -c[0][0])
    return CoarsePass(order, spectra, ranked)


def refine_pairs(coarse: CoarsePass, refine: int | None = None, refine_each: bool = False, *,
                 first_retrieved: int = 0) -> list[tuple]:
    """The candidate-views :func:`refine_pass` refines: the ``refine`` (default :data:`REFINE`) best of the coarse
    pass; then the best view of each of the ``first_retrieved`` candidates the search put first (a translation-only
    score misranks a candidate whose match needs a rotation or scale, the search's order does not); with
    ``refine_each`` the best view of every candidate (so that each candidate's score is a refined one)."""
    top = [pair for _, pair in coarse.ranked[: REFINE if refine is None else refine]]
    firsts: dict[int, tuple] = {}
    for _, pair in coarse.ranked:
        firsts.setdefault(pair[0], pair)  # each slot's best view, best slot first
    extra = list(firsts.values()) if refine_each else [firsts[s] for s in range(first_retrieved) if s in firsts]
    top += [pair for pair in extra if pair not in top]
    return top


def refine_pass(query: QuerySketch, coarse: CoarsePass, pairs: Sequence[tuple],
                start: Alignment | None = None) -> Alignment:
    """``start`` (default: the coarse pass's own result) with the candidate-views ``pairs`` (of
    :func:`refine_pairs`) aligned over the full rotation and scale grid. Refined scores only add to the coarse
    ones: the grid includes the coarse transform. Refining pairs in two calls gives what one call over both
    gives."""
    start = start or coarse.alignment()
    slots = {j: slot for slot, j in enumerate(coarse.order)}
    per_slot = {slots[j]: s for j, s in start.per_candidate.items()}
    best_score, best_j, best_t = start.score, start.best, start.transform
    for (score, t), (slot, _, _) in zip(query.score_many(coarse.spectra, pairs), pairs):
        per_slot[slot] = max(per_slot[slot], score)
        if score > best_score:
            best_score, best_j, best_t = score, coarse.order[slot], t
    return Alignment(best_score, best_j, best_t, {coarse.order[slot]: s for slot, s in per_slot.items()})


def align_candidates(query: QuerySketch, retrieval: Retrieval, templates: np.ndarray, *,
                     view_params: Callable[[int], tuple[int, float | None]], refine: int | None = None,
                     extra_views: Sequence[int] = (), refine_each: bool = False) -> Alignment:
    """Aligned correlation of ``query`` with the retrieved candidates' ``templates``: :func:`coarse_pass`, then
    :func:`refine_pass` of its :func:`refine_pairs`."""
    coarse = coarse_pass(query, retrieval, templates, view_params=view_params, extra_views=extra_views)
    if coarse is None:
        return Alignment(-1.0, -1, {}, {})
    return refine_pass(query, coarse, refine_pairs(coarse, refine, refine_each))


def align_best(query: QuerySketch, retrieval: Retrieval, templates: np.ndarray, *,
               view_params: Callable[[int], tuple[int, float | None]], refine: int | None = None,
               extra_views: Sequence[int] = ()) -> tuple[float, int, dict[str, float]]:
    """Best aligned correlation of ``query`` with the retrieved candidates' ``templates`` (score, training index,
    transform; :func:`align_candidates`)."""
    a = align_candidates(query, retrieval, templates, view_params=view_params, refine=refine, extra_views=extra_views)
    return a.score, a.best, a.transform


def score_images(index: GuardIndex, images: Sequence[np.ndarray], *, k: int,
                 device: str | None = None) -> list[MemoScore]:
    """Score images against the training index (both stages; the alignment on the torch ``device`` where given,
    :class:`~.pixel_match.QuerySketch`)."""
    out = []
    for img, r in zip(images, retrieve(index, images, k=k)):
        # The unrotated view is always tried too: a generator's copies are mostly unrotated, and where the
        # embedding separates the training images poorly (few of them, similar anatomy) its view ranking is noise.
        score, j, t = align_best(QuerySketch(img, device=device), r, index.sketches,
                                 view_params=index.embedder.view_params, extra_views=(IDENTITY_VIEW,))
        out.append(MemoScore(r.embedding_sim, score, j, t, tuple(c for c, _ in r.candidates)))
    return out


class MemorizationCheck(Check):
    """Flags images closer to a training image than holdout patients get (either stage)."""

    name = "memorization"

    def __init__(self, *, index: GuardIndex, k: int, embedding_threshold: float, pixel_threshold: float,
                 calibration_info: dict | None = None, device: str | None = None):
        self.index = index
        self.device = device
        """Torch device of the alignment (:func:`~._align_torch.resolve_device`); ``None``: the CPU path."""
        self.k = k
        self.embedding_threshold = float(embedding_threshold)
        self.pixel_threshold = float(pixel_threshold)
        self.calibration_info = calibration_info or {}

    def fingerprint(self) -> dict:
        return {
            "name": self.name,
            "k": self.k,
            "match": MATCH_VERSION,
            "embedding_threshold": self.embedding_threshold,
            "pixel_threshold": self.pixel_threshold,
            "embedder": self.index.embedder.fingerprint(),
            **self.calibration_info,
            **device_fingerprint(self.device),
        }

    def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
        scores = score_images(self.index, [c.image for c in batch], k=self.k, device=self.device)
        findings = []
        for s in scores:
            reasons = []
            if s.embedding_sim > self.embedding_threshold:
                reasons.append(
                    f"near-copy of a training image: embedding similarity {s.embedding_sim:.3f} > "
                    f"{self.embedding_threshold:.3f}"
                )
            if s.pixel_ncc > self.pixel_threshold:
                reasons.append(
                    f"near-copy of a training image: aligned pixel correlation {s.pixel_ncc:.3f} > "
                    f"{self.pixel_threshold:.3f}"
                )
            rec = self.index.records[s.best] if s.best >= 0 else {}
            private = {
                "closest_training_image": rec.get("file_name"),
                "closest_image_id": rec.get("image_id"),
                "closest_patient_id": rec.get("patient_id"),
                "closest_index": s.best,
                "transform": s.transform,
            }
            findings.append(
                Finding(
                    check=self.name,
                    flagged=bool(reasons),
                    reasons=tuple(reasons),
                    scores={EMB_KEY: round(s.embedding_sim, 6), PIX_KEY: round(s.pixel_ncc, 6)},
                    private=private,
                )
            )
        return findings
