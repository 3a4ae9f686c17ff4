"""A second, deliberately different fundus renderer, used only to *validate* the checks (never to fit them).

The project's phantom (:mod:`synfundus_guard.data.phantom`) tuned every threshold the checks carry; a threshold
that only holds on the renderer it was tuned on means nothing. This renderer shares no code or model with it:

* vessels: a recursive binary tree from the disc (Murray's-law calibres, a turning heading with smooth sinusoidal
  wiggle) drawn as anti-aliased PIL polylines, alpha-blended in colour, arteries with a bright central reflex;
* background: pink (1/f) noise from an FFT, one of several pigment palettes, a yellow-white optic disc with a
  pale cup, a dark macula with a foveal reflex;
* camera: the field of view is a circle of 0.94-1.08 image widths (wide ones are clipped flat at the edges),
  a notch marker on its rim, cos^4 vignetting, a colour cast, a lifted black level, JPEG compression.

A patient (one eye) is a pure function of ``(seed, index)``; a visit adds pose (rotation, shift, scale),
illumination, focus, noise, a few haemorrhages and exudates. ``render(seed, index, visit, size)`` returns a
float32 (size, size, 3) image in [0, 1].
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PALETTES = np.array([[0.86, 0.36, 0.14], [0.66, 0.27, 0.10], [0.93, 0.55, 0.30], [0.78, 0.40, 0.24],
                     [0.55, 0.22, 0.12]], dtype=np.float32)
"""Fundus pigment colours (light orange, dark brown, blond, pink-orange, heavily pigmented)."""


@dataclass(frozen=True)
class Eye:
    seed: int
    index: int
    right: bool
    disc: tuple[float, float]
    disc_r: float
    cup: float
    palette: np.ndarray
    tree_seed: int
    texture_seed: int


def eye(seed: int, index: int) -> Eye:
    rng = np.random.default_rng([0xA17F, seed, index])
    right = bool(rng.random() < 0.5)
    dx = rng.uniform(0.30, 0.45) * (1 if right else -1)
    return Eye(seed, index, right, (dx, rng.normal(0, 0.05)), rng.uniform(0.075, 0.11), rng.uniform(0.25, 0.6),
               PALETTES[rng.integers(len(PALETTES))] * rng.uniform(0.9, 1.1, 3).astype(np.float32),
               int(rng.integers(2**31)), int(rng.integers(2**31)))


def _branches(e: Eye) -> list[tuple[np.ndarray, float, bool]]:
    """Polylines in eye coordinates (units of FOV radius): (points (n, 2), width, artery)."""
    rng = np.random.default_rng(e.tree_seed)
    out: list[tuple[np.ndarray, float, bool]] = []
    side = 1 if e.right else -1

    def grow(p: np.ndarray, heading: float, width: float, length: float, artery: bool, depth: int) -> None:
        n = max(4, int(length / 0.02))
        turn = rng.normal(0, 0.6) / n
        phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.08)
        pts = [p]
        h = heading
        for i in range(n):
            h += turn + amp * math.sin(phase + 6 * i / n) / n * 6
            pts.append(pts[-1] + length / n * np.array([math.cos(h), math.sin(h)]))
        pts_a = np.array(pts)
        out.append((pts_a, width, artery))
        if depth >= 5 or width < 0.004:
            return
        k = int(rng.integers(n // 3, n))
        split = rng.uniform(0.3, 0.7)
        w1, w2 = width * (split ** (1 / 3)), width * ((1 - split) ** (1 / 3))
        hb = math.atan2(*(pts_a[k] - pts_a[k - 1])[::-1])
        grow(pts_a[k], hb + rng.uniform(0.3, 0.9), w1, length * rng.uniform(0.5, 0.8), artery, depth + 1)
        grow(pts_a[k], hb - rng.uniform(0.3, 0.9), w2, length * rng.uniform(0.5, 0.8), artery, depth + 1)

    d = np.array(e.disc)
    for artery in (True, False):
        w0 = 0.016 if artery else 0.021
        for base in (-0.5 * np.pi, 0.5 * np.pi):  # superior and inferior arcades, arching temporally
            h = base + side * rng.uniform(0.2, 0.5) * (-1 if base < 0 else 1) + (0 if artery else rng.normal(0, 0.1))
            grow(d, h, w0, rng.uniform(0.6, 0.8), artery, 0)
        for _ in range(2):  # nasal branches
            grow(d, (0.0 if e.right else np.pi) + rng.normal(0, 0.6), w0 * 0.6, rng.uniform(0.3, 0.5), artery, 2)
    return out


def _pink_noise(rng: np.random.Generator, size: int, beta: float = 2.2) -> np.ndarray:
    f = np.fft.fftfreq(size)
    k = np.sqrt(f[:, None] ** 2 + f[None] ** 2)
    k[0, 0] = 1
    spec = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) / k ** (beta / 2)
    spec[0, 0] = 0
    n = np.real(np.fft.ifft2(spec))
    return ((n - n.mean()) / (n.std() + 1e-9)).astype(np.float32)


def render(seed: int, index: int, visit: int, size: int = 256) -> np.ndarray:
    """Photograph eye ``(seed, index)`` at ``visit``: float32 (size, size, 3) in [0, 1]."""
    e = eye(seed, index)
    v = np.random.default_rng([0xA17F, seed, index, 1 + visit])
    ss = 2
    big = size * ss
    rot, scale = v.normal(0, 6), v.uniform(0.95, 1.05)
    shift = v.normal(0, 0.04, 2)
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))

    def to_px(p: np.ndarray) -> np.ndarray:
        q = scale * (p @ np.array([[c, s], [-s, c]])) + shift
        return (q * 0.5 + 0.5) * big

    # Background: palette x (1 + choroidal texture), brighter towards the centre.
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size * 2 - 1
    tex = _pink_noise(np.random.default_rng(e.texture_seed), size)
    img = e.palette[None, None] * (1 + 0.06 * tex[..., None]) * (1.05 - 0.25 * (xx ** 2 + yy ** 2))[..., None]
    # Macula: temporal of the disc, darker, with a small bright reflex.
    disc_px = to_px(np.array(e.disc)) / ss
    mac = to_px(np.array(e.disc) + np.array([(-1 if e.right else 1) * 2.5 * 2 * e.disc_r, 0.03])) / ss
    r2 = ((xx + 1) / 2 * size - mac[0]) ** 2 + ((yy + 1) / 2 * size - mac[1]) ** 2
    img *= (1 - 0.35 * np.exp(-r2 / (2 * (0.12 * size) ** 2)))[..., None]
    img += 0.15 * np.exp(-r2 / (2 * (0.008 * size) ** 2))[..., None]
    # Optic disc and cup.
    d2 = ((xx + 1) / 2 * size - disc_px[0]) ** 2 + ((yy + 1) / 2 * size - disc_px[1]) ** 2
    rd = e.disc_r * scale * size / 2
    disc = 1 / (1 + np.exp((np.sqrt(d2) - rd) / (0.08 * rd)))
    cup = 1 / (1 + np.exp((np.sqrt(d2) - e.cup * rd) / (0.1 * rd)))
    img = img * (1 - disc[..., None]) + disc[..., None] * np.array([0.98, 0.78, 0.45], np.float32)
    img = img * (1 - 0.5 * cup[..., None]) + 0.5 * cup[..., None] * np.array([1.0, 0.95, 0.82], np.float32)
    # Vessels, drawn at 2x and reduced.
    layers = {}
    for artery in (False, True):
        canvas = Image.new("L", (big, big), 0)
        reflex = Image.new("L", (big, big), 0)
        dr, rr = ImageDraw.Draw(canvas), ImageDraw.Draw(reflex)
        for pts, w, a in _branches(e):
            if a != artery:
                continue
            xy = [tuple(p) for p in to_px(pts)]
            wpx = max(1, int(round(w * scale * big / 2)))
            dr.line(xy, fill=255, width=wpx, joint="curve")
            if artery and wpx >= 4:
                rr.line(xy, fill=160, width=max(1, wpx // 4))
        canvas = canvas.filter(ImageFilter.GaussianBlur(0.8)).resize((size, size), Image.BILINEAR)
        reflex = reflex.filter(ImageFilter.GaussianBlur(0.8)).resize((size, size), Image.BILINEAR)
        layers[artery] = (np.asarray(canvas, np.float32) / 255, np.asarray(reflex, np.float32) / 255)
    for artery, colour, opacity in ((False, (0.42, 0.07, 0.05), 0.85), (True, (0.62, 0.14, 0.07), 0.7)):
        a = opacity * layers[artery][0][..., None]
        img = img * (1 - a) + a * np.array(colour, np.float32)
        img += 0.25 * layers[artery][1][..., None]
    # Lesions of this visit: haemorrhages (dark red) and exudates (yellow).
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(v.poisson(2))):
        x, y, r = v.uniform(0.2, 0.8) * size, v.uniform(0.2, 0.8) * size, v.uniform(1, 4) * size / 256
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(110, 20, 15))
    for _ in range(int(v.poisson(2))):
        x, y, r = v.uniform(0.2, 0.8) * size, v.uniform(0.2, 0.8) * size, v.uniform(0.7, 2.5) * size / 256
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(235, 215, 120))
    blur = v.uniform(0, 1.2) * size / 256
    if blur > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
    img = np.asarray(pil, np.float32) / 255
    # Camera: illumination, cast, vignetting, noise, FOV stop with a notch, black level, JPEG.
    img = img * v.uniform(0.75, 1.15) * np.array([1, *v.uniform(0.9, 1.1, 2)], np.float32)
    img *= (1 + v.normal(0, 0.08) * xx + v.normal(0, 0.08) * yy)[..., None]
    fov = v.uniform(0.94, 1.08)
    rad = np.sqrt(xx ** 2 + yy ** 2) / fov
    img *= (np.cos(np.clip(rad, 0, 1) * 0.7) ** 4)[..., None]
    img += v.normal(0, 0.012, img.shape).astype(np.float32)
    mask = (rad <= 1).astype(np.float32)
    notch = (np.abs(xx) < 0.03) & (yy < -0.9 * fov) & (yy > -1.02 * fov)
    mask[notch] = 0
    mask = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7)),
                      np.float32) / 255
    img = np.clip(img, 0, 1) * mask[..., None] + 0.02 * (1 - mask[..., None])
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(buf, "JPEG",
                                                                            quality=int(v.integers(80, 96)))
    return np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255
