"""open_clip embedder: a CLIP image tower loaded from a local checkpoint (or a pretrained tag with a network).

Semantic embeddings are weaker than the pixel embedder at near-copy detection, but they find copies under
transforms the pixel embedder was not designed for (heavy crops, colour changes) and they work for any image
domain. Query views are the image and its horizontal mirror.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, MissingDependencyError
from ..fsutil import sha256_file
from .base import MirrorViewsEmbedder


class OpenClipEmbedder(MirrorViewsEmbedder):
    """CLIP image embeddings from open_clip (``arch`` + local ``checkpoint``)."""

    name = "openclip"

    def __init__(self, *, arch: str, checkpoint: str, batch_size: int = 32, device: str | None = None):
        try:
            import open_clip
            import torch
        except ImportError as exc:  # pragma: no cover - open_clip is a core dependency
            raise MissingDependencyError(f"open_clip is not installed ({exc}); pip install open-clip-torch") from None
        self.arch = arch
        self.checkpoint = checkpoint
        path = Path(checkpoint)
        if path.exists():
            if not path.is_file():
                raise InputError(f"open_clip checkpoint is not a file: {checkpoint}")
            self._weights_id = "sha256:" + sha256_file(path)[:16]
        else:
            self._weights_id = f"tag:{checkpoint}"
        if arch not in open_clip.list_models():
            raise InputError(f"unknown open_clip architecture {arch!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=checkpoint, device=self.device)
        except Exception as exc:  # noqa: BLE001 - open_clip raises many kinds for bad checkpoints
            raise InputError(f"cannot load open_clip {arch} from {checkpoint}: {str(exc).splitlines()[0]}") from None
        model.eval()
        self._model = model
        self._preprocess = preprocess
        self._torch = torch
        self.batch_size = batch_size

    def feature_fingerprint(self) -> str:
        return f"openclip:{self.arch}:{self._weights_id}"

    def _encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from PIL import Image

        torch = self._torch
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            pil = [Image.fromarray((np.clip(im, 0, 1) * 255 + 0.5).astype(np.uint8)) for im in chunk]
            x = torch.stack([self._preprocess(p) for p in pil]).to(self.device)
            with torch.no_grad():
                out.append(self._model.encode_image(x).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)
