"""``guard train``: train a small diffusion model (optionally class-conditional, optionally with Opacus DP)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import fail_usage, guarded
from .progress import RichProgressObserver


def _csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _channels(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _csv_list(value))
    except ValueError:
        raise fail_usage(f"--channels must be comma-separated integers, got {value!r}") from None


@guarded
def train(
    train_dir: Path = typer.Argument(..., help="Folder of training images (+ labels.csv with patient_id)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (private: its card names training files)."),
    steps: int = typer.Option(4000, help="Optimizer steps."),
    resolution: int = typer.Option(32, help="Image side in pixels (centre-cropped, resized)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Batch size (expected batch size with --dp)."),
    lr: float = typer.Option(5e-4, "--lr", help="AdamW learning rate."),
    seed: int = typer.Option(0, help="Seed of the split, the weights and every random draw in training."),
    holdout_fraction: float = typer.Option(0.2, "--holdout-fraction", help="Fraction of patients held out."),
    channels: str = typer.Option("32,64,64", help="UNet block widths, comma-separated."),
    condition_on: Optional[str] = typer.Option(None, "--condition-on", help="Label columns, e.g. dr_grade,amd."),
    dp: bool = typer.Option(False, "--dp", help="Train with differential privacy (Opacus DP-SGD)."),
    target_epsilon: Optional[float] = typer.Option(None, "--target-epsilon",
                                                   help="With --dp: ε to reach (default 8)."),
    noise_multiplier: Optional[float] = typer.Option(None, "--noise-multiplier",
                                                     help="With --dp: fixed noise instead."),
    delta: float = typer.Option(1e-5, help="With --dp: δ."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="With --dp: per-sample clipping bound."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Steps between resumable checkpoints."),
    device: str = typer.Option("cpu", "--device", help="Where the steps run: cpu, cuda or auto (cuda when torch "
                                                       "sees a GPU)."),
) -> None:
    """Train a model; re-running the same command resumes from the last checkpoint."""
    from ..generation.dp import DPConfig
    from ..generation.model import resolve_device
    from ..generation.train import train_model, validate_settings

    if not dp and (target_epsilon is not None or noise_multiplier is not None):
        raise fail_usage("--target-epsilon and --noise-multiplier need --dp")
    if target_epsilon is not None and noise_multiplier is not None:
        raise fail_usage("give --target-epsilon or --noise-multiplier, not both")
    dp_config = None
    if dp:
        dp_config = DPConfig(target_epsilon=None if noise_multiplier is not None else (target_epsilon or 8.0),
                             noise_multiplier=noise_multiplier, delta=delta, max_grad_norm=max_grad_norm)
    settings = dict(steps=steps, resolution=resolution, batch_size=batch_size, lr=lr, seed=seed,
                    holdout_fraction=holdout_fraction, channels=_channels(channels), checkpoint_every=checkpoint_every)
    validate_settings(dp=dp_config, **settings)  # before the progress display opens: one clean error line
    resolve_device(device)
    with RichProgressObserver() as progress:
        result = train_model(train_dir=train_dir, out_dir=out, condition_on=_csv_list(condition_on), dp=dp_config,
                             device=device, progress=progress, **settings)
    card = result.card
    if result.steps_run == 0:
        typer.echo(f"{out}: already trained ({card.steps} steps); nothing to do")
    else:
        resumed = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
        typer.echo(f"trained {card.steps} steps{resumed} on {len(card.data.train_files)} images "
                   f"({len(card.data.holdout_files)} held out) at {result.steps_per_second:.2f} steps/s")
    if card.dp is not None:
        typer.echo(f"differential privacy: epsilon {card.dp.epsilon:.3f} at delta {card.dp.delta:g} "
                   f"(noise multiplier {card.dp.noise_multiplier:.4g}, clip {card.dp.max_grad_norm:g})")
    typer.echo(f"model: {out}")


def register(app: typer.Typer) -> None:
    """Add ``guard train`` to the app."""
    app.command("train")(train)
