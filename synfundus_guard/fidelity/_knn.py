"""Exact nearest-neighbour primitives behind the fidelity metrics: FAISS selects, float64 decides.

``prdc.compute_prdc`` builds the full N x M distance matrix (40 GB at 100k x 100k). FAISS' flat indexes are
exhaustive, hence exact, searches run as float32 BLAS products over blocks, in bounded memory. Float32
``|x|^2 - 2 x.y + |y|^2`` loses digits to cancellation, so here FAISS only *selects* candidate neighbours; every
distance that decides a metric is recomputed in float64 from the two vectors (callers also centre the data on
one mean). Where a selection could have been cut off by float32 error, the search is repeated wider.
"""

from __future__ import annotations

import faiss
import numpy as np

_CHUNK_VALUES = 1 << 22  # float64 values per recomputation chunk (32 MB): bounds memory for any k and D


def _search(base: np.ndarray, queries: np.ndarray, k: int, *, inner_product: bool = False):
    """FAISS exhaustive search (L2 or inner product) of float32 copies; returns (scores, indices)."""
    index = (faiss.IndexFlatIP if inner_product else faiss.IndexFlatL2)(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def _chunks(n_rows: int, width: int):
    step = max(1, _CHUNK_VALUES // max(1, width))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _exact(base: np.ndarray, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Float64 Euclidean distances ``|queries[q] - base[idx[q, j]]|`` for every candidate, chunked."""
    out = np.empty(idx.shape, dtype=np.float64)
    for s in _chunks(len(idx), idx.shape[1] * base.shape[1]):
        diff = base[idx[s]] - queries[s, None, :]
        out[s] = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff))
    return out


def knn(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``base`` for each query: (float64 distances ascending, indices).

    A query that is itself a row of ``base`` finds itself at distance 0, as in prdc's full distance matrix.
    """
    _, idx = _search(base, queries, k)
    dist = _exact(base, queries, idx)
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


def kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest *other* row: the (k+1)-th smallest of its distance row (self = 0).

    This is prdc's ``get_kth_value(distances, k + 1)``, duplicates included.
    """
    return knn(x, x, k + 1)[0][:, k]


def ball_counts(centers: np.ndarray, radii: np.ndarray, queries: np.ndarray, *, any_only: bool = False,
                start_k: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """For each query q, how many balls contain it strictly: ``#{i : |q - centers[i]| < radii[i]}``; and for
    each ball whether it contains any query (coverage, for free: complete only without ``any_only``).

    ``r_i^2 - |q - c_i|^2 = <[q, 1], [2 c_i, r_i^2 - |c_i|^2]> - |q|^2``, so the balls that contain q most
    deeply are the top inner products of augmented vectors, one exact FAISS search. Candidates are checked in
    float64; a query whose k-th candidate could still be inside (within float32 error) is searched again with
    4 x k, up to all centres, so the count is exact. ``any_only`` stops once one ball is found (recall
    needs only that). Memory stays O(queries x k), whatever the overlap of the balls.
    """
    aug_c = np.hstack([2.0 * centers, (radii**2 - np.einsum("nd,nd->n", centers, centers))[:, None]])
    aug_q = np.hstack([queries, np.ones((len(queries), 1))])
    q_sq = np.einsum("nd,nd->n", queries, queries)
    tol = 1e-4 * (q_sq + float(np.abs(aug_c).max()) * (1.0 + float(np.sqrt(q_sq.max()))))
    counts, hit = np.zeros(len(queries), dtype=np.int64), np.zeros(len(centers), dtype=bool)
    todo = np.arange(len(queries))
    k = min(start_k, len(centers))
    while len(todo):
        scores, idx = _search(aug_c, aug_q[todo], k, inner_product=True)
        inside = _exact(centers, queries[todo], idx) < radii[idx]
        counts[todo] = inside.sum(axis=1)
        hit[idx[inside]] = True
        if k >= len(centers):
            break
        maybe_more = scores[:, -1] - q_sq[todo] > -tol[todo]
        if any_only:
            maybe_more &= counts[todo] == 0
        todo, k = todo[maybe_more], min(4 * k, len(centers))
    return counts, hit
