"""Procedural colour fundus phantom: synthetic eyes with stable identities, photographed at repeat visits.

The toolkit must run, and be benchmarked, without private data. Near-copy detection, vessel biometrics and
membership attacks need what real screening data has: several photographs of one eye that differ in pose,
illumination, focus, noise and lesions while the *identity* stays fixed. Here a patient (one eye) is a pure
function of ``(dataset seed, patient index)``: its branching vessel tree, optic disc position, size and cup,
pigmentation, choroidal tessellation and macula. A visit adds ``(visit index, seed)``: pose, illumination, blur,
noise, and the lesions of its diabetic retinopathy (DR) grade.

Identifiers: patient ``i`` of seed 0 is ``P{i:05d}`` (``P00012``); of any other seed ``s`` it is
``S{s}-P{i:05d}`` (``S7-P00012``). Image ids add the visit: ``P00012-V1``, ``S7-P00012-V1``. Two datasets of
different seeds hold different patients, so their ids must differ too: otherwise one could not serve as the
holdout of the other (audits refuse a holdout that shares patient ids with the training set). Seed 0 keeps the
plain form because the built-in default model was trained on ``--seed 0`` data and its training card, which
names those files and fingerprints them, must keep matching the regenerated dataset. File names inside a
dataset folder (``p00012_v1.png``) do not carry the seed: a folder holds one dataset.

Geometry: identity is rendered in *patient coordinates* (units of field-of-view radius, origin at the FOV
centre, x right, y down) and then warped by the visit's pose. The circular field of view belongs to the camera
and stays centred: the pose moves the retina inside a fixed circle, black outside.
"""

from __future__ import annotations

import csv
import heapq
import io
import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage, signal

from ..errors import InputError
from ..fsutil import staged_dir, write_durable
from ..progress import NULL_PROGRESS, Progress
from .images import encode_png

FOV_FRACTION = 0.92
"""Diameter of the circular field of view as a fraction of the image width."""
MIN_SIZE, MAX_SIZE = 64, 2048
"""Supported image sizes in pixels (square images)."""
MAX_PATIENTS, MAX_VISITS = 1_000_000, 100
"""Largest dataset :func:`generate_phantom` writes: a bound on the request, not on what a disk could hold."""
LABEL_COLUMNS = ("file_name", "image_id", "patient_id", "eye", "dr_grade", "amd", "glaucoma_suspect", "quality")
"""Columns of the ``labels.csv`` that :func:`generate_phantom` writes."""

_TAG = 0x5F0D_05  # keeps phantom random streams apart from other users of the same seed
_S_PATIENT, _S_TREE, _S_TEXTURE, _S_DRUSEN, _S_VISIT, _S_LESIONS = range(6)
_ART, _VEIN = 0, 1
# Per-channel absorption of blood columns (green is absorbed most); veins carry darker, deoxygenated blood.
_ABSORB = np.array([[0.14, 0.45, 0.36], [0.25, 0.62, 0.50]], dtype=np.float32)
_MACULA_DARK = np.array([0.17, 0.42, 0.52], dtype=np.float32)
_MAX_VESSEL_WIDTH = 0.022  # main vein calibre at the disc, in FOV radii (~140 um in a 45-degree photograph)
_MIN_VESSEL_WIDTH = 0.0028
_TEXTURE_RES = 160


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_TAG, *key]))


@dataclass(frozen=True)
class PhantomPatient:
    """One synthetic eye. Every field follows from ``(seed, index)``: build it with :meth:`from_seed`.

    Positions and sizes are in patient coordinates: units of FOV radius, origin at the FOV centre, y down.
    """

    seed: int
    """Dataset seed."""
    index: int
    """Patient index within the dataset."""
    eye: str
    """``"OD"`` (right eye, disc on the right of the image) or ``"OS"``."""
    disc_x: float
    disc_y: float
    disc_radius: float
    cup_to_disc: float
    """Vertical cup-to-disc ratio; above 0.6 marks a glaucoma suspect."""
    macula_x: float
    macula_y: float
    macula_depth: float
    """Strength of the macular darkening, 0.5 to 1."""
    fundus_rgb: tuple[float, float, float]
    """Background colour of the posterior pole (pigmentation)."""
    tessellation: float
    """Visibility of the choroidal vessel pattern, 0 (none) to ~0.4."""
    vessel_calibre: float
    """Scale of all vessel widths, around 1."""
    tortuosity: float
    """Scale of the vessels' random meander, around 1."""
    dr_base_grade: int
    """DR grade (0-4) at visit 0."""
    dr_progression: float
    """Grades gained per visit (0 = stable)."""
    dr_phase: float
    amd_severity: float
    """0 for no AMD; otherwise 0.2-1, scaling the number and size of drusen."""

    @property
    def patient_id(self) -> str:
        """Public id: ``P`` + 5-digit index for seed 0, prefixed with ``S{seed}-`` for any other seed.

        Unique across seeds (see the module docstring); seed 0's form is what the default model's card names.
        """
        plain = f"P{self.index:05d}"
        return plain if self.seed == 0 else f"S{self.seed}-{plain}"

    @property
    def glaucoma_suspect(self) -> bool:
        """True when the cup-to-disc ratio exceeds 0.6."""
        return self.cup_to_disc > 0.6

    @property
    def amd(self) -> bool:
        """True when the eye has drusen (age-related macular degeneration)."""
        return self.amd_severity > 0

    def dr_grade(self, visit: int) -> int:
        """DR grade at ``visit``: the base grade plus a deterministic, never-decreasing progression."""
        return min(4, self.dr_base_grade + math.floor(self.dr_progression * visit + self.dr_phase))

    @classmethod
    def from_seed(cls, seed: int, index: int) -> "PhantomPatient":
        """Draw patient ``index`` of the dataset with ``seed``. Raises :class:`InputError` for negative values."""
        seed, index = _nonneg_int("seed", seed), _nonneg_int("patient index", index)
        rng = _rng(seed, index, _S_PATIENT)
        eye = "OD" if rng.random() < 0.5 else "OS"
        side = 1.0 if eye == "OD" else -1.0  # the disc lies on the nasal side
        disc_x, disc_y = side * rng.uniform(0.25, 0.40), rng.uniform(-0.06, 0.06)
        disc_radius = rng.uniform(0.105, 0.145)
        fovea_dist = rng.uniform(0.58, 0.70)
        cdr = rng.uniform(0.62, 0.85) if rng.random() < 0.12 else float(np.clip(rng.normal(0.35, 0.1), 0.1, 0.58))
        pig = rng.beta(2.0, 2.0)
        rgb = np.clip([0.93 - 0.22 * pig, 0.36 - 0.15 * pig, 0.22 - 0.10 * pig] + rng.normal(0, 0.02, 3), 0.05, 1)
        base = int(rng.choice(5, p=[0.55, 0.15, 0.15, 0.10, 0.05]))
        if base == 0:
            rate = rng.uniform(0.1, 0.3) if rng.random() < 0.2 else 0.0
        else:
            rate = rng.uniform(0.0, 0.35)
        phase = rng.random()
        amd = rng.uniform(0.2, 1.0) if rng.random() < 0.15 else 0.0
        return cls(
            seed=seed, index=index, eye=eye,
            disc_x=float(disc_x), disc_y=float(disc_y), disc_radius=float(disc_radius), cup_to_disc=float(cdr),
            macula_x=float(disc_x - side * fovea_dist), macula_y=float(disc_y + rng.uniform(0.02, 0.08)),
            macula_depth=float(rng.uniform(0.5, 1.0)),
            fundus_rgb=tuple(float(c) for c in rgb),  # type: ignore[arg-type]
            tessellation=float(rng.uniform(0.02, 0.22) * (1 - 0.6 * pig)),
            vessel_calibre=float(rng.uniform(0.85, 1.15)), tortuosity=float(rng.uniform(0.6, 1.6)),
            dr_base_grade=base, dr_progression=float(rate), dr_phase=float(phase), amd_severity=float(amd),
        )


# --- vessel tree -------------------------------------------------------------------------------------------

_Segment = tuple[np.ndarray, np.ndarray, int]  # points (N, 2) in patient coords, widths (N,), kind


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, target: float, pull: float,
          length: float, tortuosity: float) -> np.ndarray:
    """A tortuous path: heading relaxes from ``heading`` to ``target`` plus a smooth random meander."""
    n = max(2, math.ceil(length / 0.012))
    ds = length / n
    s = np.arange(1, n + 1) * ds
    curvature = signal.lfilter([0.3], [1.0, -0.7], rng.standard_normal(n) * 9.0 * tortuosity)
    meander = signal.lfilter([1.0], [1.0, -(1.0 - 5.0 * ds)], curvature * ds)
    turn = (heading - target + math.pi) % (2 * math.pi) - math.pi  # the short way round, never a loop
    theta = target + turn * np.exp(-pull * s) + meander
    steps = np.stack([np.cos(theta), np.sin(theta)], axis=1) * ds
    return np.concatenate([start[None], start + np.cumsum(steps, axis=0)])


def _roots(p: PhantomPatient, rng: np.random.Generator) -> list[tuple]:
    """Artery and vein trunks of the four arcades, in the right-eye frame (temporal = -x)."""
    disc = np.array([abs(p.disc_x), p.disc_y])
    quadrants = (  # initial heading, asymptotic heading, pull, calibre
        (-math.pi / 2 - 0.1, -math.pi + 0.35, 2.8, 1.0),  # superotemporal arcade, curving round the macula
        (math.pi / 2 + 0.1, math.pi - 0.35, 2.8, 1.0),  # inferotemporal arcade
        (-math.pi / 2 + 0.6, -0.5, 2.5, 0.72),  # superonasal
        (math.pi / 2 - 0.6, 0.5, 2.5, 0.72),  # inferonasal
    )
    roots = []
    for h0, target, pull, calibre in quadrants:
        h0, target = h0 + rng.uniform(-0.2, 0.2), target + rng.uniform(-0.2, 0.2)
        pull *= rng.uniform(0.7, 1.3)
        for kind, ratio in ((_ART, 0.72), (_VEIN, 1.0)):
            start = disc + rng.uniform(-0.15, 0.15, 2) * p.disc_radius  # trunks converge in the cup
            width = _MAX_VESSEL_WIDTH * p.vessel_calibre * calibre * ratio * rng.uniform(0.9, 1.1)
            roots.append((start, h0 + rng.uniform(-0.15, 0.15), target, pull, width, kind))
    return roots


@lru_cache(maxsize=256)
def _vessel_tree(p: PhantomPatient) -> tuple[_Segment, ...]:
    """Grow the patient's vessel tree: widest vessels branch first until a per-patient segment budget is spent."""
    rng = _rng(p.seed, p.index, _S_TREE)
    budget = int(rng.integers(60, 141))
    macula = np.array([-abs(p.macula_x), p.macula_y])
    queue: list[tuple] = []
    for i, root in enumerate(_roots(p, rng)):
        heapq.heappush(queue, (-root[4], i, root))
    created, counter, segments = len(queue), len(queue), []
    while queue:
        _, _, (start, heading, target, pull, width, kind) = heapq.heappop(queue)
        child_w = width * 0.85 / (1 + 0.5**3) ** (1 / 3)
        branch = child_w >= _MIN_VESSEL_WIDTH and created + 2 <= budget
        # Terminal vessels run on to the edge of the field (or the fovea) while tapering.
        length = rng.uniform(0.15, 0.35) * (width / _MAX_VESSEL_WIDTH) ** 0.3 if branch else rng.uniform(0.5, 1.2)
        pts = _walk(rng, start, heading, target, pull, length, p.tortuosity)
        outside = (np.hypot(pts[:, 0], pts[:, 1]) > 1.04) | (np.hypot(*(pts - macula).T) < 0.07)
        cut = int(np.argmax(outside)) if outside.any() else len(pts)
        if cut < 2:
            continue
        frac = np.arange(cut) / (len(pts) - 1)
        widths = width * (1 - (0.15 if branch else 0.6) * frac)
        segments.append((pts[:cut], widths, kind))
        if not branch or cut < len(pts):
            continue
        # Asymmetric bifurcation obeying Murray's law (w^3 = w1^3 + w2^3); the wider child keeps the course.
        a = rng.uniform(0.3, 1.0)
        w1 = widths[-1] / (1 + a**3) ** (1 / 3)
        end = pts[-1]
        last = math.atan2(*(pts[-1] - pts[-2])[::-1])
        side = 1.0 if rng.random() < 0.5 else -1.0
        h1 = last + side * a * rng.uniform(0.05, 0.35)
        h2 = last - side * rng.uniform(0.5, 1.2)
        for w, h, tgt, pl in ((w1, h1, target, pull), (a * w1, h2, h2, 1.0)):
            counter += 1
            heapq.heappush(queue, (-w, counter, (end, h, tgt, pl, w, kind)))
        created += 2
    if p.eye == "OS":  # mirror the right-eye frame
        segments = [(pts * np.array([-1.0, 1.0]), w, k) for pts, w, k in segments]
    return tuple(segments)


def _supersampling(size: int) -> int:
    return int(np.clip(round(1024 / size), 2, 8))


def _rasterise(segments: tuple[_Segment, ...], size: int) -> np.ndarray:
    """Anti-aliased tubes: (3, H, W) coverage of arteries, veins and the vessels' central light reflex.

    Each tube is drawn into a supersampled mask in runs of constant integer width (the taper) and box-averaged
    down; tubes thinner than a supersampled pixel are drawn 1 px wide at proportionally lower intensity.
    """
    ss, radius = _supersampling(size), FOV_FRACTION * size / 2
    layers = [Image.new("L", (size * ss, size * ss)) for _ in range(3)]
    draws = [ImageDraw.Draw(layer) for layer in layers]
    for pts, widths, kind in segments:
        xy = (pts * radius + size / 2) * ss - 0.5
        w_ss = 0.5 * (widths[:-1] + widths[1:]) * radius * ss
        depth = np.clip(0.55 + 0.45 * widths[:-1] / (0.9 * _MAX_VESSEL_WIDTH), 0.0, 1.0)
        fill = (255 * depth * np.minimum(w_ss, 1.0)).astype(int) // 16 * 16 + 15
        iw = np.maximum(1, np.rint(w_ss)).astype(int)
        reflex = w_ss > 1.6 * ss
        key = iw * 1000 + fill
        breaks = np.flatnonzero(np.diff(key)) + 1
        for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), len(key)]):
            run = xy[a:b + 1].ravel().tolist()
            draws[kind].line(run, fill=int(fill[a]), width=int(iw[a]), joint="curve")
            if reflex[a]:
                draws[2].line(run, fill=200 if kind == _ART else 90, width=max(1, round(0.25 * iw[a])))
    out = np.stack([np.asarray(layer.reduce(ss), dtype=np.float32) for layer in layers]) / 255.0
    return ndimage.gaussian_filter(out, sigma=(0, 0.4, 0.4), truncate=3.0)


# --- identity layers in patient coordinates ----------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5 - size / 2) / (FOV_FRACTION * size / 2)
    x, y = np.meshgrid(c, c)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _resize(field: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(field.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))


def _noise_field(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Smooth unit-variance noise, defined on a fixed grid so the pattern does not depend on ``size``."""
    field = _resize(rng.standard_normal((cells, cells)), size)
    return field / (field.std() + 1e-6)


def _choroid(rng: np.random.Generator, size: int) -> np.ndarray:
    """Choroidal vessel stripes in [0, 1]: zero crossings of noise that varies fast around the centre and slowly
    outwards, so the stripes run radially as in a tessellated fundus. Drawn at a fixed resolution (the pattern is
    blurry anyway), then resized."""
    x, y = _grid(_TEXTURE_RES)
    polar = [np.hypot(x, y) / 1.6 * 6, (np.arctan2(y, x) + math.pi) / (2 * math.pi) * 48]
    noise = ndimage.map_coordinates(rng.standard_normal((7, 48)), polar, order=3, mode="grid-wrap")
    return _resize(np.exp(-np.square(noise / (0.6 * noise.std()))), size)


def _background(p: PhantomPatient, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fundus without vessels or lesions (pigmentation, tessellation, macula, disc and cup) and the cup's opacity."""
    x, y = _grid(size)
    rng = _rng(p.seed, p.index, _S_TEXTURE)
    r2 = x * x + y * y
    stripes = _choroid(rng, size)
    grain = _noise_field(rng, 150, size)
    shade = (1.06 - 0.12 * r2) * (1 + 0.025 * grain)
    shade *= 1 - p.tessellation * (1 - stripes) * _smoothstep(0.1, 0.8, np.sqrt(r2))
    img = shade[..., None] * np.asarray(p.fundus_rgb, dtype=np.float32)
    d2_mac = (x - p.macula_x) ** 2 + (y - p.macula_y) ** 2
    dark = p.macula_depth * (np.exp(-d2_mac / (2 * 0.11**2)) + 0.4 * np.exp(-d2_mac / (2 * 0.025**2)))
    img *= 1 - np.clip(dark, 0, 1)[..., None] * _MACULA_DARK
    dx, dy = (x - p.disc_x) / p.disc_radius, (y - p.disc_y) / (1.08 * p.disc_radius)
    d_disc = np.sqrt(dx * dx + dy * dy)
    img *= (1 + 0.15 * np.exp(-np.square(d_disc / 1.8)))[..., None]  # peripapillary glow
    lum = sum(p.fundus_rgb) / 1.5
    rim, cup = np.array([1.0, 0.68, 0.40]) * min(1.0, lum + 0.08), np.array([1.0, 0.88, 0.64]) * min(1.0, lum + 0.2)
    a_disc = _smoothstep(1.1, 0.8, d_disc)[..., None]
    img += a_disc * (rim.astype(np.float32) - img)
    side = 1.0 if p.eye == "OD" else -1.0  # the cup sits slightly temporal in the disc
    d_cup = np.sqrt((dx + side * 0.12) ** 2 + dy * dy) / p.cup_to_disc
    a_cup = _smoothstep(1.15, 0.6, d_cup)
    img += a_cup[..., None] * (cup.astype(np.float32) - img)
    return img, a_cup


def _identity(p: PhantomPatient, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background, vessel transmittance (H, W, 3) and vessel light reflex (H, W) of one patient."""
    background, cup = _background(p, size)
    art, vein, reflex = _rasterise(_vessel_tree(p), size) * (1 - 0.6 * cup)  # vessels dive into the cup
    transmit = (1 - art[..., None] * _ABSORB[0]) * (1 - vein[..., None] * _ABSORB[1])
    for arr in (background, transmit, reflex):
        arr.flags.writeable = False
    return background, transmit, reflex


# Visits of one patient share the identity layers; a few entries suffice for patient-major loops, and large
# sizes are not cached at all (one 2048 px entry holds ~120 MB).
_identity_cached = lru_cache(maxsize=4)(_identity)


# --- visits ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Visit:
    shift: tuple[float, float]  # fraction of the image width, (x, y)
    rotation: float  # degrees
    scale: float
    brightness: float
    gamma: float
    vignetting: float
    gradient: tuple[float, float]  # uneven illumination: gain slope along x and y per FOV radius
    white_balance: tuple[float, float, float]
    blur: float  # Gaussian sigma in pixels of a 256 px image
    noise: float  # standard deviation of additive noise
    quality: float
    dr_grade: int


def _visit_params(p: PhantomPatient, visit: int, seed: int) -> _Visit:
    rng = _rng(p.seed, p.index, _S_VISIT, visit, seed)
    r, a = 0.02 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    g, ga = rng.uniform(0, 0.2), rng.uniform(0, 2 * math.pi)
    brightness, gamma, vignetting = rng.uniform(0.72, 1.12), rng.uniform(0.85, 1.2), rng.uniform(0.1, 0.45)
    blur = rng.uniform(0.0, 0.4) if rng.random() < 0.75 else rng.uniform(0.6, 3.0)
    noise = rng.uniform(0.003, 0.015) if rng.random() < 0.8 else rng.uniform(0.02, 0.05)
    # Quality falls with blur, darkness and noise, the three things graders reject photographs for.
    darkness = np.clip((0.8 - brightness * (1 - 0.35 * vignetting) * 0.6 ** (gamma - 1)) / 0.35, 0, 1)
    quality = 1 - 0.5 * min(blur / 2.5, 1) - 0.35 * darkness - 0.3 * np.clip((noise - 0.01) / 0.04, 0, 1)
    return _Visit(
        shift=(r * math.cos(a), r * math.sin(a)), rotation=rng.uniform(-5, 5), scale=rng.uniform(0.97, 1.03),
        brightness=brightness, gamma=gamma, vignetting=vignetting, gradient=(g * math.cos(ga), g * math.sin(ga)),
        white_balance=tuple(rng.uniform(0.95, 1.05, 3)), blur=blur, noise=noise,  # type: ignore[arg-type]
        quality=round(float(np.clip(quality, 0, 1)), 3), dr_grade=p.dr_grade(visit),
    )


def _blob(img: np.ndarray, x: float, y: float, r: float, rgb: np.ndarray, opacity: float, soft: float,
          tint: bool) -> None:
    """Paint one round lesion in place; ``tint`` multiplies (dark lesions), otherwise blends towards ``rgb``."""
    size = img.shape[0]
    scale = FOV_FRACTION * size / 2
    px, py, rp = x * scale + size / 2, y * scale + size / 2, r * scale
    ext = rp * (1 + soft) + 1.5
    x0, x1 = max(0, int(px - ext)), min(size, int(px + ext) + 1)
    y0, y1 = max(0, int(py - ext)), min(size, int(py + ext) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    d = np.hypot(np.arange(x0, x1) + 0.5 - px, (np.arange(y0, y1) + 0.5 - py)[:, None])
    edge = max(soft * rp, 0.6)
    alpha = (opacity * min(1.0, (rp / 0.7) ** 2) * np.clip((rp - d) / edge + 0.5, 0, 1))[..., None]
    patch = img[y0:y1, x0:x1]
    if tint:
        patch *= 1 - alpha * (1 - rgb)
    else:
        patch += alpha * (rgb - patch)


def _pole_points(rng: np.random.Generator, p: PhantomPatient, n: int) -> np.ndarray:
    """``n`` points in the posterior pole, away from the optic disc."""
    centre = np.array([(p.disc_x + p.macula_x) / 2, (p.disc_y + p.macula_y) / 2])
    ang, rad = rng.uniform(0, 2 * math.pi, 4 * n), 0.85 * np.sqrt(rng.random(4 * n))
    pts = centre + np.stack([np.cos(ang), np.sin(ang)], 1) * rad[:, None]
    ok = (np.hypot(*pts.T) < 0.95) & (np.hypot(pts[:, 0] - p.disc_x, pts[:, 1] - p.disc_y) > 1.4 * p.disc_radius)
    return pts[ok][:n]


_DARK_RED, _YELLOW, _WHITE = np.array([0.62, 0.3, 0.35]), np.array([1.0, 0.92, 0.55]), np.array([0.97, 0.9, 0.8])
_DRUSEN = np.array([1.0, 0.82, 0.48])
_DR_COUNTS = {  # lesions per DR grade 0-4: (low, high) counts
    "microaneurysm": ((0, 0), (1, 6), (5, 15), (10, 25), (10, 25)),
    "haemorrhage": ((0, 0), (0, 0), (2, 8), (10, 25), (10, 25)),
    "exudate": ((0, 0), (0, 0), (0, 15), (5, 30), (5, 30)),
    "cotton_wool": ((0, 0), (0, 0), (0, 0), (1, 4), (1, 4)),
}


LESION_KINDS = ("microaneurysm", "haemorrhage", "exudate", "cotton_wool", "neovascularisation", "drusen")
"""Keys of the per-image lesion counts in :func:`render_visit` labels."""


def _paint_dr(img: np.ndarray, rng: np.random.Generator, p: PhantomPatient, grade: int, n: dict[str, int]) -> None:
    """Dot and blot haemorrhages, microaneurysms, hard exudates and cotton-wool spots of a DR grade."""
    lum = sum(p.fundus_rgb) / 1.5
    want = {k: int(rng.integers(lo, hi + 1)) for k, (lo, hi) in ((k, c[grade]) for k, c in _DR_COUNTS.items())}
    spots = _pole_points(rng, p, want["microaneurysm"])
    for x, y in spots:
        _blob(img, x, y, rng.uniform(0.004, 0.007), _DARK_RED, 0.9, 0.3, True)
    n["microaneurysm"] = len(spots)
    spots = _pole_points(rng, p, want["haemorrhage"])
    for x, y in spots:
        r = rng.uniform(0.008, 0.03)
        for _ in range(int(rng.integers(1, 4))):  # blots are clumps of dots
            dx, dy = rng.normal(0, 0.5 * r, 2)
            _blob(img, x + dx, y + dy, r * rng.uniform(0.6, 1.0), _DARK_RED * 0.95, rng.uniform(0.6, 0.95), 0.4, True)
    n["haemorrhage"] = len(spots)
    centres = np.array([p.macula_x, p.macula_y]) + rng.normal(0, 0.12, (int(rng.integers(1, 4)), 2))
    for i in range(want["exudate"]):  # hard exudates gather in rings around leaking areas near the macula
        ang, rad = rng.uniform(0, 2 * math.pi), rng.uniform(0.03, 0.11)
        x, y = centres[i % len(centres)] + rad * np.array([math.cos(ang), math.sin(ang)]) + rng.normal(0, 0.012, 2)
        _blob(img, x, y, rng.uniform(0.003, 0.012), _YELLOW * lum, rng.uniform(0.7, 1.0), 0.2, False)
    n["exudate"] = want["exudate"]
    spots = _pole_points(rng, p, want["cotton_wool"])
    for x, y in spots:
        _blob(img, x, y, rng.uniform(0.02, 0.04), _WHITE * min(1.0, lum + 0.1), rng.uniform(0.5, 0.8), 0.9, False)
    n["cotton_wool"] = len(spots)


def _proliferative(img: np.ndarray, rng: np.random.Generator, p: PhantomPatient) -> list[_Segment]:
    """Grade 4: tangles of fine new vessels at the disc or elsewhere, sometimes a large preretinal bleed."""
    base = np.array([p.disc_x, p.disc_y]) if rng.random() < 0.6 else _pole_points(rng, p, 1)[0]
    new_vessels = []
    for _ in range(int(rng.integers(3, 7))):
        h = rng.uniform(-math.pi, math.pi)
        pts = _walk(rng, base + rng.normal(0, p.disc_radius, 2), h, h, 0.0, rng.uniform(0.05, 0.12), 4.0)
        new_vessels.append((pts, np.full(len(pts), 0.0035), _ART))
    if rng.random() < 0.4:
        x, y = _pole_points(rng, p, 1)[0]
        _blob(img, x, y, rng.uniform(0.05, 0.09), _DARK_RED * 0.8, 0.9, 0.15, True)
    return new_vessels


def _paint_drusen(img: np.ndarray, rng: np.random.Generator, p: PhantomPatient) -> int:
    """AMD drusen. The layout belongs to the patient; each visit shows most of them, slightly resized."""
    layout = _rng(p.seed, p.index, _S_DRUSEN)
    k = round(5 + 40 * p.amd_severity)
    ang, rad = layout.uniform(0, 2 * math.pi, k), np.abs(layout.normal(0, 0.12, k)) + 0.01
    radii = layout.uniform(0.006, 0.02, k) * (1 + p.amd_severity)
    shown = rng.random(k) < 0.85
    lum = sum(p.fundus_rgb) / 1.5
    for a, r0, rr in zip(ang[shown], rad[shown], radii[shown]):
        x, y = p.macula_x + r0 * math.cos(a), p.macula_y + r0 * math.sin(a)
        _blob(img, x, y, rr * rng.uniform(0.9, 1.15), _DRUSEN * lum, rng.uniform(0.4, 0.75), 0.7, False)
    return int(shown.sum())


def _paint_lesions(img: np.ndarray, p: PhantomPatient, v: _Visit, visit: int,
                   seed: int) -> tuple[dict[str, int], list[_Segment]]:
    """Paint a visit's lesions in patient coordinates (under the vessels). Returns counts and new vessels."""
    rng = _rng(p.seed, p.index, _S_LESIONS, visit, seed)
    n = dict.fromkeys(LESION_KINDS, 0)
    _paint_dr(img, rng, p, v.dr_grade, n)
    new_vessels = _proliferative(img, rng, p) if v.dr_grade == 4 else []
    n["neovascularisation"] = len(new_vessels)
    if p.amd:
        n["drusen"] = _paint_drusen(img, rng, p)
    return n, new_vessels


def _warp(layer: np.ndarray, v: _Visit) -> np.ndarray:
    """Apply the visit pose (about the image centre) to a (H, W) layer with bilinear interpolation.

    Output pixel u samples the patient canvas at ``c + R(-rotation) (u - c - shift) / scale``. Pose limits keep
    every FOV pixel's source inside the canvas, so the zero fill never shows.
    """
    size = layer.shape[0]
    th, c = math.radians(v.rotation), size / 2
    a, b = math.cos(th) / v.scale, math.sin(th) / v.scale
    tx, ty = c + v.shift[0] * size, c + v.shift[1] * size
    coeffs = (a, b, c - a * tx - b * ty, -b, a, c + b * tx - a * ty)
    out = Image.fromarray(layer, mode="F").transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    return np.asarray(out)


@lru_cache(maxsize=8)
def _fov_mask(size: int) -> np.ndarray:
    x, y = _grid(size)
    mask = np.clip((1 - np.sqrt(x * x + y * y)) * FOV_FRACTION * size / 2 + 0.5, 0, 1)
    mask.flags.writeable = False
    return mask


@lru_cache(maxsize=8)
def _radial(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera terms that depend only on the radius: vignetting falloff and the darkening at the FOV rim."""
    x, y = _grid(size)
    r2 = x * x + y * y
    falloff, rim = r2**1.2, 1 - 0.25 * _smoothstep(0.88, 1.0, np.sqrt(r2))
    falloff.flags.writeable = rim.flags.writeable = False
    return falloff, rim


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InputError(f"phantom image size must be {MIN_SIZE} to {MAX_SIZE} pixels (got {size!r})")
    return int(size)


def _nonneg_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"phantom {name} must be a non-negative integer (got {value!r})")
    return int(value)


def _camera(img: np.ndarray, v: _Visit, noise_rng: np.random.Generator) -> np.ndarray:
    """Photograph the patient canvas: pose, illumination, white balance, gamma, focus, noise, then the FOV stop."""
    size = img.shape[0]
    img = np.stack([_warp(np.ascontiguousarray(img[..., ch]), v) for ch in range(3)], axis=-1)
    x, y = _grid(size)
    falloff, rim = _radial(size)
    light = v.brightness * (1 - v.vignetting * falloff) * (1 + v.gradient[0] * x + v.gradient[1] * y) * rim
    img = np.clip(img * light[..., None] * np.asarray(v.white_balance, np.float32), 0, 1) ** np.float32(v.gamma)
    sigma = v.blur * size / 256
    if sigma > 0.3:
        img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), truncate=3.0)
    img += noise_rng.standard_normal(img.shape, dtype=np.float32) * np.float32(v.noise)
    return np.clip(img, 0, 1) * _fov_mask(size)[..., None]


def render_visit(patient: PhantomPatient, *, visit: int, size: int, seed: int = 0,
                 lesions: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Photograph ``patient`` at ``visit``: returns a float32 (size, size, 3) image in [0, 1] and its labels.

    The same ``(patient, visit, size, seed)`` always gives the same image; ``seed`` picks another realisation of
    the visit. ``lesions=False`` leaves out DR lesions and drusen (same pose and illumination), e.g. to measure
    what the lesions change. Nothing is written to disk.

    Labels: ``patient_id``, ``image_id``, ``visit``, ``eye``, ``dr_grade``, ``amd``, ``glaucoma_suspect``,
    ``cup_to_disc``, ``quality`` (0-1, lower for blur, darkness, noise), ``lesions`` (count per
    :data:`LESION_KINDS`) and ``pose``: a pixel at ``q`` of the patient canvas appears at
    ``c + scale * R(rotation_deg) @ (q - c) + (shift_x, shift_y) * size`` with ``c`` the image centre, x right,
    y down (positive rotation turns clockwise on screen); the FOV circle itself never moves.

    Raises :class:`InputError` for sizes outside 64-2048 or a negative visit or seed.
    """
    size = _check_size(size)
    visit, seed = _nonneg_int("visit", visit), _nonneg_int("seed", seed)
    v = _visit_params(patient, visit, seed)
    background, transmit, reflex = (_identity_cached if size <= 1024 else _identity)(patient, size)
    img = background.copy()
    counts, new_vessels = dict.fromkeys(LESION_KINDS, 0), []
    if lesions:
        counts, new_vessels = _paint_lesions(img, patient, v, visit, seed)
    img *= transmit
    if new_vessels:
        img *= 1 - _rasterise(tuple(new_vessels), size)[0][..., None] * _ABSORB[0]
    img += 0.12 * reflex[..., None]
    img = _camera(img, v, _rng(patient.seed, patient.index, _S_VISIT, visit, seed, size))
    labels = {
        "patient_id": patient.patient_id, "image_id": f"{patient.patient_id}-V{visit}", "visit": visit,
        "eye": patient.eye, "dr_grade": v.dr_grade, "amd": patient.amd, "glaucoma_suspect": patient.glaucoma_suspect,
        "cup_to_disc": round(patient.cup_to_disc, 3), "quality": v.quality, "lesions": counts,
        "pose": {"shift_x": v.shift[0], "shift_y": v.shift[1], "rotation_deg": v.rotation, "scale": v.scale},
    }
    return img.astype(np.float32, copy=False), labels


def render_vessel_mask(patient: PhantomPatient, *, size: int, visit: int | None = None, seed: int = 0) -> np.ndarray:
    """Ground-truth vessel coverage (float32 (size, size) in [0, 1]) inside the FOV.

    With ``visit=None`` the mask is in patient coordinates (no pose); with a visit it is aligned with
    ``render_visit(patient, visit=visit, size=size, seed=seed)``.
    """
    size = _check_size(size)
    art, vein, _ = _rasterise(_vessel_tree(patient), size)
    mask = np.maximum(art, vein)
    if visit is not None:
        mask = _warp(mask, _visit_params(patient, _nonneg_int("visit", visit), _nonneg_int("seed", seed)))
    return np.clip(mask, 0, 1) * _fov_mask(size)


# --- datasets ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomDataset:
    """Summary of a phantom dataset written by :func:`generate_phantom`."""

    root: Path
    """Folder holding the PNG files and ``labels.csv``."""
    labels_path: Path
    patients: int
    visits: int
    """Visits (images) per patient."""
    size: int
    seed: int
    images: int
    dr_grade_counts: tuple[int, ...]
    """Number of images with DR grade 0, 1, 2, 3 and 4."""
    amd_patients: int
    glaucoma_suspects: int


def _check_count(name: str, value: Any, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= high:
        raise InputError(f"{name} must be between 1 and {high} (got {value!r})")
    return int(value)


def _labels_csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def _write_images(folder: Path, *, patients: int, visits: int, size: int, seed: int,
                  progress: Progress) -> tuple[list[list[Any]], list[int], int, int]:
    """Render every visit into ``folder``; returns the label rows, DR grade counts, AMD and glaucoma patients."""
    rows, grades, amd, glaucoma = [], [0] * 5, 0, 0
    with progress.task("Rendering phantom fundus images", total=patients * visits) as task:
        for i in range(patients):
            patient = PhantomPatient.from_seed(seed, i)
            amd, glaucoma = amd + patient.amd, glaucoma + patient.glaucoma_suspect
            for visit in range(visits):
                img, lab = render_visit(patient, visit=visit, size=size, seed=seed)
                name = f"p{i:05d}_v{visit}.png"
                write_durable(folder / name, encode_png(img))
                grades[lab["dr_grade"]] += 1
                rows.append([name, lab["image_id"], lab["patient_id"], lab["eye"], lab["dr_grade"],
                             int(lab["amd"]), int(lab["glaucoma_suspect"]), f"{lab['quality']:.3f}"])
                task.advance()
    return rows, grades, amd, glaucoma


def generate_phantom(out_dir: Path, *, patients: int, visits: int, size: int = 256, seed: int = 0,
                     progress: Progress = NULL_PROGRESS) -> PhantomDataset:
    """Write ``patients x visits`` phantom photographs ``p{patient:05d}_v{visit}.png`` and ``labels.csv``.

    Patients and visits are numbered from 0; ids follow the module docstring (``P00012-V1`` for seed 0,
    ``S7-P00012-V1`` for seed 7). Same arguments, byte-identical files. All or nothing: the dataset is built in
    a hidden sibling of ``out_dir`` and renamed into place, so an error or interrupt (KeyboardInterrupt) leaves
    ``out_dir`` as it was. Raises :class:`InputError` for counts outside 1-:data:`MAX_PATIENTS` patients and
    1-:data:`MAX_VISITS` visits, bad sizes or seeds, or when ``out_dir`` exists and is not an empty folder.
    """
    out_dir = Path(out_dir)
    patients = _check_count("patients", patients, MAX_PATIENTS)
    visits = _check_count("visits", visits, MAX_VISITS)
    size = _check_size(size)
    seed = _nonneg_int("seed", seed)
    with staged_dir(out_dir) as staging:
        rows, grades, amd, glaucoma = _write_images(staging, patients=patients, visits=visits, size=size, seed=seed,
                                                    progress=progress)
        write_durable(staging / "labels.csv", _labels_csv(rows).encode("utf-8"))
    return PhantomDataset(root=out_dir, labels_path=out_dir / "labels.csv", patients=patients, visits=visits,
                          size=size, seed=seed, images=len(rows), dr_grade_counts=tuple(grades), amd_patients=amd,
                          glaucoma_suspects=glaucoma)
