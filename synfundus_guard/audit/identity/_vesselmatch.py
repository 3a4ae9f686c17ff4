"""Alignment and correlation of two vessel maps under a similarity transform (rotation, mirror, translation).

Scale needs no search: both maps are in field-of-view units, which the camera fixes. Rotation is found first,
globally: resampled on rings around the FOV centre, a rotation becomes a circular shift, and one FFT per ring
correlates every rotation at once (the query's rings are also taken around a few shifted centres, so that a
retina that moved inside the field of view still lines up). The best rotations are then refined on the
Cartesian maps, where an FFT correlates every translation at once. The score is the normalised
cross-correlation at the best alignment: 1 for identical maps, near 0 for unrelated ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

RINGS, ANGLES = 32, 120


@dataclass(frozen=True)
class AlignOptions:
    """Search ranges of the alignment."""

    max_rotation_deg: float = 30.0
    """Fundus photographs are taken upright: head tilt and rotation augmentation stay within this."""
    mirror: bool = True
    """Also try the left-right mirror of the query (generators trained with flips produce mirrored eyes)."""
    max_shift: float = 0.15
    """Largest translation searched, in FOV radii."""
    centre_offset: float = 0.04
    """Offset (FOV radii) of the extra ring centres used to find the rotation of a shifted retina."""
    refine_deg: tuple[float, ...] = (-3.0, 0.0, 3.0)
    """Rotations tried around each ring-correlation peak."""
    candidates: int = 2
    """Ring-correlation peaks (over both mirror states) refined on the Cartesian maps."""


@dataclass(frozen=True)
class Alignment:
    """Best alignment found: score and the transform that maps the query onto the reference."""

    score: float
    mirrored: bool = False
    rotation_deg: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    """(dx, dy) in FOV radii."""


def _unit(m: np.ndarray, disc: np.ndarray) -> np.ndarray:
    m = np.where(disc, m - m[disc].mean(), 0.0)
    return (m / (np.linalg.norm(m) + 1e-9)).astype(np.float32)


def _rings(m: np.ndarray, dx: float = 0.0, dy: float = 0.0, rim: float = 0.88) -> np.ndarray:
    g = m.shape[0]
    c = (g - 1) / 2
    r = np.linspace(0.15, rim, RINGS)[:, None]
    th = np.linspace(0, 2 * np.pi, ANGLES, endpoint=False)[None]
    p = ndi.map_coordinates(m, [c + (dy + r * np.sin(th)) * g / 2, c + (dx + r * np.cos(th)) * g / 2], order=1)
    p -= p.mean(axis=1, keepdims=True)
    return p / (np.linalg.norm(p) + 1e-9)


class PreparedQuery:
    """A query map with everything the search needs precomputed (reused across reference maps)."""

    def __init__(self, m: np.ndarray, disc: np.ndarray, opts: AlignOptions):
        self.opts = opts
        self.states = []
        offs = [(0.0, 0.0)] + [(opts.centre_offset * np.cos(a), opts.centre_offset * np.sin(a))
                               for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
        for mirrored in (False, True) if opts.mirror else (False,):
            mm = m[:, ::-1] if mirrored else m
            rings = np.stack([np.fft.fft(_rings(mm, dx, dy), axis=1) for dx, dy in offs])
            self.states.append((mirrored, _unit(mm, disc), rings))


def _rotation_peaks(ring_ffts: np.ndarray, ref_ring_fft: np.ndarray, opts: AlignOptions) -> list[tuple[float, float]]:
    """Distinct rotation peaks of the ring correlation within the allowed range: (correlation, degrees)."""
    corr = np.fft.ifft(ring_ffts * ref_ring_fft[None], axis=2).real.sum(axis=1).max(axis=0)
    step = 360.0 / ANGLES
    deg = np.arange(ANGLES) * step
    deg = np.where(deg > 180, deg - 360, deg)
    corr = np.where(np.abs(deg) <= opts.max_rotation_deg + step, corr, -np.inf)
    peaks: list[tuple[float, float]] = []
    for k in np.argsort(-corr, kind="stable"):
        if not np.isfinite(corr[k]) or len(peaks) == opts.candidates:
            break
        if all(abs(deg[k] - p) > 2 * step for _, p in peaks):
            peaks.append((float(corr[k]), float(deg[k])))
    return peaks


def align(query: PreparedQuery, ref: np.ndarray, disc: np.ndarray) -> Alignment:
    """Best alignment of a prepared query map onto reference map ``ref`` (both on the same grid)."""
    opts = query.opts
    g = ref.shape[0]
    ref_unit = _unit(ref, disc)
    ref_ring_fft = np.conj(np.fft.fft(_rings(ref), axis=1))
    pad = int(2 ** np.ceil(np.log2(g + g // 3)))
    ref_fft = np.conj(np.fft.rfft2(ref_unit, s=(pad, pad)))
    reach = int(np.ceil(opts.max_shift * g / 2))
    window = np.r_[0:reach + 1, pad - reach:pad]
    best = Alignment(-1.0)
    pooled = [(c, deg, mirrored, q_unit) for mirrored, q_unit, ring_ffts in query.states
              for c, deg in _rotation_peaks(ring_ffts, ref_ring_fft, opts)]
    pooled.sort(key=lambda p: -p[0])
    for _, peak, mirrored, q_unit in pooled[: opts.candidates]:
        for delta in opts.refine_deg:
            angle = peak + delta
            if abs(angle) > opts.max_rotation_deg:
                continue
            rot = ndi.rotate(q_unit, angle, reshape=False, order=1)
            corr = np.fft.irfft2(np.fft.rfft2(rot, s=(pad, pad)) * ref_fft, s=(pad, pad))[np.ix_(window, window)]
            k = int(np.argmax(corr))
            if corr.flat[k] > best.score:
                dy, dx = window[k // len(window)], window[k % len(window)]
                dy, dx = (dy - pad if dy > pad // 2 else dy), (dx - pad if dx > pad // 2 else dx)
                best = Alignment(float(corr.flat[k]), mirrored, angle, (-2 * dx / g, -2 * dy / g))
    return best
