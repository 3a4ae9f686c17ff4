"""Realistic near-copy transforms, used to plant copies of training images in benchmarks and tests.

A memorising generator (or someone laundering a training image) produces a *transformed* copy: shifted,
rotated, rescaled, re-exposed, noisy, re-compressed, mirrored. :func:`random_copy` draws one such copy with
parameters up to the bounds in :class:`CopyBounds` and returns them, so a benchmark can report recall per
transform family.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi


@dataclass(frozen=True)
class CopyBounds:
    """Upper bounds of each transform (all drawn uniformly up to the bound)."""

    shift: float = 0.04
    """Translation, as a fraction of the image side."""
    rotation: float = 8.0
    """Degrees."""
    scale: float = 0.05
    """Relative zoom in or out."""
    photometric: float = 0.15
    """Brightness, contrast and gamma change, relative."""
    noise: float = 0.03
    """Standard deviation of additive Gaussian noise (image in [0, 1])."""
    min_jpeg_quality: int = 60


def affine(img: np.ndarray, *, dx: float, dy: float, angle: float, scale: float) -> np.ndarray:
    """Rotate by ``angle`` degrees and zoom by ``scale`` about the centre, then shift by (dx, dy) pixels."""
    h, w = img.shape[:2]
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    th = np.deg2rad(angle)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) / scale
    offset = c - rot @ (c + np.array([dy, dx]))
    return np.stack(
        [ndi.affine_transform(img[..., k], rot, offset=offset, order=1, mode="constant") for k in range(img.shape[2])],
        axis=2,
    )


def photometric(img: np.ndarray, *, brightness: float, contrast: float, gamma: float) -> np.ndarray:
    """``((img ** gamma) - m) * contrast + m + brightness``, clipped to [0, 1]."""
    x = np.clip(img, 0, 1) ** gamma
    m = x.mean()
    return np.clip((x - m) * contrast + m + brightness, 0, 1)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through JPEG at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0


FAMILIES = ("geometric", "photometric", "noise", "jpeg", "flip", "combined")


def random_copy(img: np.ndarray, rng: np.random.Generator, *, family: str = "combined",
                bounds: CopyBounds = CopyBounds()) -> tuple[np.ndarray, dict[str, float]]:
    """A transformed copy of ``img`` from one transform ``family`` (or all combined); returns (copy, params)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    h, w = img.shape[:2]
    p: dict[str, float] = {}
    out = img.astype(np.float32)
    every = family == "combined"
    if every or family == "flip":
        if family == "flip" or rng.random() < 0.5:
            out = out[:, ::-1]
            p["flip"] = 1.0
    if every or family == "geometric":
        p.update(dx=rng.uniform(-1, 1) * bounds.shift * w, dy=rng.uniform(-1, 1) * bounds.shift * h,
                 angle=rng.uniform(-1, 1) * bounds.rotation, scale=1 + rng.uniform(-1, 1) * bounds.scale)
        out = affine(out, dx=p["dx"], dy=p["dy"], angle=p["angle"], scale=p["scale"])
    if every or family == "photometric":
        b = bounds.photometric
        p.update(brightness=rng.uniform(-b, b) * 0.5, contrast=1 + rng.uniform(-b, b), gamma=1 + rng.uniform(-b, b))
        out = photometric(out, brightness=p["brightness"], contrast=p["contrast"], gamma=p["gamma"])
    if every or family == "noise":
        p["noise"] = rng.uniform(0.3, 1.0) * bounds.noise
        out = np.clip(out + rng.normal(0, p["noise"], out.shape), 0, 1)
    if every or family == "jpeg":
        p["jpeg"] = float(rng.integers(bounds.min_jpeg_quality, 96))
        out = jpeg(out, int(p["jpeg"]))
    return out.astype(np.float32), p
