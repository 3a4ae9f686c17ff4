"""Deterministic DDIM sampling: image ``i`` depends only on ``(seed, i)``, never on batching.

Every image gets its own seed, derived from the run seed and its index (:func:`image_seed`); its initial noise
and, for a conditional model, the label combination drawn for unspecified columns come from a generator seeded
with it alone. DDIM with ``eta=0`` adds no further randomness, so a manifest entry's seed reproduces its image
(up to floating-point differences between batch sizes, below one grey level).
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from ..errors import InputError, ModelError
from ..progress import NULL_PROGRESS, Progress
from .model import LoadedModel

DEFAULT_STEPS = 25
"""DDIM steps (trailing spacing): a fair quality/speed point for small models on CPU."""


class Sample(NamedTuple):
    """One generated image."""

    index: int
    image: np.ndarray
    """float32 (H, W, 3) in [0, 1]."""
    seed: int
    """The image's own seed (:func:`image_seed`)."""
    labels: dict[str, str]
    """The full label combination it was conditioned on ({} for an unconditional model)."""


def image_seed(seed: int, index: int) -> int:
    """The 63-bit seed of image ``index`` in a run seeded with ``seed`` (sha256-derived, no collisions in use)."""
    digest = hashlib.sha256(f"synfundus-guard/sample/{int(seed)}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def resolve_labels(model: LoadedModel, labels: Mapping[str, str] | None) -> list[tuple[int, int]] | None:
    """Validate requested labels against the model; returns the matching classes (None: unconditional).

    Raises :class:`ModelError` for labels an unconditional model was given, or labels it was not trained on.
    """
    labels = {str(k): str(v) for k, v in (labels or {}).items()}
    if model.conditioning is None:
        if labels:
            names = ", ".join(f"{k}={v}" for k, v in labels.items())
            raise ModelError(f"the model is not class-conditional; it cannot generate {names}")
        return None
    return model.conditioning.validate(labels)


def sample_batch(model: LoadedModel, indices: Sequence[int], *, seed: int,
                 matching: list[tuple[int, int]] | None, steps: int = DEFAULT_STEPS) -> list[Sample]:
    """Generate the images with the given indices in one batch (``matching`` from :func:`resolve_labels`)."""
    res = model.resolution
    noises, classes, seeds = [], [], []
    for i in indices:
        s = image_seed(seed, i)
        g = torch.Generator().manual_seed(s)
        noises.append(torch.randn((3, res, res), generator=g))
        if matching is not None:
            classes.append(model.conditioning.draw(matching, g))  # type: ignore[union-attr]
        seeds.append(s)
    device = model.device  # noise is drawn on the CPU: the same start on every device
    x = (torch.stack(noises) * model.scheduler.init_noise_sigma).to(device)
    class_labels = torch.tensor(classes, dtype=torch.long, device=device) if matching is not None else None
    scheduler = type(model.scheduler).from_config(model.scheduler.config)  # own timestep state per call
    scheduler.set_timesteps(steps)
    with torch.inference_mode():
        for t in scheduler.timesteps:
            eps = model.unet(scheduler.scale_model_input(x, t), t, class_labels=class_labels).sample
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    images = ((x / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
    out = []
    for j, i in enumerate(indices):
        labels = model.conditioning.labels_of(classes[j]) if matching is not None else {}  # type: ignore[union-attr]
        out.append(Sample(index=i, image=np.ascontiguousarray(images[j]), seed=seeds[j], labels=labels))
    return out


def sample_images(model: LoadedModel, *, n: int, seed: int = 0, labels: Mapping[str, str] | None = None,
                  batch_size: int = 16, steps: int = DEFAULT_STEPS, start: int = 0,
                  progress: Progress = NULL_PROGRESS) -> Iterator[Sample]:
    """Yield images ``start .. start + n - 1`` of the run ``seed``, unguarded, in index order.

    Raises :class:`InputError` for ``n``, ``batch_size`` or ``steps`` below 1, and :class:`ModelError` for
    labels the model cannot generate (before any sampling).
    """
    if n < 1 or batch_size < 1 or steps < 1:
        raise InputError(f"n, batch size and steps must be >= 1 (got n={n}, batch size={batch_size}, steps={steps})")
    matching = resolve_labels(model, labels)
    with progress.task("Sampling", total=n) as task:
        for lo in range(start, start + n, batch_size):
            batch = list(range(lo, min(lo + batch_size, start + n)))
            yield from sample_batch(model, batch, seed=seed, matching=matching, steps=steps)
            task.advance(len(batch))
