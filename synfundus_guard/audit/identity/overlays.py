"""Plant identity leaks into clean images: burned-in text overlays and pasted faces.

Benchmarks and tests use these to measure the text and face filters. Everything is drawn from a
``numpy.random.Generator`` so a benchmark is reproducible, and every draw returns its parameters so results
can be broken down by font, size, position and polarity.
"""

from __future__ import annotations

import glob
import string
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...data.images import to_uint8

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
FOV_EDGES = ("fov-top", "fov-bottom", "fov-left", "fov-right")
"""Centred on an edge of the image, 4 % (top, bottom) or 2 % (sides) in: over the rim of a fundus field of view."""
POSITIONS = (*CORNERS, "centre", *FOV_EDGES)
LIGHT = ((255, 255, 255), (255, 255, 0), (0, 255, 0), (0, 255, 255), (230, 230, 230))
GREY = ((128, 128, 128), (96, 96, 96), (160, 160, 160), (110, 110, 110))
DARK = ((0, 0, 0), (0, 0, 128), (20, 20, 20), (60, 0, 0))
TONES = {"light": LIGHT, "grey": GREY, "dark": DARK}
"""Palettes by tone; grey is drawn like light text (no label box), low contrast on black and on the fundus."""
FONT_GLOBS = ("/usr/share/fonts/**/*.ttf", "/usr/share/fonts/**/*.otf", "/usr/local/share/fonts/**/*.ttf")


@lru_cache(maxsize=1)
def font_names() -> tuple[str, ...]:
    """Fonts available here: PIL's built-in bitmap and scalable fonts, then every TrueType file installed."""
    files = sorted({p for g in FONT_GLOBS for p in glob.glob(g, recursive=True)})
    return ("pil-bitmap", "pil-default", *files)


@lru_cache(maxsize=512)
def load_font(name: str, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A font by :func:`font_names` entry. The PIL bitmap font has one size (about 11 px)."""
    if name == "pil-bitmap":
        return ImageFont.load_default_imagefont()
    if name == "pil-default":
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(name, size=size)


def random_identifier(rng: np.random.Generator) -> str:
    """A string shaped like what cameras burn in: a name, an id, a date, a time, an eye and field tag."""
    up = string.ascii_uppercase
    kind = int(rng.integers(6))
    if kind == 0:
        return "".join(rng.choice(list(up), int(rng.integers(3, 9)))) + "^" + "".join(
            rng.choice(list(up), int(rng.integers(3, 7))))
    if kind == 1:
        return f"ID {int(rng.integers(10**5, 10**8))}"
    if kind == 2:
        return f"{int(rng.integers(1990, 2030))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
    if kind == 3:
        return f"{int(rng.integers(1, 29)):02d}/{int(rng.integers(1, 13)):02d}/{int(rng.integers(1990, 2030))} " \
               f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
    if kind == 4:
        name = "".join(rng.choice(list(string.ascii_lowercase), int(rng.integers(4, 9)))).capitalize()
        return f"{name}, {rng.choice(list(up))}. {'OD' if rng.random() < 0.5 else 'OS'}"
    return f"Acc {''.join(rng.choice(list(string.digits + up), int(rng.integers(5, 10))))}"


@dataclass(frozen=True)
class TextOverlay:
    """Parameters of one planted overlay; ``box`` is (x0, y0, x1, y1) in pixels of the returned image."""

    text: str
    font: str
    size: int
    position: str
    light: bool
    box: tuple[int, int, int, int]
    tone: str = ""
    """``light``, ``grey`` or ``dark`` (empty when drawn with an explicit colour)."""


def draw_text(img: np.ndarray, text: str, *, font: str, size: int, position: str, light: bool,
              colour: tuple[int, int, int], margin: int = 4) -> tuple[np.ndarray, TextOverlay]:
    """Burn ``text`` into a copy of ``img`` (float RGB) and return it with the overlay's parameters.

    Dark text in a corner (where a fundus photograph is black) is drawn on a light label box, as cameras do;
    elsewhere (the centre, the rim of the field of view: :data:`FOV_EDGES`) it is drawn straight on the image.
    """
    pil = Image.fromarray(to_uint8(img))
    draw = ImageDraw.Draw(pil)
    f = load_font(font, size)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=f)
    tw, th = x1 - x0, y1 - y0
    h, w = img.shape[:2]
    left = {"top-left": margin, "bottom-left": margin, "top-right": w - tw - margin, "bottom-right": w - tw - margin}
    top = {"top-left": margin, "top-right": margin, "bottom-left": h - th - margin, "bottom-right": h - th - margin}
    left.update({"fov-left": int(0.02 * w), "fov-right": w - tw - int(0.02 * w)})
    top.update({"fov-top": int(0.04 * h), "fov-bottom": h - th - int(0.04 * h)})
    px, py = left.get(position, (w - tw) // 2), top.get(position, (h - th) // 2)
    px, py = max(0, px), max(0, py)
    if not light and position in CORNERS:
        draw.rectangle((px - 3, py - 3, px + tw + 3, py + th + 3), fill=(235, 235, 225))
    draw.text((px - x0, py - y0), text, font=f, fill=colour)
    out = np.asarray(pil, dtype=np.float32) / 255.0
    return out, TextOverlay(text, font, size, position, light, (px, py, px + tw, py + th))


def random_text(img: np.ndarray, rng: np.random.Generator, *, sizes: tuple[int, int] = (8, 24),
                position: str | None = None, light: bool | None = None) -> tuple[np.ndarray, TextOverlay]:
    """Burn a random identifier (random font, size, position, tone and colour) into a copy of ``img``: light,
    grey or dark (0.4/0.2/0.4) unless ``light`` fixes it, in a corner, the centre or on the rim of the field of
    view (:data:`POSITIONS`)."""
    names = font_names()
    font = names[int(rng.integers(len(names)))]
    size = int(rng.integers(sizes[0], sizes[1] + 1))
    position = position or POSITIONS[int(rng.integers(len(POSITIONS)))]
    if light is None:
        tone = ("light", "grey", "dark")[int(rng.choice(3, p=(0.4, 0.2, 0.4)))]
    else:
        tone = "light" if light else "dark"
    palette = TONES[tone]
    colour = palette[int(rng.integers(len(palette)))]
    out, overlay = draw_text(img, random_identifier(rng), font=font, size=size, position=position,
                             light=tone != "dark", colour=colour)
    return out, replace(overlay, tone=tone)


def paste_face(img: np.ndarray, face: np.ndarray, *, side: int, top: int, left: int) -> np.ndarray:
    """Paste a grey face crop (H, W) in [0, 1], resized to ``side`` pixels, into a copy of ``img``."""
    pil = Image.fromarray(to_uint8(np.repeat(face[..., None], 3, axis=2))).resize((side, side), Image.BILINEAR)
    out = img.copy()
    patch = np.asarray(pil, dtype=np.float32) / 255.0
    h, w = out.shape[:2]
    bottom, right = min(h, top + side), min(w, left + side)
    out[top:bottom, left:right] = patch[: bottom - top, : right - left]
    return out


def random_face(img: np.ndarray, face: np.ndarray, rng: np.random.Generator, *,
                fraction: tuple[float, float] = (0.15, 0.5)) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Paste ``face`` at a random place, its side a random ``fraction`` of the image's shorter side.

    Returns the image and (top, left, side).
    """
    h, w = img.shape[:2]
    side = int(round(rng.uniform(*fraction) * min(h, w)))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return paste_face(img, face, side=side, top=top, left=left), (top, left, side)
