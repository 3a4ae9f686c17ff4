"""Features of image files for the fidelity metrics, on all cores.

Files are decoded and described in worker processes (:func:`~synfundus_guard.parallel.ordered_map`: spawned, one
thread each), in order, batch by batch; the extractor is built once per worker from its spec (``stats`` by default, see
:mod:`~synfundus_guard.embed.stats`). A file that cannot be decoded is an :class:`~synfundus_guard.errors.ImageError`
naming it, as everywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.images import load_image
from ..embed.registry import embedder_from_spec
from ..parallel import ordered_map
from ..progress import NULL_PROGRESS, Progress

DEFAULT_FEATURES = "stats"
BATCH = 32
_WORKER: dict = {}


def _init(spec: str) -> None:
    _WORKER["embedder"] = embedder_from_spec(spec)


def _describe(paths: Sequence[Path]) -> np.ndarray:
    return _WORKER["embedder"].features([load_image(p) for p in paths])


def extractor_fingerprint(spec: str = DEFAULT_FEATURES) -> str:
    """The feature function's fingerprint (name, version, settings, weights hash) for the public report."""
    return embedder_from_spec(spec).feature_fingerprint()


def extract_features(paths: Sequence[Path], *, spec: str = DEFAULT_FEATURES, workers: int = 0,
                     what: str = "images", progress: Progress = NULL_PROGRESS) -> np.ndarray:
    """``(len(paths), D)`` float32 features, in order. ``workers`` 0: one process per core (1 for few images)."""
    n_workers = workers or (os.cpu_count() or 1)
    n_workers = max(1, min(n_workers, len(paths) // BATCH or 1))
    batches = [list(paths[i:i + BATCH]) for i in range(0, len(paths), BATCH)]
    out: list[np.ndarray] = []
    with progress.task(f"Features ({what})", total=len(paths)) as task:
        if n_workers == 1:
            _init(spec)
            for batch in batches:
                out.append(_describe(batch))
                task.advance(len(batch))
        else:
            for feats in ordered_map(_describe, batches, workers=n_workers, setup=_init, setup_args=(spec,)):
                out.append(feats)
                task.advance(len(feats))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
