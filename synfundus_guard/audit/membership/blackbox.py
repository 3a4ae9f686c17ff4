"""Black-box membership attacks on a release: what an outsider holding the synthetic images can infer.

The attacker has the release and a candidate patient's photograph (and, for the density attack, photographs
of other people from the same population: the holdout set). Two attacks, each one score per image, higher
meaning "more likely trained on":

* ``nearest-synthetic`` — GAN-Leaks style (Chen et al. 2020): cosine similarity to the closest synthetic image
  in embedding space, found with an exact FAISS inner-product search over the release.
* ``density-ratio`` — DOMIAS style (van Breugel et al. 2023): ``log p_synthetic(x) - log p_reference(x)`` with
  Gaussian kernel density estimates in a low-dimensional embedding space. A generator that memorised its
  training set puts more synthetic mass near members than the population density explains.

The embedding space is fitted on the *release only* (centre and principal axes of the synthetic images'
raw embedder features), which the attacker owns; fitting it on training images would bias the comparison
towards members. The reference density uses the holdout images, and a holdout image is never scored against
anything built from its own images: the holdout is split in two halves by patient (see
:func:`density_ratio_scores`).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
from scipy.special import logsumexp

from ...data.folder import ImageRecord
from ...data.images import list_images, load_image
from ...embed.base import Embedder
from ...embed.cache import ArrayCache
from ...errors import CheckError, InputError
from ...fsutil import sha256_file
from ...progress import NULL_PROGRESS, Progress

MIN_RELEASE = 10
"""Fewer synthetic images cannot support a density or a neighbour distribution."""


class BlackBoxAttack(str, enum.Enum):
    """The black-box attacks; the value is the attack's name in the report."""

    NEAREST = "nearest-synthetic"
    DENSITY = "density-ratio"


@dataclass(frozen=True)
class BlackBoxOptions:
    """Settings of the black-box attacks."""

    attacks: tuple[BlackBoxAttack, ...] = tuple(BlackBoxAttack)
    nearest_dim: int = 64
    """Principal axes of the release kept for the nearest-neighbour search."""
    density_dim: int = 8
    """Principal axes kept for the density estimates (kernel densities degrade fast with dimension)."""
    batch_size: int = 32


def _features(paths: Sequence[Path], embedder: Embedder, cache: ArrayCache, *, batch_size: int,
              progress: Progress, what: str) -> np.ndarray:
    """Raw embedder features ``(n, F)`` of image files, from the cache (by content hash) where possible."""
    fp = embedder.feature_fingerprint()
    out: list[np.ndarray] = []
    with progress.task(f"Membership: embedding {what}", total=len(paths)) as task:
        for lo in range(0, len(paths), batch_size):
            chunk = paths[lo:lo + batch_size]
            shas = [sha256_file(p) for p in chunk]
            got = cache.get_many(fp, shas)
            todo = [j for j, s in enumerate(shas) if s not in got]
            if todo:
                new = embedder.features([load_image(chunk[j]) for j in todo])
                fresh = {shas[j]: new[i] for i, j in enumerate(todo)}
                cache.put_many(fp, fresh)
                got.update(fresh)
            out.extend(got[s] for s in shas)
            task.advance(len(chunk))
    return np.stack(out).astype(np.float64)


@dataclass(frozen=True)
class ReleaseSpace:
    """Centre and principal axes (with their standard deviations) of the release's raw features."""

    mean: np.ndarray
    axes: np.ndarray
    """``(F, k)``: columns are principal directions, largest variance first."""
    std: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, dim: int) -> "ReleaseSpace":
        """PCA of the release features keeping at most ``dim`` axes (and fewer than the sample size)."""
        mean = features.mean(axis=0)
        _, s, vt = np.linalg.svd(features - mean, full_matrices=False)
        k = int(max(1, min(dim, len(features) - 1, vt.shape[0])))
        std = s[:k] / np.sqrt(max(len(features) - 1, 1))
        return cls(mean=mean, axes=vt[:k].T, std=np.maximum(std, 1e-12 * max(float(std[0]), 1e-12)))

    def project(self, features: np.ndarray, *, whiten: bool = False) -> np.ndarray:
        """Coordinates on the axes (divided by the release's spread along each when ``whiten``)."""
        z = (features - self.mean) @ self.axes
        return z / self.std if whiten else z


def nearest_synthetic_scores(synthetic: np.ndarray, queries: np.ndarray, *, dim: int) -> np.ndarray:
    """Cosine similarity of each query to its nearest synthetic image (release PCA space, FAISS flat IP)."""
    space = ReleaseSpace.fit(synthetic, dim)

    def unit(x: np.ndarray) -> np.ndarray:
        z = space.project(x).astype(np.float32)
        return np.ascontiguousarray(z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12))

    index = faiss.IndexFlatIP(space.axes.shape[1])
    index.add(unit(synthetic))
    sims, _ = index.search(unit(queries), 1)
    return sims[:, 0].astype(np.float64)


def _log_kde(queries: np.ndarray, points: np.ndarray, bandwidth: float) -> np.ndarray:
    """Log Gaussian kernel density (isotropic, ``bandwidth``) of ``points`` at ``queries``, in chunks."""
    d = points.shape[1]
    out = np.empty(len(queries))
    for lo in range(0, len(queries), 512):
        q = queries[lo:lo + 512]
        sq = (q**2).sum(1)[:, None] + (points**2).sum(1)[None, :] - 2 * q @ points.T
        out[lo:lo + len(q)] = logsumexp(-np.maximum(sq, 0.0) / (2 * bandwidth**2), axis=1)
    return out - np.log(len(points)) - d * np.log(bandwidth) - 0.5 * d * np.log(2 * np.pi)


def _scott(points: np.ndarray) -> float:
    """Scott's rule for an isotropic kernel: ``n^(-1/(d+4))`` times the sample's mean standard deviation."""
    n, d = points.shape
    return float(n ** (-1.0 / (d + 4)) * max(np.sqrt(points.var(axis=0, ddof=1).mean()), 1e-12))


def _deal(ids: np.ndarray, rng: np.random.Generator) -> dict[str, int]:
    """Shuffle distinct ids and deal them alternately into folds 0 and 1."""
    uniq = np.unique(ids)
    return {str(u): k % 2 for k, u in enumerate(uniq[rng.permutation(uniq.size)])}


def density_ratio_scores(synthetic: np.ndarray, reference: np.ndarray, reference_patients: Sequence[str],
                         queries: np.ndarray, query_patients: Sequence[str], *, dim: int, seed: int = 0) -> np.ndarray:
    """DOMIAS score ``log p_synthetic - log p_reference`` at each query, in the release's whitened PCA space.

    The reference patients are dealt into two halves, each with its own density estimate. A query from a
    reference patient is scored against the *other* half; every other query (a member) against a half dealt
    to its patient in the same way. So members and non-members are both scored against reference images
    independent of them, by the same two estimates in the same proportions. (Scoring non-members against the
    rest of their own set instead, leave-one-out, makes them systematically less "typical" than members when
    the set is small: the set's own spread decides their densities. That biases the attack.)
    """
    space = ReleaseSpace.fit(synthetic, dim)
    s, r, q = (space.project(x, whiten=True) for x in (synthetic, reference, queries))
    ref_p, query_p = np.asarray(reference_patients, dtype=str), np.asarray(query_patients, dtype=str)
    rng = np.random.default_rng(seed)
    ref_fold = _deal(ref_p, rng)
    if len(set(ref_fold.values())) < 2:
        raise CheckError("density-ratio attack: the reference (holdout) set needs images of at least 2 patients")
    outside = _deal(query_p[~np.isin(query_p, ref_p)], rng)
    use = np.array([1 - ref_fold[p] if p in ref_fold else outside[p] for p in query_p])
    r_fold = np.array([ref_fold[p] for p in ref_p])
    log_ref = np.empty(len(q))
    for f in (0, 1):
        half = r[r_fold == f]
        log_ref[use == f] = _log_kde(q[use == f], half, _scott(half))
    return _log_kde(q, s, _scott(s)) - log_ref


@dataclass
class BlackBoxRun:
    """Scores of every attack for the query images, and the time each attack took (embedding excluded)."""

    scores: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)
    embed_seconds: float = 0.0
    n_release: int = 0


def score_release(*, release_dir: Path, queries: Sequence[ImageRecord], reference: Sequence[ImageRecord],
                  embedder: Embedder, cache: ArrayCache | None = None,
                  options: BlackBoxOptions = BlackBoxOptions(), progress: Progress = NULL_PROGRESS) -> BlackBoxRun:
    """Run the black-box attacks of ``options`` for ``queries`` against the images of ``release_dir``.

    ``reference`` are images of non-member patients (the holdout) for the density attack. Raises
    :class:`InputError` when the release holds fewer than :data:`MIN_RELEASE` images.
    """
    release_dir = Path(release_dir)
    rels = list_images(release_dir, follow_links=False)
    if len(rels) < MIN_RELEASE:
        raise InputError(f"membership inference on a release needs at least {MIN_RELEASE} images; "
                         f"{release_dir} has {len(rels)}")
    own_cache = cache is None
    cache = cache or ArrayCache(None)
    t0 = time.perf_counter()
    try:
        kw = dict(embedder=embedder, cache=cache, batch_size=options.batch_size, progress=progress)
        synth = _features([release_dir / r for r in rels], what="release", **kw)
        feats = _features([r.path for r in queries], what="members and non-members", **kw)
        ref_feats = _features([r.path for r in reference], what="reference", **kw)
    finally:
        if own_cache:
            cache.close()
    run = BlackBoxRun(scores={}, embed_seconds=time.perf_counter() - t0, n_release=len(rels))
    for attack in options.attacks:
        t0 = time.perf_counter()
        if attack is BlackBoxAttack.NEAREST:
            scores = nearest_synthetic_scores(synth, feats, dim=options.nearest_dim)
        else:
            scores = density_ratio_scores(synth, ref_feats, [r.patient_id for r in reference], feats,
                                          [r.patient_id for r in queries], dim=options.density_dim)
        run.seconds[attack.value] = time.perf_counter() - t0
        if not np.all(np.isfinite(scores)):
            raise CheckError(f"black-box attack {attack.value} gave non-finite scores")
        run.scores[attack.value] = scores
    return run
