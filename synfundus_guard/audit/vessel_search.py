"""Candidate retrieval for the vessel biometric: a FAISS index of coarse vessel maps.

The memorization embedding finds copies, not the same patient at another visit: illumination, focus and
lesions change an image more than another patient's similar anatomy does (on 100 phantom patients of seed 11
it put the right patient among its 10 candidates for 17 % of second visits). This index searches the vessel
templates themselves. Each template (the tapered vesselness map of :func:`~.pixel_match.make_sketch`) is blurred
and reduced to ``DESC_SIDE`` x ``DESC_SIDE``, zero-mean and unit-norm; a query is described the same way in 40
views (8 orientations x 5 rotations, a second visit is rotated by up to ~10 degrees) and each candidate comes
with the view that matched it best, which the geometric verification then refines. On the same patients the right
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
VIEWS = 1
"""Views kept per candidate for the coarse verification (chosen on phantom seed 11, 100 patients: 1, 2 and 3
views gave end-to-end AUC 0.952, 0.949 and 0.948; fewer views cost less)."""
DESC_VERSION = f"vdesc-v1:{DESC_SIDE}:{DESC_SIGMA}:{len(VIEW_ANGLES)}x{ORIENTATIONS}"
EXACT_MAX = 100_000
"""Largest training set the vessel search searches exactly (``ivfpq`` above). Exact search costs linearly in the
set, 40 query views per image: ~2.5 ms per image per 1 000 training images on 2 cores (``bench/bench_scale.py``:
69 ms at 1 000, 92 ms at 10 000), so ~0.25 s at 100 k. At 100 k vectors ``ivfpq`` answered 4.5x faster than exact
search at recall@10 0.9994 on the second renderer's descriptors and 0.9986 on the phantom's (0.9957 at 1 M;
``bench/bench_search.py``, whose sets played no part in choosing its settings). The embedding index's ``auto``
keeps :data:`~..index.store.EXACT_MAX` (250 000): ivfpq's recall on embeddings did not hold."""


def view_params(view: int) -> tuple[int, float]:
    """(orientation, rotation in degrees) of query view ``view`` (view 0 is the image itself)."""
    return view // len(VIEW_ANGLES), VIEW_ANGLES[view % len(VIEW_ANGLES)]


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
    """Descriptors of every view of one query template, ``(40, DESC_SIDE**2)``, in :func:`view_params` order."""
    small = _reduce(np.asarray(template)[None])[0]
    # the warp QuerySketch.score applies for a view: orient first, then rotate
    return _normalise(np.stack([rotate_scale(oriented, a) if a else oriented
                                for oriented in (orient(small, o) for o in range(ORIENTATIONS))
                                for a in VIEW_ANGLES]))


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
            out.append(group_views(sims, idx, k, views))
        return out
