"""Field-of-view (FOV) detection and geometric canonicalisation.

A fundus camera records the retina as a bright disc on a black background. The disc is fixed by the camera, so
its centre and radius normalise away image size, crops, padding and small shifts/scales of the whole frame.
Images without such a disc (chest X-rays, skin, histology, tightly cropped fundus photos) get the whole frame as
their FOV: canonicalisation then simply pads to a square and resizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from .memo import per_image

_WORK_SIDE = 256  # FOV detection runs on a copy at most this large
_QUANTIZATION_PX = 0.5
"""Median distance of a pixelated circle's boundary pixels from the fitted circle that is still a disc."""


@dataclass(frozen=True)
class Fov:
    """The field of view of an image, in pixel coordinates of the original image."""

    cx: float
    cy: float
    radius: float
    """Radius of the disc; for non-disc images, half the longer side."""
    is_disc: bool
    """True when a circular FOV on a dark background was found."""


def _fit_circle(ys: np.ndarray, xs: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (Kasa) circle fit; returns (cx, cy, r)."""
    a = np.column_stack([xs, ys, np.ones_like(xs)])
    b = xs**2 + ys**2
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = sol[0] / 2, sol[1] / 2
    r = float(np.sqrt(max(sol[2] + cx**2 + cy**2, 0.0)))
    return float(cx), float(cy), r


@per_image(maxsize=256)
def detect_fov(img: np.ndarray) -> Fov:
    """Find the bright circular field of view of ``img`` (float RGB in [0, 1]).

    Each check asks for it, so results are cached by the image's content (:mod:`.memo`).

    Returns a disc FOV when the bright region is a disc (possibly cut by the frame) on a dark background,
    otherwise the whole frame.
    """
    h, w = img.shape[:2]
    whole = Fov(cx=(w - 1) / 2, cy=(h - 1) / 2, radius=max(h, w) / 2, is_disc=False)
    scale = min(1.0, _WORK_SIDE / max(h, w))
    lum = _luminance(img)
    if scale < 1.0:
        lum = resize_image(lum[..., None], max(8, round(h * scale)), max(8, round(w * scale)))[..., 0]
    sh, sw = lum.shape
    lo, hi = np.percentile(lum, [1, 99])
    if hi - lo < 0.05 or lo > 0.1:
        return whole  # no dark background
    mask = _largest_region(_open(lum > lo + 0.12 * (hi - lo), 2))
    if mask is None:
        return whole
    mask = _fill_holes(mask)
    frac = mask.mean()
    if frac > 0.97 or frac < 0.15:
        return whole
    edge = mask & ~_erode(mask)
    ys, xs = np.nonzero(edge)
    inner = (ys > 1) & (ys < sh - 2) & (xs > 1) & (xs < sw - 2)  # boundary not made by the frame
    if inner.sum() < 20:
        return whole
    cx, cy, r = _fit_circle(ys[inner].astype(float), xs[inner].astype(float))
    # The region must actually be a disc: boundary points lie on the circle, and the disc covers the mask.
    resid = np.abs(np.hypot(ys[inner] - cy, xs[inner] - cx) - r)
    yy, xx = np.ogrid[:sh, :sw]
    disc = np.hypot(yy - cy, xx - cx) <= r
    iou = (disc & mask).sum() / max((disc | mask).sum(), 1)
    # Boundary pixels of even a perfect disc sit up to half a pixel off the circle (median ~0.3 px): at low
    # resolution (a 32 px generated image) the tolerance is that quantization, not 2 % of the radius.
    if np.median(resid) > max(0.02 * r, _QUANTIZATION_PX) or iou < 0.9 or r < 0.2 * min(sh, sw):
        return whole
    return Fov(cx=cx / scale, cy=cy / scale, radius=r / scale, is_disc=True)


# Binary morphology on OpenCV, equal to scipy.ndimage's defaults (the 4-connected cross, nothing outside the frame)
# that first defined the detector, at a fraction of the time (detect_fov: 8 -> ~2 ms at 256 px).
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _luminance(img: np.ndarray) -> np.ndarray:
    """The mean of the channels (``img.mean(axis=2)``, summed in the same order, without its strided reduction)."""
    if img.shape[2] == 3 and img.dtype == np.float32:
        return (img[..., 0] + img[..., 1] + img[..., 2]) / np.float32(3)
    return img.mean(axis=2)


def _erode(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, iterations=...)``: pixels beyond the frame count as background."""
    out = cv2.erode(mask.astype(np.uint8), _CROSS, iterations=iterations, borderType=cv2.BORDER_CONSTANT,
                    borderValue=0)
    return out.astype(bool)


def _open(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``scipy.ndimage.binary_opening(mask, iterations=...)``."""
    eroded = cv2.erode(mask.astype(np.uint8), _CROSS, iterations=iterations, borderType=cv2.BORDER_CONSTANT,
                       borderValue=0)
    return cv2.dilate(eroded, _CROSS, iterations=iterations, borderType=cv2.BORDER_CONSTANT,
                      borderValue=0).astype(bool)


def _largest_region(mask: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected region of ``mask`` (ties: the one whose first pixel comes first in raster order,
    as ``scipy.ndimage.label`` numbers them), or None when the mask is empty."""
    # labels and a bincount: OpenCV's statistics pass cost more than the labelling on these large regions
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n <= 1:
        return None
    area = np.bincount(labels.ravel(), minlength=n)[1:]
    best = np.flatnonzero(area == area.max()) + 1
    if len(best) > 1:
        flat = labels.ravel()
        best = [min(best, key=lambda b: int(np.argmax(flat == b)))]
    return labels == best[0]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes``: background not 4-connected to the frame becomes foreground."""
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)  # a background ring joins the frame's pieces
    cv2.floodFill(outside, None, (0, 0), 2, flags=4)
    return (outside[1:-1, 1:-1] != 2)


def resize_image(img: np.ndarray, nh: int, nw: int) -> np.ndarray:
    """Area-averaging (downscale) or bilinear (upscale) resize of a float image, channel by channel."""
    if (nh, nw) == img.shape[:2]:
        return img
    filt = Image.BOX if nh < img.shape[0] else Image.BILINEAR
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32), mode="F").resize((nw, nh), filt))
        for c in range(img.shape[2])
    ]
    return np.stack(chans, axis=2)


def _crop_window(shape: tuple[int, ...], fov: Fov, side: int,
                 margin: float) -> tuple[int, int, tuple[slice, slice], tuple[slice, slice]]:
    """Where :func:`canonical_crop` copies from and to: the resized image's size ``(nh, nw)``, the part of it that
    the crop holds, and where that part lies in the ``side`` x ``side`` crop (both empty when the FOV misses it)."""
    h, w = shape[:2]
    half = fov.radius * margin
    s = side / (2 * half)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    oy, ox = round((fov.cy - half) * s), round((fov.cx - half) * s)
    sy0, sx0 = max(0, oy), max(0, ox)
    sy1, sx1 = max(sy0, min(nh, oy + side)), max(sx0, min(nw, ox + side))
    return (nh, nw, (slice(sy0, sy1), slice(sx0, sx1)),
            (slice(sy0 - oy, sy1 - oy), slice(sx0 - ox, sx1 - ox)))


def canonical_crop(img: np.ndarray, fov: Fov, side: int, *, margin: float = 1.0) -> np.ndarray:
    """Resample the FOV of ``img`` into a ``side`` x ``side`` square centred on the FOV.

    For a disc, the square spans ``margin`` x the disc diameter and pixels outside the image are black; for a
    whole-frame FOV, the image is padded to a square (black) and resized.
    """
    # Resize the whole image with anti-aliasing so that the crop has ``side`` pixels across, then crop.
    nh, nw, src, dst = _crop_window(img.shape, fov, side, margin)
    out = np.zeros((side, side, img.shape[2]), dtype=np.float32)
    out[dst] = resize_image(img, nh, nw)[src]
    return out


def crop_coverage(shape: tuple[int, ...], fov: Fov, side: int, *, margin: float = 1.0) -> np.ndarray:
    """Boolean ``(side, side)`` mask of the pixels of :func:`canonical_crop` that hold image data, not the black
    fill beyond the image's edges (a field of view wider than the frame, a padded whole-frame image)."""
    out = np.zeros((side, side), dtype=bool)
    out[_crop_window(shape, fov, side, margin)[3]] = True
    return out


def disc_mask(side: int, *, shrink: float = 0.97) -> np.ndarray:
    """Boolean mask of the inscribed disc of a ``side`` x ``side`` canonical image (slightly shrunk)."""
    c = (side - 1) / 2
    yy, xx = np.mgrid[:side, :side]
    return np.hypot(yy - c, xx - c) <= shrink * side / 2


WARP_VERSION = "warp-cv2-bilinear"
"""Names :func:`rotate_scale`'s interpolation: scores of warped views depend on it (OpenCV since v2; scipy's
``affine_transform`` before, 8x slower at 96 px)."""


def rotate_scale(img: np.ndarray, angle: float, scale: float = 1.0) -> np.ndarray:
    """Warp a square canonical image: output = input rotated by ``-angle`` degrees and zoomed by ``1/scale``
    about the centre (so warping a copy that was rotated by +a with ``angle=a`` undoes it). 2-D or 3-D.

    Bilinear, black outside the input (OpenCV's ``warpAffine``, which places samples to 1/32 pixel).
    """
    side = img.shape[0]
    if img.ndim == 3 and img.shape[2] > 4:  # OpenCV warps at most 4 channels at once
        return np.stack([rotate_scale(img[..., k], angle, scale) for k in range(img.shape[2])], axis=2)
    m = _warp_matrix(side, float(angle), float(scale))
    out = cv2.warpAffine(np.ascontiguousarray(img), m, (img.shape[1], side),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.reshape(img.shape)


@lru_cache(maxsize=4096)
def _warp_matrix(side: int, angle: float, scale: float) -> np.ndarray:
    """:func:`rotate_scale`'s matrix for OpenCV (read-only; the alignment warps the same few hundred views of
    every image)."""
    c = (side - 1) / 2
    th = np.deg2rad(angle)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) / scale  # (row, col) -> (row, col)
    offset = np.array([c, c]) - rot @ np.array([c, c])
    # OpenCV's matrix maps (x, y) = (col, row) of the output to the input
    m = np.array([[rot[1, 1], rot[1, 0], offset[1]], [rot[0, 1], rot[0, 0], offset[0]]])
    m.setflags(write=False)
    return m


ORIENTATIONS = 8
"""The dihedral group of the square: identity, quarter turns, mirrors (a copy may be flipped or turned)."""


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Orientation ``0..7``: mirror left-right when ``orientation >= 4``, then ``orientation % 4`` quarter turns."""
    x = img[:, ::-1] if orientation >= 4 else img
    return np.rot90(x, orientation % 4) if orientation % 4 else x


_QUARTER_TURNS = (None, cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_CLOCKWISE)


def orient_contiguous(img: np.ndarray, orientation: int) -> np.ndarray:
    """:func:`orient` of a 2-D float32 image as a C-contiguous array (the image itself for orientation 0), by
    OpenCV's flip and rotate: the same pixels, in ~3 instead of ~8 us at 96 px, for what is warped next."""
    if orientation == 0:
        return img
    x = cv2.flip(np.ascontiguousarray(img), 1) if orientation >= 4 else np.ascontiguousarray(img)
    return cv2.rotate(x, _QUARTER_TURNS[orientation % 4]) if orientation % 4 else x
