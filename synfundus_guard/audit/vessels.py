"""Retinal vessel biometrics: does an image reproduce a training patient's vessel tree?

The vessel pattern identifies a person even when the image is not a copy (another visit: new pose, illumination,
lesions). Each image's vessels are enhanced with a multi-scale Frangi filter inside the canonical field of view;
the template is that vesselness map. Candidate training images come from a FAISS index of coarse vessel maps
(:mod:`.vessel_search`), so the costly alignment does not grow with the training set, each with the orientation
and rotation that matched it. Each candidate is then verified geometrically: a translation-only correlation at its
matched views ranks them, and the ``refine`` best candidate-views are aligned over rotations, scales and
translations (FFT correlation); the best normalised correlation is the match score. The threshold is the policy's
quantile of holdout (different-patient) match scores.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..index.store import GuardIndex
from .base import Candidate, Check, Finding
from .memorization import align_best
from .pixel_match import ALIGN_VERSION, VESSEL_VERSION, QuerySketch
from .vessel_search import DESC_VERSION, VIEWS, VesselSearch, view_params

SCORE_KEY = "vessels.match_score"
CANDIDATES = 10
"""Training images retrieved per query."""
REFINE = 3
"""Candidate-views aligned over the full rotation and scale grid (phantom seed 11, 100 patients, 3 views per
candidate: refining 3 gave end-to-end AUC 0.948, all 20 0.948, at 47 vs 100 ms per 256 px image)."""
MATCH_VERSION = f"{VESSEL_VERSION}:{ALIGN_VERSION}:{DESC_VERSION}:k{CANDIDATES}:v{VIEWS}:r{REFINE}"
"""Changes whenever the scores would: calibrations cached under another version are recomputed."""


def vessel_search(index: GuardIndex) -> VesselSearch:
    """The vessel search index of a training index (built from its stored templates on first use)."""
    return index.derived(DESC_VERSION, lambda ix: VesselSearch.build(ix.vessels))


def vessel_scores(index: GuardIndex, images: Sequence[np.ndarray], *, k: int = CANDIDATES, views: int = VIEWS,
                  refine: int = REFINE) -> list[tuple[float, int, dict[str, float]]]:
    """(best vessel-map correlation, training index, transform) per image against its retrieved candidates."""
    search = vessel_search(index)
    out = []
    for img in images:
        query = QuerySketch(img, kind="vessel")
        retrieval = search.retrieve([query.template()], k=k, views=views)[0]
        out.append(align_best(query, retrieval, index.vessels, view_params=view_params, refine=refine))
    return out


class VesselCheck(Check):
    """Flags images whose vessel tree matches a training patient's closer than other patients' do."""

    name = "vessels"

    def __init__(self, *, index: GuardIndex, threshold: float, calibration_info: dict | None = None):
        self.index = index
        self.threshold = float(threshold)
        self.calibration_info = calibration_info or {}

    def fingerprint(self) -> dict:
        return {"name": self.name, "match": MATCH_VERSION, "threshold": self.threshold, **self.calibration_info}

    def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
        findings = []
        for score, j, transform in vessel_scores(self.index, [c.image for c in batch]):
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
