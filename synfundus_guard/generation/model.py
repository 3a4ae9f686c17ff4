"""Building, saving and loading diffusion models as plain diffusers folders.

A model folder written by :func:`save_model` holds ``unet/`` and ``scheduler/`` (``save_pretrained``), a
``model_index.json`` for unconditional models (so ``DDPMPipeline``/``DDIMPipeline.from_pretrained`` work),
and ``training_card.json``. :func:`load_model` also accepts a pipeline folder trained elsewhere
(``model_index.json`` naming a ``UNet2DModel`` and a scheduler); it then has no card.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from ..errors import InputError, ModelError
from ..fsutil import atomic_write_json, sha256_bytes, sha256_file
from ..safeload import read_json
from .card import TrainingCard, read_card
from .conditioning import MAX_CLASSES, Conditioning

MODEL_INDEX = "model_index.json"
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
"""The built-in model for phantom fundus data (see :mod:`synfundus_guard.generation.default`)."""
MAX_CONFIG_BYTES = 64 * 1024 * 1024
"""Largest JSON file of a model folder read (a card naming 10^5 training files is ~10 MB)."""
MAX_TRAIN_TIMESTEPS = 100_000
"""Most noise levels a scheduler may have (diffusers models use 1000; each costs memory in every schedule)."""
MAX_SAMPLE_SIZE = 1024
MAX_LEVELS, MAX_WIDTH, MAX_LAYERS_PER_BLOCK = 8, 4096, 8
"""Bounds on an untrusted UNet config, checked before ``from_pretrained`` allocates its weights."""
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
"""Noise schedules DDIM sampling supports."""
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


DEVICES = ("auto", "cpu", "cuda")
"""What ``--device`` takes: ``auto`` is the GPU when torch sees one, else the CPU."""


def resolve_device(name: str | None) -> torch.device:
    """The torch device for ``--device NAME``; :class:`InputError` for an unknown name or a missing GPU."""
    choice = (name or "auto").strip().lower()
    if choice not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA GPU on this machine (use --device cpu)")
    return torch.device(choice)


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

    @property
    def device(self) -> torch.device:
        """Where the UNet runs (``load_model``'s ``device``)."""
        return next(self.unet.parameters()).device

    def public_info(self) -> dict[str, Any]:
        """Model facts for a manifest or report (``release_checks["model"]``): no training file names."""
        info: dict[str, Any] = {"fingerprint": self.fingerprint, "trained_by": "synfundus-guard" if self.card
                                else "external", "dp": False, "epsilon": None, "delta": None}
        if self.card is not None:
            info.update(self.card.public_summary())
        return info


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A model folder's JSON file, read with :mod:`~synfundus_guard.safeload`'s size and nesting bounds."""
    try:
        return read_json(path, error=ModelError, expect=dict, max_bytes=MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ModelError(f"{path}: missing {what}") from None


def _int_problem(cfg: dict[str, Any], key: str, low: int, high: int) -> str | None:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"{key} must be an integer in [{low}, {high}], got {value!r}"
    return None


def _unit_problem(value: Any, key: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        return f"{key} must be a number in (0, 1), got {value!r}"
    return None


def _scheduler_problems(cfg: dict[str, Any]) -> list[str]:
    """Why a scheduler config cannot drive sampling (empty when it can), checked before diffusers sees it.

    A negative or huge ``num_train_timesteps`` otherwise fails deep inside sampling or allocates without bound.
    """
    problems = [_int_problem(cfg, "num_train_timesteps", 1, MAX_TRAIN_TIMESTEPS)]
    if cfg.get("beta_schedule", "linear") not in BETA_SCHEDULES:
        problems.append(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {cfg.get('beta_schedule')!r}")
    if cfg.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        problems.append(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                        f"got {cfg.get('prediction_type')!r}")
    problems += [_unit_problem(cfg[k], k) for k in ("beta_start", "beta_end") if k in cfg]
    if "steps_offset" in cfg:
        problems.append(_int_problem(cfg, "steps_offset", 0, MAX_TRAIN_TIMESTEPS))
    betas = cfg.get("trained_betas")
    if betas is not None and (not isinstance(betas, (list, tuple)) or len(betas) != cfg.get("num_train_timesteps")
                              or any(_unit_problem(b, "beta") for b in betas)):
        problems.append("trained_betas must be null or num_train_timesteps numbers in (0, 1)")
    return [p for p in problems if p]


def _unet_problems(cfg: dict[str, Any]) -> list[str]:
    """Why a UNet config is not one the sampler can use or afford (checked before any weight is allocated)."""
    problems = [f"{key} must be 3 (RGB images), got {cfg.get(key)!r}" for key in ("in_channels", "out_channels")
                if type(cfg.get(key)) is not int or cfg.get(key) != 3]
    size = cfg.get("sample_size")
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:  # square sizes may be given as a pair
        size = size[0]
    problems.append(_int_problem({"sample_size": size}, "sample_size", 8, MAX_SAMPLE_SIZE))
    problems.append(_int_problem(cfg, "layers_per_block", 1, MAX_LAYERS_PER_BLOCK))
    widths = cfg.get("block_out_channels")
    if not isinstance(widths, (list, tuple)) or not 1 <= len(widths) <= MAX_LEVELS \
            or any(_int_problem({"width": w}, "width", 1, MAX_WIDTH) for w in widths):
        problems.append(f"block_out_channels must list 1 to {MAX_LEVELS} integers in [1, {MAX_WIDTH}]")
    if cfg.get("num_class_embeds") is not None:
        problems.append(_int_problem(cfg, "num_class_embeds", 1, MAX_CLASSES))
    return [p for p in problems if p]


def _with_defaults(cls: type, cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` over the defaults of ``cls.__init__``: what diffusers itself fills in for keys a config omits."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {**{p.name: p.default for p in params if p.default is not p.empty}, **cfg}


def _checked_configs(model_dir: Path) -> dict[str, Any]:
    """The scheduler config, after both configs passed their checks. Raises :class:`ModelError` listing all."""
    unet_cfg = _read_json(model_dir / "unet" / "config.json", "unet config")
    sched_cfg = _read_json(model_dir / "scheduler" / "scheduler_config.json", "scheduler config")
    problems = [f"unet/config.json: {p}" for p in _unet_problems(_with_defaults(UNet2DModel, unet_cfg))]
    problems += [f"scheduler/scheduler_config.json: {p}"
                 for p in _scheduler_problems(_with_defaults(DDIMScheduler, sched_cfg))]
    if problems:
        raise ModelError(f"{model_dir}: cannot load the diffusers model (unusable config: {'; '.join(problems)})")
    return sched_cfg


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


def load_model(model_dir: Path, *, device: str | None = "cpu") -> LoadedModel:
    """Load a model folder for sampling (eval mode, no gradients) on ``device`` (see :func:`resolve_device`).

    Raises :class:`ModelError` for a missing folder, a folder that is not a diffusers ``UNet2DModel``
    pipeline, or unreadable weights.
    """
    model_dir = Path(model_dir)
    where = resolve_device(device)
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
    sched_cfg = _checked_configs(model_dir)
    # diffusers logs (not raises) on some config mismatches; keep the terminal clean and fail on real errors.
    dlog = logging.getLogger("diffusers")
    level = dlog.level
    dlog.setLevel(logging.ERROR)
    try:
        unet = UNet2DModel.from_pretrained(model_dir / "unet")
        scheduler = sampling_scheduler(sched_cfg)
    except Exception as exc:  # noqa: BLE001 - the folder is untrusted input: any failure to load it is a ModelError
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{model_dir}: cannot load the diffusers model ({first})") from None
    finally:
        dlog.setLevel(level)
    unet.eval().requires_grad_(False).to(where)
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
