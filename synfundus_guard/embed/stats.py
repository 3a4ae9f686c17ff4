"""``stats``: a fixed, weight-free image descriptor for fidelity metrics (FD, KD, precision/recall ...).

The memorization embedder (:mod:`.pixel`) is built to *ignore* what fidelity must see: it rank-equalises colour
and brightness away so that a recoloured copy still matches. This descriptor keeps them. From the canonical field
of view (:func:`~synfundus_guard.data.fov.canonical_crop`, so image size and framing do not count) it measures,
each group scaled to comparable weight:

* **colour layout** (48): mean R, G, B in a 4 x 4 grid inside the field of view, as recorded (a colour cast, a
  too-dark or washed-out release moves these);
* **colour distribution** (15): the 10/25/50/75/90 % quantiles of each channel inside the field of view;
* **sharpness** (4): log energy of four difference-of-Gaussian bands of luminance, fine to coarse (a blurred
  release loses the fine bands);
* **structure** (64): an 8 x 8 band-pass of rank-equalised luminance (vessel arcades, optic disc position).

It has no weights and nothing fitted, so its features mean the same on every machine and for every data set
(its fingerprint names the version). Where a stronger, learned extractor is wanted, ``openclip:ARCH:CKPT`` loads
an open_clip image tower from a local checkpoint. The numbers of the bench (``bench/bench_fidelity.py``) say
which defects each metric sees with it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..data.fov import canonical_crop, detect_fov, disc_mask
from .base import Embedder
from .pixel import _block_mean, _rank_equalise

SIDE = 128
"""Canonical side the descriptor is measured at."""
_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
_SIGMAS = (1.0, 2.0, 4.0, 8.0)
"""Gaussian levels of luminance; the four sharpness bands lie between the image and level 1, 1 and 2, ..."""
_GROUPS = (("colour_layout", 48), ("colour_quantiles", 15), ("sharpness", 4), ("structure", 64))
DIM = sum(n for _, n in _GROUPS)


class StatsEmbedder(Embedder):
    """See the module docstring. ``features`` is the descriptor; ``project`` only L2-normalises it."""

    name = "stats"
    VERSION = "stats-v1"

    def __init__(self) -> None:
        self._disc = disc_mask(SIDE, shrink=0.95)
        self._full = np.ones((SIDE, SIDE), dtype=bool)

    @property
    def n_views(self) -> int:
        return 1

    def feature_fingerprint(self) -> str:
        return f"{self.VERSION}:side{SIDE}:" + ",".join(f"{g}{n}" for g, n in _GROUPS)

    def describe(self, img: np.ndarray) -> np.ndarray:
        """The descriptor of one float RGB image, ``(DIM,)`` float32."""
        fov = detect_fov(img)
        canon = canonical_crop(img, fov, SIDE).astype(np.float32)
        mask = self._disc if fov.is_disc else self._full
        inside = canon[mask]
        layout = np.stack([_masked_block_mean(canon[..., c], mask, 4) for c in range(3)], axis=2).ravel()
        quantiles = np.quantile(inside, _QUANTILES, axis=0).T.ravel()
        lum = canon.mean(axis=2)
        levels = [lum] + [ndi.gaussian_filter(lum, s) for s in _SIGMAS]  # each band: one level minus the next
        sharp = np.array([np.log(np.mean((fine - coarse)[mask] ** 2) + 1e-8)
                          for fine, coarse in zip(levels[:-1], levels[1:])])
        eq = _rank_equalise(levels[1], mask)
        band = np.where(mask, ndi.gaussian_filter(eq, 1.0) - ndi.gaussian_filter(eq, 6.0), 0.0)
        structure = _block_mean(band, 8).ravel() * 4.0
        # Weights put each group on a comparable scale (colour values are in [0, 1], log energies span ~10).
        return np.concatenate([layout, quantiles, sharp / 4.0, structure]).astype(np.float32)

    def features(self, images: Sequence[np.ndarray], *, views: bool = False) -> np.ndarray:
        rows = np.stack([self.describe(img) for img in images]) if len(images) else np.zeros((0, DIM), np.float32)
        return rows[:, None, :] if views else rows

    def project(self, features: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(features, axis=-1, keepdims=True)
        return (features / np.maximum(norm, 1e-12)).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        return None


def _masked_block_mean(x: np.ndarray, mask: np.ndarray, side: int) -> np.ndarray:
    """Mean of ``x`` over the masked pixels of each cell of a ``side`` x ``side`` grid (0 where a cell is empty)."""
    n = x.shape[0] // side
    vals = (x * mask).reshape(side, n, side, n).sum(axis=(1, 3))
    counts = mask.reshape(side, n, side, n).sum(axis=(1, 3))
    return np.where(counts > 0, vals / np.maximum(counts, 1), 0.0)
