"""torchvision embedder: a torchvision classification network loaded from a local checkpoint file.

The network's penultimate layer (the classifier head replaced by the identity) is the embedding, the usual
choice for FID-style fidelity metrics; images are resized to 224 px and normalised with ImageNet statistics, as
torchvision's weights expect. Weights never come from the network: ``CHECKPOINT`` is a local file holding a
``state_dict`` (``torch.save(model.state_dict(), path)``), loaded with ``weights_only=True`` so a checkpoint
cannot run code. Spec: ``torchvision:ARCH:CHECKPOINT`` (e.g. ``torchvision:resnet50:/models/resnet50.pth``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..fsutil import sha256_file
from .base import MirrorViewsEmbedder

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SIDE = 224


class TorchvisionEmbedder(MirrorViewsEmbedder):
    """Penultimate-layer features of a torchvision network (``arch`` + local ``checkpoint``)."""

    name = "torchvision"

    def __init__(self, *, arch: str, checkpoint: str, batch_size: int = 32, device: str | None = None):
        import torch
        import torchvision

        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(f"torchvision checkpoint not found (a local state_dict file is needed): {checkpoint}")
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise InputError(f"unknown torchvision classification architecture {arch!r}")
        model = torchvision.models.get_model(arch, weights=None)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a wrong or damaged file
            raise InputError(f"cannot load torchvision {arch} from {checkpoint}: {str(exc).splitlines()[0]}") from None
        for head in ("fc", "classifier", "heads", "head"):
            if hasattr(model, head):
                setattr(model, head, torch.nn.Identity())
                break
        self.arch, self.batch_size = arch, batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = model.eval().to(self.device)
        self._torch = torch
        self._weights_id = "sha256:" + sha256_file(path)[:16]

    def feature_fingerprint(self) -> str:
        return f"torchvision:{self.arch}:{self._weights_id}:{SIDE}"

    def _encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        torch = self._torch
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [_resized(im) for im in images[i:i + self.batch_size]]
            x = torch.from_numpy((np.stack(batch) - _MEAN) / _STD).permute(0, 3, 1, 2).to(self.device)
            with torch.no_grad():
                out.append(self._model(x).float().flatten(1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def _resized(img: np.ndarray) -> np.ndarray:
    """An image as 8-bit pixels (as released) resized to the network's input side, float32 in [0, 1]."""
    from PIL import Image

    pil = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(pil.resize((SIDE, SIDE), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
