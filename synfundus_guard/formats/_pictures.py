"""Pictures for the HTML report: thumbnails as inline PNG data URIs, boxes, aligned pairs, differences.

The public page shows release images only. An image that failed may show a patient (it may copy a training
photo, or carry a face or a burned-in identifier), and it is not released, so the public page shows it
pixelated (:data:`PIXELATE` blocks across); the private page shows it in full beside the training image.
Images are decoded with the project's bounded decoder, so a hostile file is an error message, not a crash.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..audit.pixel_match import SKETCH_SIDE, vesselness
from ..data.fov import canonical_crop, detect_fov, orient, rotate_scale
from ..data.images import load_image, to_uint8
from ..errors import GuardError
from .interface import ReportView

THUMB = 160
"""Longest side of a thumbnail, pixels."""
PIXELATE = 12
"""Blocks across a pixelated (public, failed) thumbnail: shape and colour, not a recognisable face or text."""
ALIGN_SIDE = 192
"""Side of the aligned pairs on the private page (the checks measure ``dx``/``dy`` at ``SKETCH_SIDE``)."""


def data_uri(img: np.ndarray, *, lossless: bool = False) -> str:
    """A float RGB image as an inline data URI: JPEG (quality 88: photographs, a tenth of PNG's size) or PNG."""
    buf = io.BytesIO()
    if lossless:
        Image.fromarray(to_uint8(img)).save(buf, format="PNG", optimize=True)
    else:
        Image.fromarray(to_uint8(img)).save(buf, format="JPEG", quality=88)
    mime = "png" if lossless else "jpeg"
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(img: np.ndarray, *, pixelate: bool = False, side: int = THUMB) -> np.ndarray:
    """``img`` scaled to at most ``side`` pixels (never up), optionally pixelated to :data:`PIXELATE` blocks."""
    pil = Image.fromarray(to_uint8(img))
    pil.thumbnail((side, side), Image.Resampling.LANCZOS)
    if pixelate:
        w, h = pil.size
        small = pil.resize((PIXELATE, max(1, round(PIXELATE * h / w))), Image.Resampling.BOX)
        pil = small.resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(pil, dtype=np.float32) / 255.0


def read(path: Path) -> np.ndarray | None:
    """Decode an image file (bounded decoder), or None when it is missing or cannot be read: a page shows that
    the image is not at hand rather than failing."""
    try:
        return load_image(path)
    except (GuardError, OSError):
        return None


def view_image(view: ReportView, name: str) -> np.ndarray | None:
    """Release (or quarantine) image ``name`` of a report view, or None when it is not at hand."""
    path = view.image_file(name)
    return read(path) if path is not None else None


def draw_boxes(img: np.ndarray, boxes: Sequence[Sequence[float]], colour: tuple[int, int, int]) -> np.ndarray:
    """``img`` with rectangles ``(x0, y0, x1, y1)`` (image pixels) outlined."""
    pil = Image.fromarray(to_uint8(img))
    draw = ImageDraw.Draw(pil)
    width = max(1, round(max(pil.size) / 128))
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
    return np.asarray(pil, dtype=np.float32) / 255.0


def canonical(img: np.ndarray, side: int = ALIGN_SIDE) -> np.ndarray:
    """The field of view resampled to a ``side`` square, as the checks see it."""
    return canonical_crop(img, detect_fov(img), side)


def aligned(query: np.ndarray, transform: dict[str, float], side: int = ALIGN_SIDE) -> np.ndarray:
    """The canonical query warped by a check's transform onto its matched training image's frame.

    The checks correlate ``orient -> rotate_scale -> shift`` of the query against the training sketch at
    :data:`SKETCH_SIDE`; the same warp at ``side`` pixels, shifts scaled, puts the two in register.
    """
    out = orient(canonical(query, side), int(transform.get("orientation", 0)))
    angle, scale = float(transform.get("angle", 0.0)), float(transform.get("scale", 1.0))
    if angle or scale != 1.0:
        out = rotate_scale(out, angle, scale)
    k = side / SKETCH_SIDE
    shift = (-round(float(transform.get("dy", 0.0)) * k), -round(float(transform.get("dx", 0.0)) * k))
    return np.roll(out, shift, axis=(0, 1))


def difference(a: np.ndarray, b: np.ndarray, *, gain: float = 4.0) -> np.ndarray:
    """Absolute luminance difference of two registered images times ``gain`` (a fixed scale: a copy stays dark)."""
    grey = np.clip(np.abs(a.mean(axis=2) - b.mean(axis=2)) * gain, 0, 1)
    return np.repeat(grey[..., None], 3, axis=2)


def vessel_overlay(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Vessel maps of two registered images in one picture: ``a`` magenta, ``b`` green, shared vessels white."""
    def vmap(img: np.ndarray) -> np.ndarray:
        v = vesselness(img.mean(axis=2).astype(np.float32))
        top = float(np.percentile(v, 99)) or 1.0
        return np.clip(v / top, 0, 1)

    va, vb = vmap(a), vmap(b)
    return np.stack([va, vb, va], axis=2)
