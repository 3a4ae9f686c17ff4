"""Training a small diffusion model on an image folder (optionally class-conditional, optionally with DP).

The patient-disjoint holdout split is made *before* training and recorded in the training card, so audits can
calibrate on other patients and run membership tests against images the model never saw. All randomness of a
run (initial weights, batches, noise, timesteps, DP noise and Poisson sampling) comes from one generator
seeded by ``seed``; a checkpoint stores it with the weights and optimizer state, so a run killed at any point
and re-run with the same arguments resumes and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.folder import ImageRecord, scan_folder
from ..errors import InputError
from ..fsutil import atomic_write_bytes, atomic_write_json, sha256_bytes
from ..progress import NULL_PROGRESS, Progress
from .card import CARD_FILE, DataSplit, DPRecord, TrainingCard, data_fingerprint
from .conditioning import Conditioning
from .data import load_images, split_records
from .dp import DPConfig, quiet_opacus
from .card import read_card
from .model import count_parameters, resolve_device, save_model, training_scheduler
from .trainer import EMA_DECAY, Trainer

CHECKPOINT = Path("checkpoint") / "last.pt"
OBJECTIVE_KEYS = ("num_train_timesteps", "beta_schedule", "prediction_type")
"""Scheduler settings that define the training objective; a checkpoint of another objective is not resumed."""
MAX_STEPS = 1_000_000
"""Most optimizer steps accepted (the default model takes 4000; a million is days of CPU time)."""
MAX_BATCH_SIZE = 4096
MAX_LR = 1.0
MAX_LEVELS = 6
"""Most UNet levels (block widths); each halves the resolution."""
MIN_WIDTH, MAX_WIDTH = 8, 1024
"""Range of one block width (1024 channels at 512 px are ~3e8 activations per image and layer)."""
MAX_SEED = 2**63 - 1
MAX_LAYERS_PER_BLOCK = 4


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_model`."""

    model_dir: Path
    card: TrainingCard
    steps_run: int
    """Steps performed by this call (0 when the folder already held the finished model)."""
    resumed_from: int
    """Step the run resumed from (0 for a fresh run)."""
    seconds: float
    """Wall time of the training loop in this call."""
    final_loss: float | None
    """Running mean of the denoising loss at the end (None when no step ran)."""
    parameters: int

    @property
    def steps_per_second(self) -> float:
        """Training speed of this call."""
        return self.steps_run / self.seconds if self.seconds > 0 else 0.0

    @property
    def epsilon(self) -> float | None:
        """ε spent (DP runs only)."""
        return self.card.dp.epsilon if self.card.dp else None


def _int_problem(name: str, value: Any, low: int, high: int) -> str | None:
    """A message when ``value`` is not an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"{name} must be an integer in [{low}, {high}], got {value!r}"
    return None


def _channel_problems(channels: Sequence[int], resolution: int) -> list[str]:
    """Why a UNet of these widths at this resolution cannot be built (empty when it can)."""
    widths = tuple(channels)
    if not 1 <= len(widths) <= MAX_LEVELS:
        return [f"channels must list 1 to {MAX_LEVELS} block widths, got {len(widths)}"]
    if any(isinstance(c, bool) or not isinstance(c, int) or not MIN_WIDTH <= c <= MAX_WIDTH or c % 8 for c in widths):
        return [f"channels must be multiples of 8 in [{MIN_WIDTH}, {MAX_WIDTH}], got {widths}"]
    problems = []
    groups = min(32, *widths)  # build_unet's GroupNorm groups: every width must split into them
    if any(c % groups for c in widths):
        problems.append(f"channels must all be multiples of {groups} (the group-norm groups), got {widths}")
    factor = 2 ** (len(widths) - 1)
    if _int_problem("resolution", resolution, 8, 512) or resolution % factor or resolution // factor < 2:
        problems.append(f"resolution must be in [8, 512], divisible by {factor} and at least {2 * factor} for "
                        f"{len(widths)} levels, got {resolution!r}")
    return problems


def validate_settings(*, steps: int, resolution: int, batch_size: int, lr: float, holdout_fraction: float,
                      channels: Sequence[int], checkpoint_every: int, seed: int, layers_per_block: int = 1,
                      dp: DPConfig | None = None) -> None:
    """Refuse every out-of-range setting at once, before any data is read or memory allocated.

    :func:`train_model` calls it first; the CLI calls it too, before it opens its progress display. Raises
    :class:`InputError` listing every problem.
    """
    checks = [("steps", steps, 1, MAX_STEPS), ("batch size", batch_size, 1, MAX_BATCH_SIZE),
              ("checkpoint interval", checkpoint_every, 1, MAX_STEPS), ("seed", seed, 0, MAX_SEED),
              ("layers per block", layers_per_block, 1, MAX_LAYERS_PER_BLOCK)]
    problems = [p for name, value, low, high in checks if (p := _int_problem(name, value, low, high))]
    if not (isinstance(lr, (int, float)) and 0 < lr <= MAX_LR):
        problems.append(f"learning rate must be in (0, {MAX_LR:g}], got {lr!r}")
    if not (isinstance(holdout_fraction, (int, float)) and 0 < holdout_fraction < 1):
        problems.append(f"holdout fraction must be in (0, 1), got {holdout_fraction!r}")
    problems += _channel_problems(channels, resolution)
    if problems:
        raise InputError("; ".join(problems))
    if dp is not None:
        _validate_dp(dp)


def _validate_dp(dp: DPConfig) -> None:
    """DPConfig's own checks, plus finiteness: an infinite ε or noise multiplier is not a DP setting."""
    dp.validate()
    values = (dp.target_epsilon, dp.noise_multiplier, dp.delta, dp.max_grad_norm)
    if any(v is not None and not math.isfinite(v) for v in values):
        raise InputError("invalid DP settings: epsilon, noise multiplier, delta and max grad norm must be finite")


def _prepare_out_dir(out_dir: Path, run_key: str) -> TrainingCard | None:
    """Returns the finished card when ``out_dir`` already holds this run's model; refuses foreign content."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a folder")
    card = read_card(out_dir) if out_dir.is_dir() else None
    if card is not None:
        if card.run_key == run_key:
            return card
        raise InputError(f"{out_dir} already holds a model trained with other arguments or data; "
                         "choose another --out")
    ckpt = out_dir / CHECKPOINT
    if out_dir.is_dir() and not ckpt.is_file() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir} is not empty and holds no training run; choose an empty or new --out")
    return None


_CHECKPOINT_FIELDS: dict[str, type] = {"run_key": str, "step": int, "unet": dict, "ema": dict, "optimizer": dict,
                                       "generator": torch.Tensor}
"""What :meth:`Trainer.state_dict` plus the run's key and step look like; anything else is not our checkpoint."""


def _checked_checkpoint(state: Any, path: Path, run_key: str, steps: int) -> dict[str, Any]:
    """``state`` when it is a checkpoint of this run; :class:`InputError` saying what is wrong otherwise."""
    start_over = "delete it to start over"
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a training checkpoint (holds a {type(state).__name__}); {start_over}")
    bad = [k for k, typ in _CHECKPOINT_FIELDS.items()
           if isinstance(state.get(k), bool) or not isinstance(state.get(k), typ)]
    if bad:
        raise InputError(f"{path}: not a training checkpoint (missing or malformed: {', '.join(bad)}); {start_over}")
    if state["run_key"] != run_key:
        raise InputError(f"{path.parent.parent} holds a checkpoint of a run with other arguments or data; "
                         "choose another --out")
    if not 0 <= state["step"] <= steps:
        raise InputError(f"{path}: checkpoint at step {state['step']} of a {steps}-step run; {start_over}")
    return state


def _load_checkpoint(path: Path, run_key: str, steps: int) -> dict[str, Any] | None:
    """The checkpoint of this run at ``path``, None when there is none. Raises :class:`InputError` otherwise."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is an input problem
        raise InputError(f"{path}: unreadable checkpoint ({type(exc).__name__}); delete it to start over") from None
    return _checked_checkpoint(state, path, run_key, steps)


def _resume(trainer: Trainer, state: dict[str, Any], path: Path) -> int:
    """Load ``state`` into ``trainer``; returns the step to continue from. A state that does not fit the model
    (tensors of other shapes, a broken optimizer or generator state) is an :class:`InputError`, not a crash."""
    try:
        return trainer.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InputError(f"{path}: checkpoint does not fit this model ({why}); delete it to start over") from None


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint owner-only (0600) in an owner-only folder (0700): it is the model before release."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # also a folder left by an older version with the default mode
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue(), private=True)


def _write_private_card(out_dir: Path, card: TrainingCard) -> None:
    """Write the training card owner-only (0600): it names every training and holdout file."""
    atomic_write_json(out_dir / CARD_FILE, card.to_dict(), private=True)


@dataclass(frozen=True)
class _Plan:
    """What a run trains on, decided before any weight exists: the split, the labels and the run's identity."""

    train: list[ImageRecord]
    holdout: list[ImageRecord]
    cond: Conditioning | None
    fingerprint: str
    run_key: str


def _plan(train_dir: Path, *, holdout_fraction: float, seed: int, condition_on: Sequence[str],
          settings: dict[str, Any]) -> _Plan:
    records = scan_folder(train_dir)
    train, holdout = split_records(records, holdout_fraction=holdout_fraction, seed=seed)
    cond = Conditioning.from_labels(condition_on, [r.labels for r in train]) if condition_on else None
    fingerprint = data_fingerprint([(r.file_name, r.path) for r in train])
    identity = dict(settings, condition_on=list(cond.columns) if cond else [], data=fingerprint,
                    holdout=[r.file_name for r in holdout], ema=EMA_DECAY,
                    objective={k: training_scheduler().config[k] for k in OBJECTIVE_KEYS})
    run_key = sha256_bytes(json.dumps(identity, sort_keys=True).encode("utf-8"))
    return _Plan(train=train, holdout=holdout, cond=cond, fingerprint=fingerprint, run_key=run_key)


def _card(plan: _Plan, train_dir: Path, *, steps: int, resolution: int, batch_size: int, lr: float, seed: int,
          channels: Sequence[int], holdout_fraction: float, dp: DPRecord | None) -> TrainingCard:
    return TrainingCard(
        resolution=resolution, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        block_out_channels=tuple(channels),
        data=DataSplit(train_dir=str(train_dir.resolve()), fingerprint=plan.fingerprint,
                       train_files=tuple(r.file_name for r in plan.train),
                       holdout_files=tuple(r.file_name for r in plan.holdout),
                       train_patients=len({r.patient_id for r in plan.train}),
                       holdout_patients=len({r.patient_id for r in plan.holdout}),
                       holdout_fraction=holdout_fraction, split_seed=seed),
        conditioning=plan.cond.to_dict() if plan.cond else None, dp=dp, run_key=plan.run_key,
    )


def train_model(*, train_dir: Path, out_dir: Path, steps: int = 4000, resolution: int = 32, batch_size: int = 16,
                lr: float = 5e-4, seed: int = 0, condition_on: Sequence[str] = (), dp: DPConfig | None = None,
                holdout_fraction: float = 0.2, channels: Sequence[int] = (32, 64, 64), layers_per_block: int = 1,
                checkpoint_every: int = 200, device: str | None = "cpu",
                progress: Progress = NULL_PROGRESS) -> TrainResult:
    """Train a DDPM on the images of ``train_dir`` and save it to ``out_dir`` as a diffusers folder + card.

    ``holdout_fraction`` of the *patients* are held out before training (never trained on) and listed in the
    card. Re-running with the same arguments resumes from the last checkpoint, or returns at once when the
    model is finished. ``device`` (``cpu``, ``cuda`` or ``auto``) is where the steps run; every random draw
    still comes from one CPU generator, so it is not part of the run's identity (a GPU run's weights differ
    from a CPU run's only by floating-point rounding). Raises :class:`InputError` for unusable arguments, data
    or output folders, or a device torch does not see.
    """
    validate_settings(steps=steps, resolution=resolution, batch_size=batch_size, lr=lr,
                      holdout_fraction=holdout_fraction, channels=channels, checkpoint_every=checkpoint_every,
                      seed=seed, layers_per_block=layers_per_block, dp=dp)
    where = resolve_device(device)
    train_dir, out_dir = Path(train_dir), Path(out_dir)
    settings = dict(steps=steps, resolution=resolution, batch_size=batch_size, lr=lr, seed=seed,
                    dp=asdict(dp) if dp else None, holdout_fraction=holdout_fraction, channels=list(channels),
                    layers_per_block=layers_per_block)
    plan = _plan(train_dir, holdout_fraction=holdout_fraction, seed=seed, condition_on=condition_on,
                 settings=settings)
    done = _prepare_out_dir(out_dir, plan.run_key)
    if done is not None:
        return TrainResult(model_dir=out_dir, card=done, steps_run=0, resumed_from=done.steps, seconds=0.0,
                           final_loss=None, parameters=0)

    ckpt_path = out_dir / CHECKPOINT
    state = _load_checkpoint(ckpt_path, plan.run_key, steps)  # a bad checkpoint fails before any heavy work
    images = load_images(plan.train, resolution, progress=progress)
    cond = plan.cond
    classes = torch.tensor([cond.class_index(r.labels) for r in plan.train]) if cond else None
    trainer = Trainer(images=images, classes=classes, num_classes=cond.num_classes if cond else None,
                       resolution=resolution, channels=channels, layers_per_block=layers_per_block,
                       batch_size=batch_size, lr=lr, seed=seed, steps=steps, dp=dp, device=where)
    start = _resume(trainer, state, ckpt_path) if state is not None else 0
    t0 = time.perf_counter()
    with progress.task("Training" + (" (DP)" if dp else ""), total=steps) as task, quiet_opacus():
        task.advance(start)
        for step in range(start, steps):
            trainer.step(step)
            task.advance()
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                _save_checkpoint(ckpt_path, {"run_key": plan.run_key, "step": step + 1, **trainer.state_dict()})
    seconds = time.perf_counter() - t0

    card = _card(plan, train_dir, steps=steps, resolution=resolution, batch_size=batch_size, lr=lr, seed=seed,
                 channels=channels, holdout_fraction=holdout_fraction,
                 dp=trainer.private.record(steps) if trainer.private else None)
    save_model(trainer.ema_unet(), trainer.scheduler, out_dir, conditional=cond is not None)
    _write_private_card(out_dir, card)  # written last: a folder with a card is a finished model
    shutil.rmtree(out_dir / CHECKPOINT.parent, ignore_errors=True)
    return TrainResult(model_dir=out_dir, card=card, steps_run=steps - start, resumed_from=start, seconds=seconds,
                       final_loss=trainer.running_loss, parameters=count_parameters(trainer.unet))


__all__ = ["TrainResult", "train_model", "validate_settings", "CARD_FILE"]
