"""Face check: flags images that contain a human face (clinical photographs, or a generator that learned one).

Detection uses scikit-image's multi-block LBP cascade with the OpenCV frontal-face model that ships with
scikit-image (no download). The cascade is run on a grey copy whose shorter side is ``work_side`` pixels (or
the image's own, if smaller, but at least ``min_work_side``), and on its mirror image; every raw window is
kept (no grouping inside scikit-image) and windows are grouped here.
A face is a group that both passes collect votes for: a true frontal face is close to symmetric, so the
mirrored scan confirms it, while the cascade's chance hits on fundus texture (optic disc, vessel crossings)
rarely survive the mirror. The public score ``faces.votes`` is the best group's vote count (higher = more
face-like); an image is flagged at ``min_votes``. The default was tuned on a training split (LFW faces 0-49
pasted into phantom photographs of dataset seed 901); ``bench/bench_identity.py`` evaluates it on held-out
faces and images and can re-tune it.

Faces smaller than ``min_fraction`` of the shorter image side, or larger than ``max_fraction``, are not
searched: below, a face carries little identity; above, the window would cover the whole fundus disc, which
the cascade mistakes for a face.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from ...data.fov import resize_image
from ..base import Candidate, Check, Finding

NAME = "faces"
KEY_VOTES = "faces.votes"
"""Public score: mirror-confirmed cascade votes of the most face-like window group (higher = more face-like)."""


@dataclass(frozen=True)
class FaceOptions:
    """Detector parameters (see the module docstring)."""

    work_side: int = 256
    """Shorter side of the grey copy the cascade scans (larger images are reduced to it)..."""
    min_work_side: int = 96
    """...and smaller ones enlarged to at least this, so the 24 px cascade window can cover a quarter of them."""
    min_fraction: float = 0.14
    max_fraction: float = 0.6
    scale_factor: float = 1.1
    min_votes: int = 8
    """Flag at this many mirror-confirmed votes: the smallest count with <= 1 % false positives on the tuning
    split (``bench/bench_identity.py --only faces --tune-faces``: 90 % of its faces reach it)."""


@dataclass(frozen=True)
class FaceBox:
    """A group of cascade windows: (x0, y0, x1, y1) in input-image pixels and its mirror-confirmed votes."""

    box: tuple[int, int, int, int]
    votes: int


@lru_cache(maxsize=1)
def _cascade() -> Any:
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        return img
    return img[..., :3] @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)


def _raw_windows(grey: np.ndarray, opts: FaceOptions) -> np.ndarray:
    """Every window the cascade accepts, as rows (row, col, side); no grouping."""
    short = min(grey.shape)
    lo, hi = max(24, int(opts.min_fraction * short)), max(24, int(opts.max_fraction * short))
    found = _cascade().detect_multi_scale(img=grey, scale_factor=opts.scale_factor, step_ratio=1,
                                          min_size=(lo, lo), max_size=(hi, hi), min_neighbor_number=1,
                                          intersection_score_threshold=1.0)  # > 1 never holds: no merging
    return np.array([(d["r"], d["c"], d["width"]) for d in found], dtype=np.int64).reshape(-1, 3)


def detect_faces(image: np.ndarray, options: FaceOptions = FaceOptions()) -> list[FaceBox]:
    """Window groups with their mirror-confirmed votes, best first (empty when the cascade finds nothing)."""
    grey = _grey(image)
    h, w = grey.shape
    scale = min(max(min(h, w), options.min_work_side), options.work_side) / min(h, w)
    small = resize_image(grey[..., None], max(24, round(h * scale)), max(24, round(w * scale)))[..., 0]
    small = np.ascontiguousarray(small, dtype=np.float64)
    direct = _raw_windows(small, options)
    mirror = _raw_windows(np.ascontiguousarray(small[:, ::-1]), options)
    mirror[:, 1] = small.shape[1] - mirror[:, 1] - mirror[:, 2]
    wins = np.concatenate([direct, mirror])
    if len(wins) == 0:
        return []
    src = np.r_[np.zeros(len(direct), bool), np.ones(len(mirror), bool)]
    r, c, s = wins.T
    inter = (np.clip(np.minimum(r[:, None] + s[:, None], r + s) - np.maximum(r[:, None], r), 0, None)
             * np.clip(np.minimum(c[:, None] + s[:, None], c + s) - np.maximum(c[:, None], c), 0, None))
    near = inter > 0.5 * np.minimum(s[:, None], s) ** 2
    votes = np.minimum((near & ~src).sum(1), (near & src).sum(1))
    out, taken = [], np.zeros(len(wins), bool)
    for i in np.argsort(-votes, kind="stable"):
        if taken[i] or votes[i] == 0:
            continue
        taken |= near[i]
        box = (c[i] / scale, r[i] / scale, (c[i] + s[i]) / scale, (r[i] + s[i]) / scale)
        out.append(FaceBox(tuple(int(round(v)) for v in box), int(votes[i])))
    return out


class FaceCheck(Check):
    """Flags images in which a frontal face is detected."""

    name = NAME

    def __init__(self, *, options: FaceOptions = FaceOptions()):
        self.options = options

    def fingerprint(self) -> dict[str, Any]:
        o = self.options
        return {"name": self.name, "min_votes": o.min_votes, "work_side": o.work_side,
                "min_fraction": o.min_fraction, "max_fraction": o.max_fraction}

    def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
        findings = []
        for cand in batch:
            boxes = detect_faces(cand.image, self.options)
            best = boxes[0].votes if boxes else 0
            flagged = best >= self.options.min_votes
            reasons = (f"face detected ({best} mirror-confirmed cascade votes >= {self.options.min_votes})",) \
                if flagged else ()
            private = {"boxes": [{"box": list(b.box), "votes": b.votes} for b in boxes[:5]]}
            findings.append(Finding(check=self.name, flagged=flagged, reasons=reasons,
                                    scores={KEY_VOTES: float(best)}, private=private))
        return findings
