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
from functools import lru_cache
from typing import Any, Sequence

import cv2
import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

from ..data.fov import (WARP_VERSION, canonical_crop, crop_coverage, detect_fov, disc_mask, orient_contiguous,
                        rotate_scale)
from ..data.memo import per_image
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


@lru_cache(maxsize=2)
def _ranked_mask(is_disc: bool) -> np.ndarray:
    """The canonical pixels :func:`_equalised` ranks: the (slightly shrunk) disc, or the whole square (read-only,
    computed once)."""
    mask = disc_mask(SKETCH_SIDE, shrink=0.97) if is_disc else np.ones((SKETCH_SIDE,) * 2, bool)
    mask.setflags(write=False)
    return mask


@per_image(maxsize=64)  # the memorization and vessels checks equalise the same images, one after the other
def _equalised(img: np.ndarray) -> tuple[np.ndarray, bool, np.ndarray]:
    """The rank-equalised canonical crop of ``img`` (ranked on its disc, or the whole square), whether it has a
    field-of-view disc, and the ranked pixels that hold image data (not the black beyond the frame's edges)."""
    fov = detect_fov(img)
    canon = canonical_crop(img, fov, SKETCH_SIDE)
    mask = _ranked_mask(fov.is_disc)
    lum = canon.mean(axis=2)
    lum = ndi.gaussian_filter(lum, 0.7)
    return _rank_equalise(lum, mask), fov.is_disc, mask & crop_coverage(img.shape, fov, SKETCH_SIDE)


def _dog_transfer(side: int, s1: float, s2: float) -> np.ndarray:
    """Fourier transfer function of a difference of Gaussians (sigmas in pixels) on the rfft2 grid."""
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    f2 = fx**2 + fy**2
    return (np.exp(-2 * np.pi**2 * s1**2 * f2) - np.exp(-2 * np.pi**2 * s2**2 * f2)).astype(np.float32)


_DOG = _dog_transfer(SKETCH_SIDE, 1.0, 4.0)


def _band(eq: np.ndarray) -> np.ndarray:
    """The band-pass (difference of Gaussians, 1 and 4 px) of an equalised canonical image: the vessel tree and
    lesions, not the illumination. Isotropic, so warping the band-passed image is band-passing the warped one."""
    return sfft.irfft2(sfft.rfft2(eq) * _DOG, s=eq.shape)


def _tapered_spectra(maps: np.ndarray, is_disc: bool) -> np.ndarray:
    """Spectra of ``(n, S, S)`` maps tapered to the FOV interior, each zero-mean and unit-norm.

    The band-pass comes before the taper, so the FOV rim and the vignetting ring that every fundus photo shares
    do not count as matching structure.
    """
    tapered = maps * (_TAPER if is_disc else _FULL_TAPER)
    # the energy left once the mean is removed, in pixel space (Parseval: the spectrum's without its DC term)
    total = tapered.sum(axis=(1, 2), dtype=np.float64)
    energy = np.square(tapered).sum(axis=(1, 2), dtype=np.float64) - total**2 / (SKETCH_SIDE * SKETCH_SIDE)
    spec = sfft.rfft2(tapered)
    spec[:, 0, 0] = 0.0
    spec *= (1.0 / np.maximum(np.sqrt(np.maximum(energy, 0.0)), 1e-9)).astype(spec.real.dtype)[:, None, None]
    return spec


LESION_MEDIAN = 11
"""Window (sketch pixels, 11 % of the FOV diameter) of the local median that bright lesions are clipped to."""
LESION_CLIP = 0.2
"""How far above that median (in rank units, the equalised image spans [-1, 1]) a pixel may stay."""
LESION_LINE = 7
"""Length (sketch pixels) of the line segments whose closings fill dark blobs: longer than a haemorrhage is wide,
shorter than any vessel segment is long."""


def _segments(length: int, orientations: int = 12) -> tuple[np.ndarray, ...]:
    """Digital line segments of ``length`` pixels through the kernel centre, one pixel per step along the major
    axis, in ``orientations`` directions, as uint8 kernels.

    A one-pixel oblique vessel whose staircase is out of phase with every segment loses up to half its depth in
    the closing. Segments at three sub-pixel phases keep it, but they also keep fine texture, and on phantom seed 7
    they caught fewer second visits (97 % against 100 %): different patients' maps became more alike.
    """
    c, out = length // 2, []
    for k in range(orientations):
        theta = np.pi * k / orientations
        steep = abs(np.sin(theta)) > abs(np.cos(theta))
        slope = np.cos(theta) / np.sin(theta) if steep else np.tan(theta)
        kernel = np.zeros((length, length), np.uint8)
        for u in range(-c, c + 1):
            v = int(np.floor(u * slope + 0.5))
            kernel[(c + u, c + v) if steep else (c + v, c + u)] = 1
        out.append(kernel)
    return tuple(out)


_SEGMENTS = _segments(LESION_LINE)


def suppress_lesions(eq: np.ndarray) -> np.ndarray:
    """Flatten lesions in an equalised canonical image and keep its vessels, before :func:`vesselness`.

    A second visit differs from the first by its lesions more than by anything else (haemorrhages, exudates and
    cotton-wool spots come and go), and Frangi answers a blob's rim as if it were a vessel. Two steps, both
    monotone, so they mean the same on any brightness scale:

    * bright lesions (exudates, cotton-wool spots, drusen) are clipped to ``LESION_CLIP`` above the median of
      their ``LESION_MEDIAN`` window; vessels lie below the median and are unchanged;
    * dark blobs (microaneurysms, dot and blot haemorrhages) are filled by the infimum of grey closings with
      ``LESION_LINE``-pixel segments in 12 orientations: a vessel is longer than the segment along its own
      direction and survives that closing, a blob shorter than it in every direction is filled by all of them.

    Chosen on phantom seed 7 only; ``bench/bench_vessels.py --only revisits`` measures it on other seeds and on the
    second renderer.
    """
    eq = np.asarray(eq, dtype=np.float32)
    levels = np.round((np.clip(eq, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)  # cv2's median needs 8 bits
    median = cv2.medianBlur(levels, LESION_MEDIAN).astype(np.float32) / 127.5 - 1.0
    clipped = np.minimum(eq, median + LESION_CLIP)
    closed = [cv2.morphologyEx(clipped, cv2.MORPH_CLOSE, k, borderType=cv2.BORDER_REFLECT) for k in _SEGMENTS]
    return np.min(closed, axis=0)


VESSEL_EDGE = 3
"""Pixels of the vessel map dropped along the edge of the image data (the field-of-view rim, a frame that cuts the
field, padding): 1.5x the largest Frangi scale (2 px), about how far a step edge's Hessian response reaches.
Frangi answers the dark-to-black step at the rim as if it were a vessel; the taper hides it at the template's own
scale, but a query shrunk to match a magnified template (another visit, a wider field angle) brings that ring, or
the straight edge of a cut field, inside the taper. On the second renderer (field of view 0.94-1.08 image widths,
seed 61, 256 px), revisits whose eye was 10-16 % larger than in the indexed visit matched the true template at
0.49-0.61 with scales found near 0.97; without the edge responses at 0.62-0.76, scales found near 0.88. Fresh
seeds (phantom 263, second renderer 271; ``bench/bench_vessels.py --only revisits``): revisits caught 905 -> 927 of
960 (second renderer 89.2 -> 95.0 % at 256 px, 88.3 -> 92.1 % at 128 px); phantom 13, second renderer 97: 897 ->
927 (92.5 -> 97.5 % and 85.0 -> 92.1 %); no new patient flagged before or after in either."""


def vesselness(eq: np.ndarray, data: np.ndarray | None = None) -> np.ndarray:
    """Multi-scale Frangi response to dark ridges (vessels) of an equalised canonical image, in [0, ~1], with
    lesions suppressed first (:func:`suppress_lesions`); with ``data`` (the pixels that hold image data), zero
    within :data:`VESSEL_EDGE` pixels of its edge."""
    v = frangi_dark(suppress_lesions(eq), (1.0, 1.5, 2.0))  # = skimage.filters.frangi(..., black_ridges=True)
    if data is not None:
        v = v * ndi.binary_erosion(data, iterations=VESSEL_EDGE, border_value=0)
    return np.sqrt(v / (np.percentile(v, 99.5) + 1e-12)).astype(np.float32)


def _vessel_map(eq: np.ndarray, is_disc: bool, data: np.ndarray) -> np.ndarray:
    """:func:`vesselness` of an equalised canonical crop on the pixels that hold image data (``data``) only: where
    the field of view runs past the frame, the black beyond it is neither ranked nor answered as an edge."""
    # ranked again on those pixels: eq is in the luminance's order, so these are its ranks there; where the data
    # covers every ranked pixel (a field of view inside the frame) that is eq itself, and the sort is skipped
    ranked = eq if np.array_equal(data, _ranked_mask(is_disc)) else _rank_equalise(eq, data)
    return vesselness(ranked, data)


_BASES = {"band": lambda eq, is_disc, data: _band(eq), "vessel": _vessel_map}
"""What each kind of sketch tapers and correlates, from :func:`_equalised`'s canonical crop, whether it has a
field-of-view disc, and its pixels of image data: its band-pass, or its vessel map."""
VESSEL_VERSION = f"vessel-v4:{SKETCH_SIDE}:edge{VESSEL_EDGE}"
SUBPIXEL = frozenset({"vessel"})
"""Kinds of sketch whose match score is the correlation peak's height between the searched shifts
(:func:`peak_heights`), not at the nearest one. A vessel is 2-4 sketch pixels wide, so half a pixel of misalignment
costs another visit's match much of its peak, where an unrelated tree's broad, low peak loses little. Chosen on
second-renderer seed 61 and phantom seed 41 (120 patients, every candidate refined, the check's calibrated rules):
revisits caught 87.5 -> 89.6 % (second renderer, 128 px), 97.1 -> 97.1 % (256 px), 97.1 -> 97.5 % (phantom, 128
px), none of 400 new patients flagged before or after in any. Fresh seeds (phantom 283, second renderer 293;
``bench/bench_vessels.py --only revisits``, same run): 922 -> 926 of 960 revisits caught, no new patient flagged
before or after. The memorization check's band sketches keep the nearest shift (its thresholds and planted-copy
results were set on them)."""
ALIGN_VERSION = f"align-v4:{WARP_VERSION}"
"""Changes whenever alignment scores would (v2: queries are band-passed before they are warped, warps by
OpenCV; v3: SciPy's FFTs, views correlated in batches, scores within 3e-6 of v2; v4: the correlation window by
matrix products instead of a full inverse FFT, within 1e-6); the checks' match versions include it, so
calibrations of another version are recomputed."""


def make_sketch(img: np.ndarray, kind: str = "band") -> np.ndarray:
    """The stored representation of a training image, ``(SKETCH_SIDE, SKETCH_SIDE)`` float16: the band-pass
    sketch of the memorization check (``kind="band"``) or the vessel template of the biometric check."""
    eq, is_disc, data = _equalised(img)
    spec = _tapered_spectra(_BASES[kind](eq, is_disc, data)[None], is_disc)[0]
    return sfft.irfft2(spec, s=(SKETCH_SIDE, SKETCH_SIDE)).astype(np.float16)


BATCH = 16
"""Views correlated per inverse FFT: one call per view pays the per-call overhead 16 times over; 45 views at once
(1.7 MB of spectra) ran 3x slower per view than 15, out of this machine's cache."""


def sketch_spectra(sketches: np.ndarray) -> np.ndarray:
    """Conjugated half-spectra of training sketches ``(m, S, S)``, as :meth:`QuerySketch.score_many` takes them."""
    return np.conj(sfft.rfft2(np.asarray(sketches, dtype=np.float32)))


@lru_cache(maxsize=8)
def _window_dft(m: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse real 2-D DFT of a half-spectrum ``(S, S//2+1)``, evaluated at shifts ``-m..m`` only: the matrix
    of the inverse DFT along the columns ``(2m+1, S)`` and that of the Hermitian inverse along the rows
    ``(S//2+1, 2m+1)`` (bins other than 0 and S/2 stand for their conjugate twins too), both scaled by ``1/S``."""
    s, k = SKETCH_SIDE, SKETCH_SIDE // 2 + 1
    d = np.arange(-m, m + 1)
    rows = np.exp(2j * np.pi * np.outer(d, np.arange(s)) / s) / s
    twins = np.full(k, 2.0)
    twins[0] = 1.0
    if s % 2 == 0:
        twins[-1] = 1.0
    cols = twins[:, None] * np.exp(2j * np.pi * np.outer(np.arange(k), d) / s) / s
    return rows.astype(np.complex64), cols.astype(np.complex64)


def peak_heights(window: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Heights of the correlation peaks at ``flat`` (argmax indices into each row of ``window``, ``(n, views, w,
    w)``) between the shifts searched: a parabola through each peak and its two neighbours, along rows and along
    columns (the usual sub-pixel estimate of a correlation peak), adds what its vertex rises above the peak. A peak
    on the window's border, or without a maximum's curvature, keeps its own height."""
    n, views, w, _ = window.shape
    v, iy, ix = np.unravel_index(flat, (views, w, w))
    rows = np.arange(n)
    peak = window[rows, v, iy, ix].astype(np.float64)
    height = peak.copy()
    for along_x in (True, False):
        at = ix if along_x else iy
        inner = (at > 0) & (at < w - 1)
        lo, hi = np.clip(at - 1, 0, w - 1), np.clip(at + 1, 0, w - 1)
        a = window[rows, v, iy, lo] if along_x else window[rows, v, lo, ix]
        c = window[rows, v, iy, hi] if along_x else window[rows, v, hi, ix]
        curve = a - 2 * peak + c
        ok = inner & (curve < 0)
        height += np.where(ok, -((a - c) ** 2) / (8 * np.where(ok, curve, -1.0)), 0.0)
    return height


def shift_window(products: np.ndarray, m: int) -> np.ndarray:
    """Circular cross-correlations ``(n, 2m+1, 2m+1)`` at shifts ``-m..m`` (rows dy, columns dx) from the
    products of half-spectra ``(n, S, S//2+1)``: ``irfft2`` restricted to those shifts, as two matrix products
    (at the default 8-pixel shift the window is 17 x 17 of 96 x 96 correlations: 2.2x faster than the full inverse
    FFT, 1.8x at 16 pixels; within 3e-7 of it relative to the peak)."""
    rows, cols = _window_dft(m)
    return np.matmul(np.matmul(rows, products), cols).real


def _cache_keys(keys: Sequence[tuple[int, float, float]]) -> list[tuple[int, float, float]]:
    """Views ``(orientation, angle, scale)`` as :class:`QuerySketch` caches their spectra: angle and scale rounded,
    so that a view reached by two sums of offsets is computed once."""
    return [(o, round(a, 3), round(sc, 3)) for o, a, sc in keys]


class QuerySketch:
    """A candidate image prepared for alignment against many training sketches (views built lazily)."""

    def __init__(self, img: np.ndarray, grid: AlignmentGrid | None = None, *, kind: str = "band",
                 disc_grid: AlignmentGrid | None = None, device: str | None = None):
        """``grid``: the refinement searched; by default ``disc_grid`` (default :class:`AlignmentGrid`) for an
        image with a field-of-view disc, :data:`WIDE` for one without. ``device``: a torch device the views'
        warps, spectra and correlation windows are computed on (:mod:`._align_torch`; resolved by its
        ``resolve_device``), ``None`` for this module's CPU path."""
        eq, self.is_disc, data = _equalised(img)
        # filtered once, then warped per view (both filters are close to rotation-invariant)
        self.base = _BASES[kind](eq, self.is_disc, data)
        self.subpixel = kind in SUBPIXEL
        self.grid = grid or ((disc_grid or AlignmentGrid()) if self.is_disc else WIDE)
        self.device = device
        self._spectra: dict[tuple[int, float, float], Any] = {}

    def _spectrum_rows(self, keys: list[tuple[int, float, float]]) -> tuple[np.ndarray, np.ndarray]:
        """Spectra of the distinct views among ``keys`` ``(orientation, angle, scale)``, stacked, and the row of
        each key; the views not yet computed are warped and transformed in batches of :data:`BATCH`."""
        keys = _cache_keys(keys)
        distinct = list(dict.fromkeys(keys))
        missing = [k for k in distinct if k not in self._spectra]
        for i in range(0, len(missing), BATCH):
            warped = []
            for orientation, angle, scale in missing[i : i + BATCH]:
                base = orient_contiguous(self.base, orientation)
                warped.append(base if (angle == 0 and scale == 1) else rotate_scale(base, angle, scale))
            self._spectra.update(zip(missing[i : i + BATCH], _tapered_spectra(np.stack(warped), self.is_disc)))
        row = {k: r for r, k in enumerate(distinct)}
        return (np.stack([self._spectra[k] for k in distinct]),
                np.fromiter((row[k] for k in keys), dtype=np.intp, count=len(keys)))

    def template(self) -> np.ndarray:
        """The query as :func:`make_sketch` would store it (unwarped), float32 (always from the CPU path: it is
        what the vessel search describes)."""
        if self.device is not None:  # the device path's cache holds device tensors
            return sfft.irfft2(_tapered_spectra(self.base[None], self.is_disc)[0],
                               s=(SKETCH_SIDE, SKETCH_SIDE)).astype(np.float32)
        return sfft.irfft2(self._spectrum_rows([(0, 0.0, 1.0)])[0][0], s=(SKETCH_SIDE, SKETCH_SIDE)).astype(np.float32)

    def score(self, sketch: np.ndarray, *, orientation: int = 0, angle: float = 0.0,
              grid: AlignmentGrid | None = None) -> tuple[float, dict[str, float]]:
        """Best NCC against a training ``sketch`` around the view (``orientation``, ``angle``) and the transform."""
        return self.score_many(sketch_spectra(np.asarray(sketch)[None]), [(0, orientation, angle)], grid=grid)[0]

    def _windows(self, keys: list[tuple[int, float, float]], tspec: np.ndarray, which: np.ndarray,
                 m: int) -> np.ndarray:
        """Correlation windows ``(len(keys), 2m+1, 2m+1)`` of the views ``keys`` with the training spectra
        ``tspec[which]``, on this module's CPU path or on the query's torch device."""
        if self.device is None:
            views, row = self._spectrum_rows(keys)
            return np.concatenate([shift_window(views[row[i : i + BATCH]] * tspec[which[i : i + BATCH]], m)
                                   for i in range(0, len(keys), BATCH)])
        import torch

        from ._align_torch import view_spectra, windows

        keys = _cache_keys(keys)
        missing = [k for k in dict.fromkeys(keys) if k not in self._spectra]
        if missing:
            self._spectra.update(zip(missing, view_spectra(self.base, self.is_disc, missing, self.device)))
        return windows(torch.stack([self._spectra[k] for k in keys]), tspec, which, m)

    def score_many(self, tspec: np.ndarray, pairs: Sequence[tuple[int, int, float]], *,
                   grid: AlignmentGrid | None = None) -> list[tuple[float, dict[str, float]]]:
        """:meth:`score` for each ``(sketch index, orientation, angle)`` of ``pairs`` against training sketches
        given by their :func:`sketch_spectra` ``tspec`` (computed once, however many passes score them), batched."""
        if not pairs:
            return []
        g = grid or self.grid
        offsets = [(da, s) for da in g.angles for s in g.scales]
        keys = [(o, a + da, s) for _, o, a in pairs for da, s in offsets]
        which = np.repeat(np.fromiter((j for j, _, _ in pairs), dtype=np.intp, count=len(pairs)), len(offsets))
        m = g.max_shift
        window = self._windows(keys, tspec, which, m).reshape(len(pairs), len(offsets), 2 * m + 1, 2 * m + 1)
        per_pair = window.reshape(len(pairs), -1)
        flat = np.argmax(per_pair, axis=1)
        heights = peak_heights(window, flat) if self.subpixel else per_pair[np.arange(len(pairs)), flat]
        out = []
        for p, f in enumerate(flat):
            v, iy, ix = np.unravel_index(int(f), (len(offsets), 2 * m + 1, 2 * m + 1))
            kf, ka, ks = keys[p * len(offsets) + v]
            out.append((float(heights[p]), {"orientation": float(kf), "angle": float(ka), "scale": float(ks),
                                            "dx": float(ix - m), "dy": float(iy - m)}))
        return out
