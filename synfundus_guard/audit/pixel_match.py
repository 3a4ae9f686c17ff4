"""Second-stage pixel check: normalised cross-correlation of band-passed images after alignment.

The first stage (embeddings + FAISS) proposes training images that *might* be the source of a synthetic image.
This stage decides in pixel space. Both images are brought into the canonical field-of-view frame, rank-
equalised (invariant to brightness, contrast and gamma), band-passed (the vessel tree and lesions, not the
illumination) and compared with a search over orientations, small rotations and scales; translations are searched
exhaustively by FFT cross-correlation within ``max_shift``. The score is the best normalised
cross-correlation (cosine similarity of the aligned band-pass images): ~1 for a copy, near 0 for unrelated
anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..data.fov import canonical_crop, detect_fov, disc_mask, orient, rotate_scale
from ..embed.pixel import _rank_equalise
from ._frangi import frangi_dark

SKETCH_SIDE = 96
SKETCH_VERSION = f"sketch-v4:{SKETCH_SIDE}"
_TAPER = ndi.gaussian_filter(disc_mask(SKETCH_SIDE, shrink=0.88).astype(np.float32), 2.0)
_FULL_TAPER = ndi.gaussian_filter(np.pad(np.ones((SKETCH_SIDE - 8,) * 2, np.float32), 4), 2.0)


@dataclass(frozen=True)
class AlignmentGrid:
    """The transforms searched, relative to the view the embedding stage found best."""

    angles: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
    scales: tuple[float, ...] = (0.96, 1.0, 1.04)
    max_shift: int = 8
    """Largest translation searched, in sketch pixels (8/96 = 8 % of the FOV diameter)."""


WIDE = AlignmentGrid(scales=(0.75, 0.82, 0.9, 1.0, 1.1, 1.22, 1.33), max_shift=16)
"""Default refinement for images without a field-of-view disc: nothing fixes their scale or centre, so crops,
padding and zooms are searched more widely."""
COARSE = AlignmentGrid(angles=(0.0,), scales=(1.0,))
"""Only translations: the first pass over all candidates, before the full grid refines the best ones."""


def _equalised(img: np.ndarray) -> tuple[np.ndarray, bool]:
    fov = detect_fov(img)
    canon = canonical_crop(img, fov, SKETCH_SIDE)
    mask = disc_mask(SKETCH_SIDE, shrink=0.97) if fov.is_disc else np.ones((SKETCH_SIDE,) * 2, bool)
    lum = canon.mean(axis=2)
    lum = ndi.gaussian_filter(lum, 0.7)
    return _rank_equalise(lum, mask), fov.is_disc


def _dog_transfer(side: int, s1: float, s2: float) -> np.ndarray:
    """Fourier transfer function of a difference of Gaussians (sigmas in pixels) on the rfft2 grid."""
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    f2 = fx**2 + fy**2
    return (np.exp(-2 * np.pi**2 * s1**2 * f2) - np.exp(-2 * np.pi**2 * s2**2 * f2)).astype(np.float32)


_DOG = _dog_transfer(SKETCH_SIDE, 1.0, 4.0)
_PARSEVAL = np.full(_DOG.shape, 2.0, np.float32)
_PARSEVAL[:, 0] = 1.0
_PARSEVAL[:, -1] = 1.0 if SKETCH_SIDE % 2 == 0 else 2.0


def _band_spectrum(eq: np.ndarray, is_disc: bool) -> np.ndarray:
    """Spectrum of the band-passed image, tapered to the FOV interior, zero-mean and unit-norm.

    The band-pass is applied before the taper so the FOV rim and the vignetting ring that every fundus photo
    shares do not count as matching structure.
    """
    band = np.fft.irfft2(np.fft.rfft2(eq) * _DOG, s=eq.shape) * (_TAPER if is_disc else _FULL_TAPER)
    spec = np.fft.rfft2(band)
    spec[0, 0] = 0.0
    energy = float(np.sum(_PARSEVAL * (spec.real**2 + spec.imag**2))) / (SKETCH_SIDE * SKETCH_SIDE)
    return spec / max(np.sqrt(energy), 1e-9)


def vesselness(eq: np.ndarray) -> np.ndarray:
    """Multi-scale Frangi response to dark ridges (vessels) of an equalised canonical image, in [0, ~1]."""
    v = frangi_dark(eq, (1.0, 1.5, 2.0))  # = skimage.filters.frangi(eq, (1, 1.5, 2), black_ridges=True)
    return np.sqrt(v / (np.percentile(v, 99.5) + 1e-12)).astype(np.float32)


def _vessel_spectrum(vmap: np.ndarray, is_disc: bool) -> np.ndarray:
    """Spectrum of a tapered vesselness map, zero-mean and unit-norm."""
    spec = np.fft.rfft2(vmap * (_TAPER if is_disc else _FULL_TAPER))
    spec[0, 0] = 0.0
    energy = float(np.sum(_PARSEVAL * (spec.real**2 + spec.imag**2))) / (SKETCH_SIDE * SKETCH_SIDE)
    return spec / max(np.sqrt(energy), 1e-9)


_KINDS = {"band": _band_spectrum, "vessel": _vessel_spectrum}
VESSEL_VERSION = f"vessel-v2:{SKETCH_SIDE}"


def make_sketch(img: np.ndarray, kind: str = "band") -> np.ndarray:
    """The stored representation of a training image, ``(SKETCH_SIDE, SKETCH_SIDE)`` float16: the band-pass
    sketch of the memorization check (``kind="band"``) or the vessel template of the biometric check."""
    eq, is_disc = _equalised(img)
    base = vesselness(eq) if kind == "vessel" else eq
    return np.fft.irfft2(_KINDS[kind](base, is_disc), s=(SKETCH_SIDE, SKETCH_SIDE)).astype(np.float16)


class QuerySketch:
    """A candidate image prepared for alignment against many training sketches (views built lazily)."""

    def __init__(self, img: np.ndarray, grid: AlignmentGrid | None = None, *, kind: str = "band"):
        self.eq, self.is_disc = _equalised(img)
        self._filter = _KINDS[kind]
        if kind == "vessel":  # vesselness once, then warp the map (Frangi is close to rotation-invariant)
            self.eq = vesselness(self.eq)
        self.grid = grid or (AlignmentGrid() if self.is_disc else WIDE)
        self._spectra: dict[tuple[int, float, float], np.ndarray] = {}

    def _spectrum(self, orientation: int, angle: float, scale: float) -> np.ndarray:
        key = (orientation, round(angle, 3), round(scale, 3))
        spec = self._spectra.get(key)
        if spec is None:
            base = orient(self.eq, orientation)
            warped = base if (angle == 0 and scale == 1) else rotate_scale(base, angle, scale)
            spec = self._filter(warped, self.is_disc)
            self._spectra[key] = spec
        return spec

    def template(self) -> np.ndarray:
        """The query as :func:`make_sketch` would store it (unwarped), float32."""
        return np.fft.irfft2(self._spectrum(0, 0.0, 1.0), s=(SKETCH_SIDE, SKETCH_SIDE)).astype(np.float32)

    def score(self, sketch: np.ndarray, *, orientation: int = 0, angle: float = 0.0,
              grid: AlignmentGrid | None = None) -> tuple[float, dict[str, float]]:
        """Best NCC against a training ``sketch`` around the view (``orientation``, ``angle``) and the transform."""
        tspec = np.conj(np.fft.rfft2(sketch.astype(np.float32)))
        g = grid or self.grid
        keys = [(orientation, angle + da, s) for da in g.angles for s in g.scales]
        spectra = np.stack([self._spectrum(*k) for k in keys])
        corr = np.fft.irfft2(spectra * tspec, s=(SKETCH_SIDE, SKETCH_SIDE))
        m = g.max_shift
        # keep shifts in [-m, m] (wrapped indices)
        rows = np.r_[0 : m + 1, SKETCH_SIDE - m : SKETCH_SIDE]
        window = corr[:, rows][:, :, rows]
        flat = int(np.argmax(window))
        v, iy, ix = np.unravel_index(flat, window.shape)
        best = float(window[v, iy, ix])
        dy, dx = int(rows[iy]), int(rows[ix])
        dy, dx = (dy - SKETCH_SIDE if dy > m else dy), (dx - SKETCH_SIDE if dx > m else dx)
        kf, ka, ks = keys[v]
        return best, {"orientation": float(kf), "angle": float(ka), "scale": float(ks), "dx": float(dx), "dy": float(dy)}
