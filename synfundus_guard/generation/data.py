"""Training images as one in-memory tensor, and the patient-disjoint split made before training."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.folder import ImageRecord
from ..data.images import load_image
from ..data.split import split_by_patient
from ..progress import NULL_PROGRESS, Progress


def center_square(img: np.ndarray) -> np.ndarray:
    """Crop the largest centred square (a fundus photograph's field of view is centred)."""
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def to_model_input(img: np.ndarray, resolution: int) -> torch.Tensor:
    """float32 HxWx3 in [0, 1] -> 3xRxR uint8 tensor (centre-cropped, antialiased resize)."""
    t = torch.from_numpy(np.ascontiguousarray(center_square(img))).permute(2, 0, 1)[None]
    if t.shape[-1] != resolution:
        t = F.interpolate(t, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return (t[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def load_images(records: Sequence[ImageRecord], resolution: int, *,
                progress: Progress = NULL_PROGRESS) -> torch.Tensor:
    """Load records as an ``(N, 3, R, R)`` uint8 tensor (kept compact; batches are scaled to [-1, 1])."""
    out = torch.empty((len(records), 3, resolution, resolution), dtype=torch.uint8)
    with progress.task("Loading training images", total=len(records)) as task:
        for i, rec in enumerate(records):
            out[i] = to_model_input(load_image(rec.path), resolution)
            task.advance()
    return out


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1], the range the diffusion model works in."""
    return batch.float() / 127.5 - 1.0


def split_records(records: Sequence[ImageRecord], *, holdout_fraction: float,
                  seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Patient-disjoint ``(train, holdout)`` split (:func:`synfundus_guard.data.split.split_by_patient`)."""
    train, holdout = split_by_patient(list(records), holdout_fraction=holdout_fraction, seed=seed)
    return list(train), list(holdout)
