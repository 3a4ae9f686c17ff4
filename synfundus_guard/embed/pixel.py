"""The built-in default embedder: field-of-view-normalised, rank-equalised pixels with PCA whitening.

Why this design: it needs no downloaded weights, and near-copy detection in fundus images is a geometric and
photometric *invariance* problem rather than a semantic one.

* The field-of-view disc fixes centre and scale (shift/scale/crop of the frame are undone).
* Per-channel rank equalisation inside the FOV makes the features invariant to any monotonic intensity change
  (brightness, contrast, gamma); a light blur first absorbs noise and JPEG artefacts.
* Two blocks: a 16x16 colour layout (disc position, pigmentation, lesions) and a 32x32 band-pass of the
  luminance (the vessel tree, the identity-bearing structure).
* Query views cover the 8 mirror/quarter-turn orientations and small rotations about the FOV centre.
* PCA fitted on the training set keeps the directions in which training images differ from each other and
  partially whitens them (power 0.5 on the eigenvalues), so shared anatomy counts less than identity.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..data.fov import ORIENTATIONS, canonical_crop, detect_fov, disc_mask, orient, rotate_scale
from .base import Embedder, l2_normalize

_SIDE = 48
_COLOUR_SIDE = 16
_BAND_SIDE = 32
VIEW_ANGLES = (0.0, -6.0, 6.0, -12.0, 12.0)
"""Rotations (degrees) of the query views, each in every orientation (:data:`ORIENTATIONS`); the pixel stage
refines around the matched view (+-4 degrees), so rotations up to ~16 degrees are covered."""


def _rank_equalise(chan: np.ndarray, mask: np.ndarray) -> np.ndarray:
    vals = chan[mask]
    ranks = np.empty(vals.size, dtype=np.float32)
    ranks[np.argsort(vals, kind="stable")] = np.linspace(-1.0, 1.0, vals.size, dtype=np.float32)
    out = np.zeros_like(chan)
    out[mask] = ranks
    return out


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` exact area-averaging weights: output pixel i averages input span [i, i+1) * n_in/n_out.
    Unlike PIL's box filter it is mirror-symmetric, so resizing commutes with flips and quarter turns."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    px = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


_BAND_RESIZE = _area_matrix(_SIDE, _BAND_SIDE)


def _block_mean(x: np.ndarray, side: int) -> np.ndarray:
    f = x.shape[0] // side
    return x.reshape(side, f, side, f).mean(axis=(1, 3))


class PixelEmbedder(Embedder):
    """Default offline embedder (see module docstring)."""

    name = "pixel"
    VERSION = "pixel-v3"  # v2: FOV detection tolerates small images' pixel quantization; v3: symmetric resize

    def __init__(self, *, dim: int = 128, whiten_power: float = 0.5):
        self.dim = dim
        self.whiten_power = whiten_power
        self._mean: np.ndarray | None = None
        self._proj: np.ndarray | None = None
        self._mask = disc_mask(_SIDE, shrink=0.95)

    @property
    def n_views(self) -> int:
        return ORIENTATIONS * len(VIEW_ANGLES)

    def view_params(self, view: int) -> tuple[int, float | None]:
        return view // len(VIEW_ANGLES), VIEW_ANGLES[view % len(VIEW_ANGLES)]

    def feature_fingerprint(self) -> str:
        return f"{self.VERSION}:side{_SIDE}:c{_COLOUR_SIDE}:b{_BAND_SIDE}"

    # --- raw features ---------------------------------------------------------------------------------
    def _canonical(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fov = detect_fov(img)
        canon = canonical_crop(img, fov, _SIDE)
        mask = self._mask if fov.is_disc else np.ones((_SIDE, _SIDE), dtype=bool)
        return canon, mask

    def _view_maps(self, canon: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A view's colour layout ``(16, 16, 3)`` and luminance band-pass ``(32, 32)`` (not yet normalised)."""
        smooth = ndi.gaussian_filter(canon, sigma=(0.8, 0.8, 0))
        eq = np.stack([_rank_equalise(smooth[..., c], mask) for c in range(3)], axis=2)
        colour = np.stack([_block_mean(eq[..., c], _COLOUR_SIDE) for c in range(3)], axis=2)
        lum = eq.mean(axis=2)
        band = np.where(mask, ndi.gaussian_filter(lum, 0.7) - ndi.gaussian_filter(lum, 2.5), 0.0)
        band = _BAND_RESIZE @ band.astype(np.float32) @ _BAND_RESIZE.T
        return colour, band

    @staticmethod
    def _feature_vectors(colours: np.ndarray, bands: np.ndarray) -> np.ndarray:
        """Feature rows of views given as colour layouts ``(n, 16, 16, 3)`` and band-passes ``(n, 32, 32)``: each
        block, channel-major, with its mean removed and scaled to unit norm."""
        blocks = []
        for block in (np.moveaxis(colours, 3, 1).reshape(len(colours), -1), bands.reshape(len(bands), -1)):
            block = block - block.mean(axis=1, keepdims=True)
            blocks.append(block / np.maximum(np.sqrt(np.einsum("ij,ij->i", block, block)), 1e-6)[:, None])
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def _view_features(self, canon: np.ndarray, mask: np.ndarray) -> np.ndarray:
        colour, band = self._view_maps(canon, mask)
        return self._feature_vectors(colour[None], band[None])[0]

    def _views(self, canon: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        """Features of view (orientation o, angle a) = ``rotate_scale(orient(canon, o), a)``, for every o, a.

        Mirrors and quarter turns commute with everything after them (isotropic smoothing, rank equalisation
        inside the symmetric mask, block means, band-pass, resizing), and rotating a mirrored image by ``a``
        mirrors the image rotated by ``-a``; so the maps are computed once per rotation and oriented 8 ways.
        """
        maps = {a: self._view_maps(canon if a == 0 else rotate_scale(canon, a), mask)
                for a in {*VIEW_ANGLES, *(-a for a in VIEW_ANGLES)}}
        views = [maps[-angle if o >= 4 and angle else angle] for o in range(ORIENTATIONS) for angle in VIEW_ANGLES]
        orientations = [o for o in range(ORIENTATIONS) for _ in VIEW_ANGLES]
        return list(self._feature_vectors(np.stack([orient(c, o) for (c, _), o in zip(views, orientations)]),
                                          np.stack([orient(b, o) for (_, b), o in zip(views, orientations)])))

    def features(self, images: Sequence[np.ndarray], *, views: bool = False) -> np.ndarray:
        rows = []
        for img in images:
            canon, mask = self._canonical(img)
            rows.append(np.stack(self._views(canon, mask)) if views else self._view_features(canon, mask))
        return np.stack(rows).astype(np.float32)

    # --- projection -----------------------------------------------------------------------------------
    def fit(self, features: np.ndarray) -> None:
        """PCA on training features, keeping ``dim`` components, partially whitened."""
        x = np.asarray(features, dtype=np.float64)
        self._mean = x.mean(axis=0)
        xc = x - self._mean
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        k = int(min(self.dim, max(1, len(x) - 1), vt.shape[0]))
        var = (s[:k] ** 2) / max(len(x) - 1, 1)
        var = var + 1e-3 * var.mean()  # shrinkage: never divide by a near-zero variance
        self._proj = (vt[:k].T / var**(self.whiten_power / 2)).astype(np.float32)
        self._mean = self._mean.astype(np.float32)

    def project(self, features: np.ndarray) -> np.ndarray:
        if self._proj is None or self._mean is None:
            raise RuntimeError("PixelEmbedder.project called before fit()")
        return l2_normalize((features - self._mean) @ self._proj)

    def state(self) -> dict[str, np.ndarray]:
        if self._proj is None or self._mean is None:
            return {}
        return {"mean": self._mean, "proj": self._proj, "whiten_power": np.float32(self.whiten_power)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._mean = np.asarray(state["mean"], dtype=np.float32)
        self._proj = np.asarray(state["proj"], dtype=np.float32)
        self.whiten_power = float(state["whiten_power"])
        self.dim = self._proj.shape[1]
