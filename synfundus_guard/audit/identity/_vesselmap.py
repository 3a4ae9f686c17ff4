"""Vessel maps of fundus photographs in canonical field-of-view coordinates.

The photograph is resampled so that its field of view (FOV) is a disc of ``side`` pixels, which removes image
size, crops, padding and shifts or zooms of the whole frame. Vessels are the thin dark structures of the green
channel: the channel is divided by its smoothed illumination (flat-fielding against vignetting and uneven
exposure), denoised, and a black top-hat keeps what is darker than its surroundings and narrower than the
structuring element. The supremum of openings by line segments then keeps elongated structures and removes
blobs shorter than the segments: microaneurysms, haemorrhages, drusen, noise (Zana and Klein's approach).
What is left above the background noise is the vessel response.

A map is computed at a given ``smooth`` level: a strong level (several pixels) deliberately keeps only the main
vessels, so that a sharp photograph can be compared with a blurred photograph of the same eye on equal terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from ...data.fov import canonical_crop, detect_fov, disc_mask, resize_image


@dataclass(frozen=True)
class MapLevel:
    """One level of vessel maps; pixel sizes refer to the canonical image of ``side`` pixels."""

    smooth: float = 1.0
    """Gaussian denoising before the top-hat (pixels)."""
    tophat: int = 9
    """Square structuring element of the black top-hat: structures narrower than this are kept."""
    reduce: int = 1
    """Work on the canonical image reduced by this factor (sizes above are scaled with it). Faster, but
    measured worse: at half resolution the short line openings keep background texture (EER 0 -> 3 %)."""


@dataclass(frozen=True)
class MapOptions:
    """How vessel maps are computed (part of a template's identity: change it, rebuild the templates)."""

    side: int = 256
    levels: tuple[MapLevel, ...] = (MapLevel(1.0, 9), MapLevel(3.0, 11))
    line: int = 15
    """Length of the line openings (pixels): blobs shorter than this are removed."""
    noise_k: float = 2.0
    """Responses below the FOV's median plus this many robust standard deviations are background."""
    blur: float = 1.5
    """Gaussian blur of the response before it is reduced to the template grid (pixels)."""
    saturate: float = 0.2
    """Responses are capped at this quantile of the non-zero responses (1 = no cap)."""
    grid: int = 96
    """Side of the stored map."""
    rim: float = 0.9
    """Radius (in FOV radii) beyond which nothing is used: the rim is dark and distorted."""


@lru_cache(maxsize=8)
def _line_footprints(length: int, orientations: int = 12) -> tuple[np.ndarray, ...]:
    """Line segments of ``length`` pixels at evenly spaced orientations, as boolean footprints."""
    out = []
    c = length // 2
    t = np.linspace(-c, c, 2 * length)
    for th in np.linspace(0, np.pi, orientations, endpoint=False):
        fp = np.zeros((length, length), dtype=bool)
        fp[np.rint(c + t * np.sin(th)).astype(int), np.rint(c + t * np.cos(th)).astype(int)] = True
        out.append(fp)
    return tuple(out)


@lru_cache(maxsize=8)
def grid_disc(grid: int, rim: float) -> np.ndarray:
    """Boolean disc of radius ``rim`` (FOV radii) on the ``grid`` x ``grid`` template grid."""
    c = (grid - 1) / 2
    yy, xx = np.mgrid[:grid, :grid]
    disc = np.hypot(yy - c, xx - c) <= rim * grid / 2
    disc.flags.writeable = False
    return disc


def _flat_field(green: np.ndarray, inside: np.ndarray, sigma: float) -> np.ndarray:
    """``green`` divided by its illumination, estimated by a Gaussian blur normalised inside the FOV."""
    weight = ndi.gaussian_filter(inside.astype(np.float32), sigma)
    light = ndi.gaussian_filter(green * inside, sigma) / np.maximum(weight, 1e-3)
    return np.where(inside, green / np.maximum(light, 1e-3), 1.0).astype(np.float32)


def _odd(x: float) -> int:
    return max(3, int(round(x)) | 1)


def _response(flat: np.ndarray, inside: np.ndarray, level: MapLevel, opts: MapOptions) -> np.ndarray:
    """Vessel response of the flat-fielded green channel at one level (in canonical pixels)."""
    r = level.reduce
    if r > 1:
        n = flat.shape[0] // r
        flat = resize_image(flat[..., None], n, n)[..., 0]
        inside = resize_image(inside[..., None].astype(np.float32), n, n)[..., 0] > 0.99
    smooth = ndi.gaussian_filter(flat, level.smooth / r) if level.smooth > 0 else flat
    top = ndi.black_tophat(smooth, size=_odd(level.tophat / r)) * inside
    lines = np.max([ndi.grey_opening(top, footprint=f) for f in _line_footprints(_odd(opts.line / r))], axis=0)
    vals = lines[inside]
    med = float(np.median(vals))
    mad = 1.4826 * float(np.median(np.abs(vals - med)))
    return np.maximum(lines - (med + opts.noise_k * mad), 0.0)


def vessel_maps(image: np.ndarray, options: MapOptions = MapOptions()) -> np.ndarray:
    """Vessel maps of a float RGB photograph (any size): (levels, grid, grid) float32, each scaled to max 1.

    A map is all zeros when there is nothing to analyse (a black image).
    """
    side = options.side
    fov = detect_fov(image)
    canon = canonical_crop(np.asarray(image, np.float32), fov, side)
    green = canon[..., 1] if canon.shape[2] >= 2 else canon[..., 0]
    inside = disc_mask(side, shrink=options.rim) & (green > 0.01)
    out = np.zeros((len(options.levels), options.grid, options.grid), np.float32)
    if inside.sum() < side:
        return out
    flat = _flat_field(green, inside, sigma=side / 24)
    disc = grid_disc(options.grid, options.rim)
    for k, level in enumerate(options.levels):
        resp = _response(flat, inside, level, options)
        on = resp[resp > 0]
        if on.size and options.saturate < 1:
            # Thick trunks near the disc look alike in every eye; the branching pattern is what is individual,
            # so every vessel counts about the same once it is clearly there.
            resp = np.minimum(resp, float(np.quantile(on, options.saturate)))
        resp = ndi.gaussian_filter(resp, options.blur / level.reduce)
        small = resize_image(resp[..., None], options.grid, options.grid)[..., 0] * disc
        peak = float(small.max())
        out[k] = small / peak if peak > 0 else small
    return out
