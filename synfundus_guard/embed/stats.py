"""``stats``: a fixed, weight-free image descriptor for fidelity metrics (FD, KD, precision/recall ...).

The memorization embedder (:mod:`.pixel`) is built to *ignore* what fidelity must see: it rank-equalises colour
and brightness away so that a recoloured copy still matches. This descriptor keeps them. From the canonical field
of view (:func:`~synfundus_guard.data.fov.canonical_crop`, so image size and framing do not count) it measures,
each group scaled to comparable weight:

* **colour layout** (48): mean R, G, B in a 4 x 4 grid inside the field of view, as recorded (a colour cast, a
  too-dark or washed-out release moves these);
* **colour distribution** (15): the 10/25/50/75/90 % quantiles of each channel inside the field of view;
* **sharpness** (4): log energy of the four bands of a Laplacian pyramid of luminance, fine to coarse (a blurred
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

from ..data.fov import Fov, canonical_crop, detect_fov, disc_mask, resize_image
from .base import Embedder
from .pixel import _block_mean

SIDE = 96
"""Canonical side the descriptor is measured at."""
FOV_SIDE = 96
"""The field of view is found on a luminance copy at most this large (a quarter of the audit's work: a disc's centre and
radius need no more, and this descriptor, unlike the memorization check, never compares pixels one to one)."""
_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
_LEVELS = 4
"""Levels of the Laplacian pyramid whose band energies measure sharpness (96, 48, 24, 12 px)."""
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
        fov = _fov(img)
        canon = canonical_crop(img, fov, SIDE).astype(np.float32)
        mask = self._disc if fov.is_disc else self._full
        layout = np.stack([_masked_block_mean(canon[..., c], mask, 4) for c in range(3)], axis=2).ravel()
        quantiles = _quantiles(canon[mask])
        lum = canon.mean(axis=2)
        sharp, smooth = _laplacian_energies(lum, mask)
        eq = _block_mean(_equalise(smooth, mask), SIDE // 2)  # structure at half size: vessels, disc, arcades
        half = _block_mean(mask.astype(np.float32), SIDE // 2) > 0.5
        band = np.where(half, ndi.gaussian_filter(eq, 0.5) - ndi.gaussian_filter(eq, 3.0), 0.0)
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


_BINS = 1024
"""Histogram resolution of the quantiles and the equalisation (a 1/1024 step: finer than 8-bit pixels)."""


def _cdf(values: np.ndarray) -> np.ndarray:
    """Cumulative fraction of ``values`` (in [0, 1]) at or below each of :data:`_BINS` levels."""
    codes = np.clip((values * (_BINS - 1)).astype(np.int32), 0, _BINS - 1)
    return np.cumsum(np.bincount(codes, minlength=_BINS)) / max(values.size, 1)


def _quantiles(inside: np.ndarray) -> np.ndarray:
    """:data:`_QUANTILES` of each channel of ``inside`` (n, 3) from its histogram (channel-major, 15 values)."""
    return np.concatenate([np.searchsorted(_cdf(inside[:, c]), _QUANTILES) / (_BINS - 1) for c in range(3)])


def _equalise(chan: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Histogram equalisation to [-1, 1] inside ``mask`` (0 outside): ranks from the histogram, not a sort."""
    cdf = _cdf(chan[mask])
    codes = np.clip((chan * (_BINS - 1)).astype(np.int32), 0, _BINS - 1)
    return np.where(mask, cdf[codes] * 2.0 - 1.0, 0.0).astype(np.float32)


def _laplacian_energies(lum: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log mean energy inside ``mask`` of each band of a Laplacian pyramid (fine to coarse), and the first
    smoothed level (for the structure group). Each level is smoothed (sigma 1), its band is what the smoothing
    removed, and the smoothed level is halved for the next: the cost of one small filter per level."""
    energies, level, keep, smooth = [], lum, mask, None
    for i in range(_LEVELS):
        blurred = ndi.gaussian_filter(level, 1.0)
        smooth = blurred if i == 0 else smooth
        energies.append(np.log(np.mean((level - blurred)[keep] ** 2) + 1e-8))
        if i + 1 < _LEVELS:
            level = _block_mean(blurred, level.shape[0] // 2)
            keep = _block_mean(keep.astype(np.float32), keep.shape[0] // 2) > 0.5
    return np.asarray(energies), smooth


def _fov(img: np.ndarray) -> Fov:
    """The field of view, found on a luminance copy at most :data:`FOV_SIDE` large, in ``img``'s pixels.

    A whole disc on a dark background (the common case) is measured by its moments: centre of mass and the
    radius of a disc of the same area, a fraction of :func:`detect_fov`'s cost. A bright region that touches the
    frame (a disc cut by the sensor, or no disc at all) goes to :func:`detect_fov`, which fits the visible arc.
    """
    h, w = img.shape[:2]
    scale = min(1.0, FOV_SIDE / max(h, w))
    lum = img.mean(axis=2, keepdims=True, dtype=np.float32)  # the field of view is a matter of luminance
    small = resize_image(lum, max(8, round(h * scale)), max(8, round(w * scale))) if scale < 1.0 else lum
    found = _disc_by_moments(small[..., 0]) or detect_fov(small)
    sx, sy = w / small.shape[1], h / small.shape[0]
    return Fov(cx=(found.cx + 0.5) * sx - 0.5, cy=(found.cy + 0.5) * sy - 0.5, radius=found.radius * sx,
               is_disc=found.is_disc)


def _disc_by_moments(lum: np.ndarray) -> Fov | None:
    """A whole disc's centre and radius from the moments of the bright region; None when it is not clearly one."""
    lo, hi = np.percentile(lum, [1, 99])
    if hi - lo < 0.05 or lo > 0.1:
        return None
    mask = lum > lo + 0.12 * (hi - lo)
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    frac = mask.mean()
    if border.any() or not 0.15 < frac < 0.9:
        return None
    ys, xs = np.nonzero(mask)
    return Fov(cx=float(xs.mean()), cy=float(ys.mean()), radius=float(np.sqrt(ys.size / np.pi)), is_disc=True)


def _masked_block_mean(x: np.ndarray, mask: np.ndarray, side: int) -> np.ndarray:
    """Mean of ``x`` over the masked pixels of each cell of a ``side`` x ``side`` grid (0 where a cell is empty)."""
    n = x.shape[0] // side
    vals = (x * mask).reshape(side, n, side, n).sum(axis=(1, 3))
    counts = mask.reshape(side, n, side, n).sum(axis=(1, 3))
    return np.where(counts > 0, vals / np.maximum(counts, 1), 0.0)
