"""Build an embedder from a short spec string (the ``--embedder`` option).

* ``pixel`` — the built-in default (:mod:`.pixel`), no weights needed.
* ``stats`` — the weight-free fidelity descriptor (:mod:`.stats`): colour, sharpness and structure, for
  ``guard evaluate``; not for memorization (it does not match recoloured or rotated copies).
* ``torchvision:ARCH:CHECKPOINT`` — a torchvision classification network's penultimate layer, weights from a
  local ``state_dict`` file (:mod:`.tv`).
* ``openclip:ARCH:CHECKPOINT`` — an open_clip model ``ARCH`` (e.g. ``ViT-B-32``) with weights from a local
  checkpoint file; ``CHECKPOINT`` may also be an open_clip pretrained tag when a network exists.
"""

from __future__ import annotations

from ..errors import InputError
from .base import Embedder

DEFAULT_SPEC = "pixel"


def embedder_from_spec(spec: str = DEFAULT_SPEC) -> Embedder:
    """Parse ``spec`` and build the embedder. Raises :class:`InputError` for an unknown spec."""
    spec = (spec or DEFAULT_SPEC).strip()
    if spec == "pixel":
        from .pixel import PixelEmbedder

        return PixelEmbedder()
    if spec == "stats":
        from .stats import StatsEmbedder

        return StatsEmbedder()
    if spec.startswith("openclip:"):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise InputError(f"embedder spec {spec!r}: expected openclip:ARCH:CHECKPOINT_PATH")
        from .clip import OpenClipEmbedder

        return OpenClipEmbedder(arch=parts[1], checkpoint=parts[2])
    if spec.startswith("torchvision:"):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise InputError(f"embedder spec {spec!r}: expected torchvision:ARCH:CHECKPOINT_PATH")
        from .tv import TorchvisionEmbedder

        return TorchvisionEmbedder(arch=parts[1], checkpoint=parts[2])
    raise InputError(f"unknown embedder {spec!r} (use 'pixel', 'stats', 'openclip:ARCH:CHECKPOINT_PATH' or "
                     "'torchvision:ARCH:CHECKPOINT_PATH')")
