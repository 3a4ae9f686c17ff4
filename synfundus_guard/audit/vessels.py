"""Retinal vessel biometrics: does an image reproduce a training patient's vessel tree?

The vessel pattern identifies a person even when the image is not a copy (another visit: new pose,
illumination, lesions). Each image's vessels are enhanced with a multi-scale Frangi filter inside the
canonical field of view; the template is that vesselness map. Candidate training images come from the FAISS
index (so the cost is sub-linear in the training set), and each candidate is verified geometrically: the
query's map is aligned to the candidate's over orientations, rotations, scales and translations (FFT
correlation) and the best normalised correlation is the match score. The threshold is the policy's quantile
of holdout (different-patient) match scores.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..index.store import GuardIndex
from .base import Candidate, Check, Finding
from .memorization import Retrieval, align_best, retrieve
from .pixel_match import QuerySketch

SCORE_KEY = "vessels.match_score"


def vessel_scores(index: GuardIndex, images: Sequence[np.ndarray], *, k: int,
                  retrievals: Sequence[Retrieval] | None = None) -> list[tuple[float, int, dict[str, float]]]:
    """(best vessel-map correlation, training index, transform) per image against its FAISS candidates."""
    retrievals = retrievals if retrievals is not None else retrieve(index, images, k=k)
    # Another visit differs in pose, so a translation-only first pass cannot rank candidates: refine them all.
    return [align_best(index, QuerySketch(img, kind="vessel"), r, index.vessels, refine=2 * len(r.candidates))
            for img, r in zip(images, retrievals)]


class VesselCheck(Check):
    """Flags images whose vessel tree matches a training patient's closer than other patients' do."""

    name = "vessels"

    def __init__(self, *, index: GuardIndex, k: int, threshold: float, calibration_info: dict | None = None):
        self.index = index
        self.k = k
        self.threshold = float(threshold)
        self.calibration_info = calibration_info or {}

    def fingerprint(self) -> dict:
        return {"name": self.name, "k": self.k, "threshold": self.threshold, **self.calibration_info}

    def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
        findings = []
        for score, j, transform in vessel_scores(self.index, [c.image for c in batch], k=self.k):
            flagged = score > self.threshold
            rec = self.index.records[j] if j >= 0 else {}
            findings.append(Finding(
                check=self.name,
                flagged=flagged,
                reasons=(f"vessel pattern matches a training patient: score {score:.3f} > {self.threshold:.3f}",)
                if flagged else (),
                scores={SCORE_KEY: round(score, 6)},
                private={"matched_training_image": rec.get("file_name"), "matched_patient_id": rec.get("patient_id"),
                         "transform": transform},
            ))
        return findings
