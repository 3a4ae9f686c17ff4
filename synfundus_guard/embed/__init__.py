"""Embedders behind one interface (:mod:`.base`): the built-in pixel embedder and open_clip."""

from .base import Embedder
from .registry import embedder_from_spec

__all__ = ["Embedder", "embedder_from_spec"]
