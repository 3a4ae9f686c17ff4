"""Face check: flags images that contain a human face (clinical photographs, or a generator that learned one).

Only pretrained, widely used detectors whose weights ship inside registry packages run here; nothing is fitted
on the project's phantom (an earlier HOG classifier trained on phantom windows flagged 24 % of clean fundus
photographs from a renderer it had never seen). Both scan a grey copy whose shorter side is ``work_side``
pixels, for faces of ``min_fraction`` to ``max_fraction`` of that side:

* dlib's frontal face detector (HOG features + a linear SVM trained by dlib on labelled real faces; compiled into
  the ``dlib-bin`` wheel), run with one upsampling step so that faces of about 40 px are found. A detection above
  dlib's own decision threshold, 0 (``min_dlib``, not tuned here), must be confirmed on the mirrored image, as
  the Haar votes are: its score is the smaller of its own and that of the best mirrored detection on the same
  place (a frontal face is close to symmetric; the fundus disc, whose bright optic disc and dark macula dlib can
  read as a face at the largest scales, is not). Public score ``faces.dlib``: the best detection's score, so
  confirmed where it exceeds the threshold; it fires above ``min_dlib``.
* OpenCV's Viola-Jones Haar cascades ``haarcascade_frontalface_alt`` and ``..._alt2`` (shipped in
  ``opencv-python-headless`` 4.x), each run on the image and its mirror without OpenCV's grouping: a window
  group's votes are the smaller of its direct and mirrored window counts (a frontal face is close to symmetric;
  chance hits on fundus texture rarely survive the mirror), and the two cascades must agree on the place (the
  smaller of their overlapping groups' votes). Public score ``faces.haar``; fires at ``min_haar`` votes. A group's
  votes are at most its cascade's direct windows, so the mirror scans run only where a cascade has ``min_haar``
  windows (0-3 % of fundus images against 26-45 % with any window; same flags, 0 below ``min_haar``), and most
  images need one direct scan, the cheaper cascade's.

``min_haar`` is the one number chosen here: the smallest vote count at which, together with dlib at its own
threshold, no clean image of the tuning split is flagged (phantoms of seed 901 at 256 px and 32 px; LFW faces
0-49 pasted into them; ``bench/bench_identity.py --only faces --tune-faces``). It is validated on data that
played no part in choosing it: LFW faces 50-99, phantoms of another seed, a second, independent fundus renderer
(``bench/alt_fundus.py``) and the real ``skimage.data.retina()`` photograph, at 256 and 128 px (bench table).

Faces smaller than ``min_fraction`` of the shorter side, or than ``min_face_px`` pixels in the input image (a
32 px generated sample enlarged to ``work_side`` holds interpolated blobs, not identity), are not searched.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from ...data.fov import resize_image
from ..base import Candidate, Check, Finding

NAME = "faces"
KEY_DLIB = "faces.dlib"
"""Public score: SVM score of dlib's most face-like detection (> 0 is dlib's own "face"); ``NO_DETECTION``."""
KEY_HAAR = "faces.haar"
"""Public score: mirror-confirmed votes on which both Haar cascades agree, counted where they reach ``min_haar``
(0: no place does; the scans stop as soon as none can)."""
NO_DETECTION = -10.0
HAAR_MODELS = ("haarcascade_frontalface_alt.xml", "haarcascade_frontalface_alt2.xml")


@dataclass(frozen=True)
class FaceOptions:
    """Detector parameters (see the module docstring)."""

    work_side: int = 256
    """Shorter side of the grey copy the detectors scan (larger images are reduced to it)..."""
    max_enlarge: float = 3.0
    """...smaller ones enlarged to it, by at most this factor: a 32 px sample is scanned at 96 px, where the
    smallest face searched (``min_face_px``) spans 48 px, enough for both detectors; enlarging it 8x to 256 px
    cost 4x the time and adds nothing but interpolation."""
    min_fraction: float = 0.12
    max_fraction: float = 0.6
    """Searched face sizes, as fractions of the shorter side (a Haar window larger than 0.6 covers the fundus
    disc; dlib is not limited above: a close-up portrait is a face)."""
    min_face_px: int = 16
    """Faces fewer than this many pixels across *in the input image* are not searched."""
    dlib_upsample: int = 1
    """dlib's detector window is 80 px; one upsampling step finds faces of about 40 px of the work image."""
    min_dlib: float = 0.0
    """dlib's own decision threshold (its detector's default), not tuned here."""
    scale_factor: float = 1.1
    """Haar cascade scale step."""
    min_haar: int = 6
    """Mirror-confirmed votes both Haar cascades must reach (tuned on the tuning split; module docstring)."""


def flagged_by(dlib: float, haar: float, options: FaceOptions = FaceOptions()) -> list[str]:
    """Why the scores flag an image (empty: they do not)."""
    reasons = []
    if dlib > options.min_dlib:
        reasons.append(f"face detected (dlib frontal face detector score {dlib:.2f} > {options.min_dlib})")
    if haar >= options.min_haar:
        reasons.append(f"face detected (two Haar face cascades agree, {haar:.0f} mirror-confirmed votes "
                       f">= {options.min_haar})")
    return reasons


@dataclass(frozen=True)
class FaceBox:
    """A face candidate: (x0, y0, x1, y1) in input-image pixels, the detector that found it and its score."""

    box: tuple[int, int, int, int]
    detector: str
    """``"dlib"`` (score = SVM score, mirror-confirmed above ``min_dlib``) or ``"haar"`` (score =
    mirror-confirmed votes of both cascades)."""
    score: float


@lru_cache(maxsize=1)
def _dlib() -> Any:
    import dlib

    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=1)
def _haar() -> tuple[Any, ...]:
    import cv2

    out = []
    for name in HAAR_MODELS:
        c = cv2.CascadeClassifier(str(cv2.data.haarcascades) + name)
        if c.empty():
            raise RuntimeError(f"OpenCV could not load its face cascade {name} (opencv-python-headless 4.x "
                               "ships it; 5.x does not)")
        out.append(c)
    return tuple(out)


def work_image(image: np.ndarray, work_side: int = 256, max_enlarge: float = 3.0) -> tuple[np.ndarray, float]:
    """The grey uint8 copy both detectors scan (shorter side ``work_side``, or ``max_enlarge`` times the
    image's own when that is less) and its scale."""
    img = np.asarray(image, dtype=np.float32)
    grey = img if img.ndim == 2 else img[..., :3] @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    h, w = grey.shape
    scale = min(work_side / min(h, w), max(max_enlarge, 1.0))
    small = resize_image(grey[..., None], max(1, round(h * scale)), max(1, round(w * scale)))[..., 0]
    return np.ascontiguousarray(np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)), scale


def searched_sides(shape: tuple[int, ...], scale: float, options: FaceOptions = FaceOptions()) -> tuple[int, int]:
    """Smallest and largest face side (work-image pixels) searched in a work image of ``shape`` made at ``scale``
    (:func:`work_image`): ``min_fraction`` of the shorter side, at least ``min_face_px`` input pixels and 20, up to
    ``max_fraction`` (the Haar cascades' limit; dlib is not limited above)."""
    short = min(shape[:2])
    return (int(max(options.min_fraction * short, options.min_face_px * scale, 20)),
            int(options.max_fraction * short))


def _haar_windows(cascade: Any, grey: np.ndarray, lo: int, hi: int, scale_factor: float) -> np.ndarray:
    """Every window the cascade accepts, as rows (row, col, side); no grouping."""
    if hi < lo:
        return np.zeros((0, 3), np.int64)
    found = cascade.detectMultiScale(grey, scaleFactor=scale_factor, minNeighbors=0, minSize=(lo, lo),
                                     maxSize=(hi, hi))
    return np.array([(y, x, s) for x, y, s, _ in np.reshape(found, (-1, 4))], dtype=np.int64).reshape(-1, 3)


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise: do square windows (row, col, side) overlap by more than half of the smaller one?"""
    ra, ca, sa = (x[:, None] for x in a.T)
    rb, cb, sb = b.T
    inter = (np.clip(np.minimum(ra + sa, rb + sb) - np.maximum(ra, rb), 0, None)
             * np.clip(np.minimum(ca + sa, cb + sb) - np.maximum(ca, cb), 0, None))
    return inter > 0.5 * np.minimum(sa, sb) ** 2


def _mirror_groups(cascade: Any, grey: np.ndarray, lo: int, hi: int, scale_factor: float, need: int,
                   direct: np.ndarray | None = None) -> list[tuple[tuple[int, int, int], int]]:
    """Window groups ((row, col, side), mirror-confirmed votes) of one cascade reaching ``need`` votes, best first
    (``direct``: the cascade's windows on ``grey``, where already scanned).

    A group's votes are at most the cascade's direct windows, so when there are fewer than ``need`` of them the
    mirror scan is skipped (it could confirm no group; 97-100 % of fundus images)."""
    if direct is None:
        direct = _haar_windows(cascade, grey, lo, hi, scale_factor)
    if len(direct) < need:
        return []
    mirror = _haar_windows(cascade, np.ascontiguousarray(grey[:, ::-1]), lo, hi, scale_factor)
    mirror[:, 1] = grey.shape[1] - mirror[:, 1] - mirror[:, 2]
    wins = np.concatenate([direct, mirror])
    src = np.r_[np.zeros(len(direct), bool), np.ones(len(mirror), bool)]
    near = _overlap(wins, wins)
    votes = np.minimum((near & ~src).sum(1), (near & src).sum(1))
    out, taken = [], np.zeros(len(wins), bool)
    for i in np.argsort(-votes, kind="stable"):
        if taken[i] or votes[i] < need:
            continue
        taken |= near[i]
        out.append((tuple(int(v) for v in wins[i]), int(votes[i])))
    return out  # type: ignore[return-value]


def _haar_agreement(grey: np.ndarray, lo: int, hi: int, scale_factor: float,
                    need: int = 1) -> list[tuple[tuple, int]]:
    """Groups of the first cascade with the votes both cascades give that place (the smaller), best first; only
    places reaching ``need`` votes. The agreed votes are the smaller of the two, so the scans stop where either
    cascade cannot reach ``need``: the second cascade's direct scan, the cheaper one (16 against 20 ms per 256 px
    fundus image, one thread), goes first; then the first cascade's scans; the second's mirror scan last."""
    cascades = _haar()
    need = max(int(need), 1)
    second_direct = _haar_windows(cascades[1], grey, lo, hi, scale_factor)
    if len(second_direct) < need:  # no group of the second cascade can reach need votes
        return []
    first = _mirror_groups(cascades[0], grey, lo, hi, scale_factor, need)
    if not first:
        return []
    second = _mirror_groups(cascades[1], grey, lo, hi, scale_factor, need, direct=second_direct)
    if not second:
        return []
    near = _overlap(np.array([g for g, _ in first]), np.array([g for g, _ in second]))
    other = np.array([v for _, v in second])
    out = [(g, min(v, int(other[near[i]].max()))) for i, (g, v) in enumerate(first) if near[i].any()]
    return sorted(out, key=lambda gv: -gv[1])


def _dlib_windows(grey: np.ndarray, lo: int, upsample: int, threshold: float) -> list[tuple[tuple[int, int, int],
                                                                                           float]]:
    """dlib's detections ((row, col, side), SVM score) at least ``lo`` pixels across, scoring above ``threshold``."""
    rects, scores, _ = _dlib().run(grey, upsample, threshold)
    return [((r.top(), r.left(), min(r.width(), r.height())), float(s)) for r, s in zip(rects, scores)
            if min(r.width(), r.height()) >= lo]


def _dlib_confirmed(grey: np.ndarray, lo: int, upsample: int, min_dlib: float) -> list[tuple[tuple[int, int, int],
                                                                                            float]]:
    """dlib's candidates (scoring above ``min_dlib - 1``), best first; one above ``min_dlib`` scores the smaller of
    its own score and the best mirrored detection's on the same place (``NO_DETECTION`` when none is there). The
    mirrored image is scanned only when a candidate could fire (about 1 % of fundus images)."""
    direct = _dlib_windows(grey, lo, upsample, min_dlib - 1.0)
    if any(s > min_dlib for _, s in direct):
        w = grey.shape[1]
        mirror = [((r, w - c - side, side), s)
                  for (r, c, side), s in _dlib_windows(np.ascontiguousarray(grey[:, ::-1]), lo, upsample,
                                                       min_dlib - 1.0)]
        near = _overlap(np.array([g for g, _ in direct]), np.array([g for g, _ in mirror]).reshape(-1, 3))
        seen = np.array([s for _, s in mirror])
        direct = [(g, s if s <= min_dlib else min(s, float(seen[near[i]].max(initial=NO_DETECTION))))
                  for i, (g, s) in enumerate(direct)]
    return sorted(direct, key=lambda gs: -gs[1])


def detect_faces(image: np.ndarray, options: FaceOptions = FaceOptions()) -> list[FaceBox]:
    """Face candidates of both detectors (dlib's best first, then Haar groups, best first). dlib candidates are
    those scoring above ``min_dlib - 1`` (mirror-confirmed above ``min_dlib``), Haar groups those reaching
    ``min_haar`` votes."""
    o = options
    grey, scale = work_image(image, o.work_side, o.max_enlarge)
    lo, hi = searched_sides(grey.shape, scale, o)

    def to_box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return tuple(int(round(v / scale)) for v in (x0, y0, x1, y1))  # type: ignore[return-value]

    out = [FaceBox(to_box(c, r, c + side, r + side), "dlib", s)
           for (r, c, side), s in _dlib_confirmed(grey, lo, o.dlib_upsample, o.min_dlib)]
    for (r, c, s), v in _haar_agreement(grey, lo, hi, o.scale_factor, o.min_haar):
        out.append(FaceBox(to_box(c, r, c + s, r + s), "haar", float(v)))
    return out


def face_scores(boxes: Sequence[FaceBox]) -> dict[str, float]:
    """The public scores of :func:`detect_faces`'s candidates (``NO_DETECTION`` / 0 votes when absent)."""
    return {KEY_DLIB: max((b.score for b in boxes if b.detector == "dlib"), default=NO_DETECTION),
            KEY_HAAR: max((b.score for b in boxes if b.detector == "haar"), default=0.0)}


def model_versions() -> dict[str, str]:
    """Versions of the packages whose detectors run here (for fingerprints: other weights, other scores)."""
    import cv2
    import dlib

    return {"dlib": str(dlib.__version__), "opencv": str(cv2.__version__)}


class FaceCheck(Check):
    """Flags images in which a frontal face is detected."""

    name = NAME

    def __init__(self, *, options: FaceOptions = FaceOptions()):
        self.options = options

    def fingerprint(self) -> dict[str, Any]:
        o = self.options
        return {"name": self.name, "work_side": o.work_side, "max_enlarge": o.max_enlarge,
                "min_fraction": o.min_fraction,
                "max_fraction": o.max_fraction, "min_face_px": o.min_face_px, "dlib_upsample": o.dlib_upsample,
                "min_dlib": o.min_dlib, "dlib_mirror": True, "scale_factor": o.scale_factor, "min_haar": o.min_haar,
                "haar_votes_from": "min_haar",
                "haar_models": list(HAAR_MODELS), **model_versions()}

    def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
        findings = []
        for cand in batch:
            boxes = detect_faces(cand.image, self.options)
            scores = face_scores(boxes)
            reasons = flagged_by(scores[KEY_DLIB], scores[KEY_HAAR], self.options)
            private = {"boxes": [{"box": list(b.box), "detector": b.detector, "score": b.score}
                                 for b in boxes[:8]]}
            findings.append(Finding(check=self.name, flagged=bool(reasons), reasons=tuple(reasons),
                                    scores=scores, private=private))
        return findings
