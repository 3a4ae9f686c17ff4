"""Building, saving and loading diffusion models as plain diffusers folders.

A model folder written by :func:`save_model` holds ``unet/`` and ``scheduler/`` (``save_pretrained``), a
``model_index.json`` for unconditional models (so ``DDPMPipeline``/``DDIMPipeline.from_pretrained`` work),
and ``training_card.json``. :func:`load_model` also accepts a pipeline folder trained elsewhere
(``model_index.json`` naming a ``UNet2DModel`` and a scheduler); it then has no card.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from ..errors import ModelError
from ..fsutil import atomic_write_json, sha256_bytes, sha256_file
from .card import TrainingCard, read_card
from .conditioning import Conditioning

MODEL_INDEX = "model_index.json"
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
"""The built-in model for phantom fundus data (see :mod:`synfundus_guard.generation.default`)."""


def build_unet(*, resolution: int, block_out_channels: Sequence[int], num_classes: int | None = None,
               layers_per_block: int = 1) -> UNet2DModel:
    """A small ``UNet2DModel``: self-attention at the lowest resolution only, class table when conditional."""
    levels = len(block_out_channels)
    down = ["DownBlock2D"] * (levels - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (levels - 1)
    groups = min(32, *block_out_channels)
    return UNet2DModel(
        sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=layers_per_block,
        block_out_channels=tuple(block_out_channels), down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=groups, attention_head_dim=min(32, block_out_channels[-1]),
        num_class_embeds=num_classes,
    )


def training_scheduler() -> DDPMScheduler:
    """The noise schedule every model is trained with.

    Cosine schedule (better than linear at small resolutions) with v-prediction: with epsilon-prediction the
    image estimate at the noisiest steps divides the model's error by sqrt(alpha_bar) ~ 1e-4, and small models
    then get the overall colour of the image wrong; v-prediction keeps that estimate bounded.
    """
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                         clip_sample=True)


def sampling_scheduler(config: Any) -> DDIMScheduler:
    """DDIM (deterministic with eta=0) from a DDPM-family scheduler config; trailing spacing for few steps."""
    return DDIMScheduler.from_config(config, timestep_spacing="trailing")


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the sorted ``(relative path, sha256)`` of every file under ``unet/`` and ``scheduler/``.

    Weights and configs both count: the same weights under another noise schedule make other images.
    """
    model_dir = Path(model_dir)
    pairs = sorted(
        (p.relative_to(model_dir).as_posix(), sha256_file(p))
        for sub in ("unet", "scheduler") if (model_dir / sub).is_dir()
        for p in (model_dir / sub).rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    return sha256_bytes(json.dumps(pairs, separators=(",", ":")).encode("utf-8"))


def save_model(unet: UNet2DModel, scheduler: DDPMScheduler, out_dir: Path, *, conditional: bool) -> None:
    """Write ``unet/`` and ``scheduler/`` with ``save_pretrained`` (+ ``model_index.json`` if unconditional)."""
    import diffusers

    out_dir = Path(out_dir)
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    scheduler.save_pretrained(out_dir / "scheduler")
    if not conditional:
        atomic_write_json(out_dir / MODEL_INDEX, {
            "_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", type(scheduler).__name__],
        })


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for sampling."""

    path: Path
    unet: UNet2DModel
    scheduler: DDIMScheduler
    fingerprint: str
    """:func:`model_fingerprint` of the folder."""
    card: TrainingCard | None
    """None for a pipeline trained elsewhere."""
    conditioning: Conditioning | None

    @property
    def resolution(self) -> int:
        """Side of the square images the model makes."""
        size = self.unet.config.sample_size
        return int(size if isinstance(size, int) else size[0])

    def public_info(self) -> dict[str, Any]:
        """Model facts for a manifest or report (``release_checks["model"]``): no training file names."""
        info: dict[str, Any] = {"fingerprint": self.fingerprint, "trained_by": "synfundus-guard" if self.card
                                else "external", "dp": False, "epsilon": None, "delta": None}
        if self.card is not None:
            info.update(self.card.public_summary())
        return info


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: malformed {what}")
    return data


def _check_pipeline_index(model_dir: Path) -> None:
    index = _read_json(model_dir / MODEL_INDEX, "model_index.json")
    missing = [k for k in ("unet", "scheduler") if k not in index]
    if missing:
        raise ModelError(f"{model_dir}: pipeline has no {' and no '.join(missing)} component; "
                         "a UNet2DModel pipeline (DDPM/DDIM) is needed")
    unet_cls = index["unet"][1] if isinstance(index["unet"], list) and len(index["unet"]) == 2 else index["unet"]
    if unet_cls != "UNet2DModel":
        raise ModelError(f"{model_dir}: the pipeline's unet is {unet_cls}; only UNet2DModel pipelines "
                         "(unconditional or class-conditional DDPM/DDIM) are supported")


def load_model(model_dir: Path) -> LoadedModel:
    """Load a model folder for sampling (CPU, eval mode, no gradients).

    Raises :class:`ModelError` for a missing folder, a folder that is not a diffusers ``UNet2DModel``
    pipeline, or unreadable weights.
    """
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise ModelError(f"model folder not found: {model_dir}")
    if not model_dir.is_dir():
        raise ModelError(f"not a model folder: {model_dir}")
    card = read_card(model_dir)
    if card is None:
        if not (model_dir / MODEL_INDEX).is_file():
            raise ModelError(f"not a diffusers model folder (no model_index.json or training card): {model_dir}")
        _check_pipeline_index(model_dir)
    for sub, name in (("unet", "config.json"), ("scheduler", "scheduler_config.json")):
        if not (model_dir / sub / name).is_file():
            raise ModelError(f"{model_dir}: missing {sub}/{name}; not a complete diffusers model folder")
    sched_cfg = _read_json(model_dir / "scheduler" / "scheduler_config.json", "scheduler config")
    # diffusers logs (not raises) on some config mismatches; keep the terminal clean and fail on real errors.
    dlog = logging.getLogger("diffusers")
    level = dlog.level
    dlog.setLevel(logging.ERROR)
    try:
        unet = UNet2DModel.from_pretrained(model_dir / "unet")
        scheduler = sampling_scheduler(sched_cfg)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{model_dir}: cannot load the diffusers model ({first})") from None
    finally:
        dlog.setLevel(level)
    unet.eval().requires_grad_(False)
    conditioning = None
    if card is not None and card.conditioning:
        conditioning = Conditioning.from_dict(card.conditioning)
        if unet.config.num_class_embeds != conditioning.num_classes:
            raise ModelError(f"{model_dir}: the training card's {conditioning.num_classes} label classes do not "
                             f"match the model's {unet.config.num_class_embeds}")
    elif unet.config.num_class_embeds is not None or unet.config.class_embed_type is not None:
        raise ModelError(f"{model_dir}: class-conditional model without a synfundus-guard training card; "
                         "its label classes are unknown")
    return LoadedModel(path=model_dir, unet=unet, scheduler=scheduler, fingerprint=model_fingerprint(model_dir),
                       card=card, conditioning=conditioning)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
