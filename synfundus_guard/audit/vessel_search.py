"""Candidate retrieval for the vessel biometric: a FAISS index of coarse vessel maps.

The memorization embedding finds copies, not the same patient at another visit: illumination, focus and
lesions change an image more than another patient's similar anatomy does (on 100 phantom patients of seed 11
it put the right patient among its 10 candidates for 17 % of second visits). This index searches the vessel
templates themselves. Each template (the tapered vesselness map of :func:`~.pixel_match.make_sketch`) is blurred
and reduced to ``DESC_SIDE`` x ``DESC_SIDE``, zero-mean and unit-norm; a query is described the same way in 40
views (8 orientations x 5 rotations, a second visit is rotated by up to ~10 degrees), the unmirrored ones also
shifted by one descriptor pixel each way (:data:`QUERY_SHIFTS`), and each candidate comes with the view that
matched it best, which the geometric verification then refines. On the same patients the right
one is among 10 candidates for 94 % of second visits (``bench/bench_vessels.py`` reports the end-to-end effect).

The descriptors are derived from the stored templates when a check first needs them, so indexes built
before this module need no rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import faiss
import numpy as np
from scipy import ndimage as ndi

from ..data.fov import ORIENTATIONS, orient, rotate_scale
from ..index.store import resolve_kind, trained_faiss
from .memorization import Retrieval, group_views

DESC_SIDE = 24
DESC_SIGMA = 1.5
"""Blur (template pixels) before reduction: tolerance to the small shifts and rotations between views."""
VIEW_ANGLES = (0.0, -6.0, 6.0, -12.0, 12.0)
WIDE_ANGLES = (-18.0, 18.0, -24.0, 24.0)
"""Rotations of the unmirrored, unturned image that are not searched but verified (views after the searched ones,
:func:`view_params`): the search's blurred descriptors still retrieve a second visit rotated by 20 degrees at its
12-degree view, but alignment around 12 degrees (+-4) cannot reach it. Second renderer seed 61 (80 patients, 256
px; per visit rotation ~N(0, 6) degrees): 5 of the 23 revisits the check missed were retrieved and rotated by
19-23 degrees, with scores 0.67-0.73 at the true rotation against a threshold of 0.62."""
QUERY_SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
"""Shifts (descriptor pixels: 4 template pixels) at which the views of the image itself (orientation 0) are also
searched. The field of view fixes the frame, not the eye: between visits the eye moves by up to 9 template
pixels, and a descriptor correlation falls apart past ~1 descriptor pixel. Second renderer seed 61 (80 patients,
revisits): true patient among the 30 retrieved 95.0 -> 99.4 % at 256 px, 93.1 -> 99.4 % at 128 px; 240 patients at
256 px 92.7 -> 99.2 %; phantom seed 41 99.4-100 % before and after (the 4 shifts of a plus instead of all 8:
98.5-98.8 % on the second renderer). Cost: 80 query views instead of 40."""
VIEWS = 1
"""Views kept per candidate for the coarse verification (chosen on phantom seed 11, 100 patients: 1, 2 and 3
views gave end-to-end AUC 0.952, 0.949 and 0.948; fewer views cost less)."""
DESC_VERSION = f"vdesc-v1:{DESC_SIDE}:{DESC_SIGMA}:{len(VIEW_ANGLES)}x{ORIENTATIONS}"
"""The stored descriptors' version (the query's views, :data:`QUERY_VERSION`, do not change them)."""
QUERY_VERSION = f"q{len(QUERY_SHIFTS)}:w{len(WIDE_ANGLES)}"
EXACT_MAX = 20_000
"""Largest training set the vessel search searches exactly (``ivfpq`` above). Exact search costs linearly in the
set, and every query image searches the 80 rows of :data:`QUERY_VIEWS` (FAISS alone, one thread, 30 neighbours:
149, 374 and 1 029 ms per image at 20 000, 50 000 and 100 000 vectors against 15, 24 and 32 ms with ``ivfpq``).
``ivfpq``'s recall@10 against exact search holds from 20 000 vectors up (``bench/bench_search.py --vectors
vessels``, 2 threads; sets that played no part in choosing its settings): on the second renderer's descriptors
0.9992 at 20 000 (7.2x exact's queries/s), 0.9995 at 25 000 (7.1x), 0.9993 at 50 000 (8.6x), 0.9994 at 100 000
(20x), 0.9957 at 1 M; on the phantom's 0.9984, 0.9983 and 0.9987 at 20 000-50 000 (7-12x), 0.9986 at 100 000.
The switch was at 100 000 while the search had 40 rows per image. The embedding index's ``auto`` keeps
:data:`~..index.store.EXACT_MAX` (250 000): ivfpq's recall on embeddings did not hold."""


SEARCHED = ORIENTATIONS * len(VIEW_ANGLES)
"""Views the search describes (orientation-major); views from here on are :data:`WIDE_ANGLES`."""


def view_params(view: int) -> tuple[int, float]:
    """(orientation, rotation in degrees) of query view ``view`` (view 0 is the image itself; views from
    :data:`SEARCHED` on are the image at :data:`WIDE_ANGLES`, verified but not searched)."""
    if view >= SEARCHED:
        return 0, WIDE_ANGLES[view - SEARCHED]
    return view // len(VIEW_ANGLES), VIEW_ANGLES[view % len(VIEW_ANGLES)]


QUERY_VIEWS = np.array([*range(SEARCHED), *(v for v in range(len(VIEW_ANGLES)) for _ in QUERY_SHIFTS)])
"""The view each row of :func:`query_descriptors` describes: the searched views, then each unmirrored view at each
of :data:`QUERY_SHIFTS`."""


def _reduce(maps: np.ndarray) -> np.ndarray:
    """Blur ``(n, S, S)`` maps and average them down to ``(n, DESC_SIDE, DESC_SIDE)``."""
    n, side, _ = maps.shape
    f = side // DESC_SIDE
    blurred = ndi.gaussian_filter(maps.astype(np.float32), (0, DESC_SIGMA, DESC_SIGMA))
    return blurred[:, : f * DESC_SIDE, : f * DESC_SIDE].reshape(n, DESC_SIDE, f, DESC_SIDE, f).mean((2, 4))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1)
    x = x - x.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9), dtype=np.float32)


def descriptors(templates: np.ndarray) -> np.ndarray:
    """Descriptors ``(n, DESC_SIDE**2)`` of stored vessel templates ``(n, S, S)``."""
    return _normalise(_reduce(np.asarray(templates)))


def query_descriptors(template: np.ndarray) -> np.ndarray:
    """Descriptors of one query template, a row per entry of :data:`QUERY_VIEWS` ``(80, DESC_SIDE**2)``: every
    searched view in :func:`view_params` order, then the unmirrored views shifted."""
    small = _reduce(np.asarray(template)[None])[0]
    # the warp QuerySketch.score applies for a view: orient first, then rotate
    views = [rotate_scale(oriented, a) if a else oriented
             for oriented in (orient(small, o) for o in range(ORIENTATIONS)) for a in VIEW_ANGLES]
    shifted = [ndi.shift(views[v], shift, order=0) for v in range(len(VIEW_ANGLES)) for shift in QUERY_SHIFTS]
    return _normalise(np.stack(views + shifted))


@dataclass(frozen=True)
class VesselSearch:
    """An inner-product FAISS index over the training templates' descriptors: exact up to :data:`EXACT_MAX`
    training images, ``ivfpq`` above (``kind="auto"``; why: :data:`~..index.store.INDEX_KINDS`)."""

    faiss_index: faiss.Index

    @classmethod
    def build(cls, templates: np.ndarray, chunk: int = 2048, kind: str = "auto") -> "VesselSearch":
        n = len(templates)
        kind = resolve_kind(kind, n, EXACT_MAX)
        index = trained_faiss(DESC_SIDE * DESC_SIDE, kind, n, rng=np.random.default_rng(0), sample=lambda rows:
                              np.concatenate([descriptors(templates[rows[i : i + chunk]])
                                              for i in range(0, len(rows), chunk)]))
        for i in range(0, n, chunk):  # templates may be a memory map: stream them
            index.add(descriptors(templates[i : i + chunk]))
        return cls(index)

    def retrieve(self, templates: Sequence[np.ndarray], *, k: int, views: int = VIEWS) -> list[Retrieval]:
        """The ``k`` closest training templates of each query template, each with its best ``views`` views."""
        out = []
        for t in templates:
            q = query_descriptors(t)
            sims, idx = self.faiss_index.search(q, min(k, self.faiss_index.ntotal))
            out.append(group_views(sims, idx, k, views, view_ids=QUERY_VIEWS))
        return out
