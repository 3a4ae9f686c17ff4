"""The embedder interface.

An embedder maps images to L2-normalised vectors whose inner product measures "same image, possibly
transformed". It works in two stages so the expensive part can be cached on disk:

* :meth:`Embedder.features` — per-image raw features, a pure function of the pixels (cached by content hash
  and :meth:`feature_fingerprint`);
* :meth:`Embedder.project` — a cheap map from raw features to the final embedding, possibly fitted on the
  training set (:meth:`fit`), e.g. PCA whitening. Its parameters travel with the index.

``features(images, views=True)`` also returns features of augmented *views* of each image (mirrors, quarter
turns, small rotations): a query is matched against the index through every view, so a flipped or rotated copy of a
training image still finds its source.
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

import numpy as np


class Embedder(abc.ABC):
    """Base class; see the module docstring for the two-stage contract."""

    name: str = "embedder"

    @property
    @abc.abstractmethod
    def n_views(self) -> int:
        """Number of views returned per image by ``features(..., views=True)`` (view 0 is the identity)."""

    @abc.abstractmethod
    def feature_fingerprint(self) -> str:
        """Identifies the raw-feature function (name, version, settings, weights hash)."""

    @abc.abstractmethod
    def features(self, images: Sequence[np.ndarray], *, views: bool = False) -> np.ndarray:
        """Raw features: ``(n, F)`` float32, or ``(n, n_views, F)`` when ``views`` is true."""

    def view_params(self, view: int) -> tuple[int, float | None]:
        """(orientation 0..7 as in :func:`~synfundus_guard.data.fov.orient`, rotation in degrees or None when
        unknown) of query view ``view``. The default: view 1 of two is the left-right mirror."""
        return (4 if view % 2 == 1 else 0, None) if self.n_views == 2 else (0, None)

    def fit(self, features: np.ndarray) -> None:
        """Fit the projection on training raw features ``(n, F)``. The default projection needs no fit."""

    @abc.abstractmethod
    def project(self, features: np.ndarray) -> np.ndarray:
        """Map raw features ``(..., F)`` to L2-normalised float32 embeddings ``(..., D)``."""

    @abc.abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """Fitted projection parameters, saved with the index."""

    @abc.abstractmethod
    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore parameters from :meth:`state`."""

    def fingerprint(self) -> str:
        """Identifies the complete embedding function: raw features plus the fitted projection."""
        from ..fsutil import sha256_bytes

        h = sha256_bytes(b"".join(np.ascontiguousarray(v).tobytes() for _, v in sorted(self.state().items())))
        return f"{self.feature_fingerprint()}+proj:{h[:16]}"

    def describe(self) -> dict[str, Any]:
        """Public description for reports."""
        return {"name": self.name, "fingerprint": self.fingerprint(), "views": self.n_views}


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Normalise vectors to unit length (zero vectors stay zero)."""
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class MirrorViewsEmbedder(Embedder):
    """An embedder of a network that sees whole images: views are the image and its horizontal mirror, the
    embedding is the L2-normalised network output, and nothing is fitted. Subclasses implement :meth:`_encode`."""

    @abc.abstractmethod
    def _encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(n, F)`` float32 network outputs for float RGB images."""

    @property
    def n_views(self) -> int:
        return 2

    def features(self, images: Sequence[np.ndarray], *, views: bool = False) -> np.ndarray:
        base = self._encode(images)
        return np.stack([base, self._encode([im[:, ::-1] for im in images])], axis=1) if views else base

    def project(self, features: np.ndarray) -> np.ndarray:
        return l2_normalize(features)

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        return None
