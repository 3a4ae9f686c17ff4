"""One training step at a time: the UNet, its EMA weights, the optimizer (plain AdamW or Opacus DP-SGD).

Every random draw (initial weights, batch, noise, timestep, DP noise, Poisson sampling) comes from one seeded
generator, so :meth:`Trainer.state_dict` is enough to continue a run bit for bit. The model predicts *v*
(see :func:`~synfundus_guard.generation.model.training_scheduler`) and the saved weights are an exponential
moving average of the iterates (for DP training, a post-processing that costs no privacy).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .data import to_unit_range
from .dp import DPConfig, DPTraining, draw_batch, make_private
from .model import build_unet, training_scheduler

EMA_DECAY = 0.999
"""Decay of the exponential moving average of the weights that is saved (warmed up over the first steps)."""


class Trainer:
    """Model, EMA weights, optimizer (plain or Opacus DP-SGD) and the run's generator; one step at a time."""

    def __init__(self, *, images: torch.Tensor, classes: torch.Tensor | None, num_classes: int | None,
                 resolution: int, channels: Sequence[int], layers_per_block: int, batch_size: int, lr: float,
                 seed: int, steps: int, dp: DPConfig | None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.images, self.batch_size = images.to(self.device), batch_size
        self.classes = classes.to(self.device) if classes is not None else None
        self.g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet = build_unet(resolution=resolution, block_out_channels=channels, num_classes=num_classes,
                                   layers_per_block=layers_per_block).to(self.device)
        self.ema = {k: v.detach().clone() for k, v in self.unet.state_dict().items()}
        self.scheduler = training_scheduler()
        self.v_prediction = self.scheduler.config.prediction_type == "v_prediction"
        self.base_optimizer = torch.optim.AdamW(self.unet.parameters(), lr=lr, weight_decay=0.0)
        self.private: DPTraining | None = None
        self.model, self.optimizer = self.unet, self.base_optimizer
        if dp is not None:
            self.private = make_private(module=self.unet, optimizer=self.base_optimizer, dataset_size=len(images),
                                        batch_size=batch_size, steps=steps, config=dp, generator=self.g)
            self.model, self.optimizer = self.private.module, self.private.optimizer
        self.running_loss: float | None = None
        self.unet.train()

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit (tensors on the CPU, whatever the device)."""
        return {"unet": _cpu(self.unet.state_dict()), "ema": _cpu(self.ema),
                "optimizer": _cpu(self.base_optimizer.state_dict()), "generator": self.g.get_state(),
                "loss": self.running_loss,
                "accountant": self.private.engine.accountant.state_dict() if self.private else None}

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint; returns the step to continue from.

        Raises ``ValueError`` (or torch's ``RuntimeError``) for a state that does not fit this model, before the
        first training step would trip over it.
        """
        self.unet.load_state_dict(state["unet"])
        self.ema = {k: v.to(self.device) for k, v in self._checked_ema(state["ema"]).items()}
        if not (state["loss"] is None or type(state["loss"]) is float):
            raise ValueError(f"running loss must be a number, got {type(state['loss']).__name__}")
        self.base_optimizer.load_state_dict(state["optimizer"])
        self.g.set_state(state["generator"])
        self.running_loss = state["loss"]
        if self.private is not None:
            self.private.engine.accountant.load_state_dict(state["accountant"])
        return int(state["step"])

    def _checked_ema(self, ema: Any) -> dict[str, torch.Tensor]:
        """``ema`` when it holds a tensor of the model's shape and dtype for every weight, else ``ValueError``."""
        own = self.unet.state_dict()
        if not isinstance(ema, dict) or set(ema) != set(own):
            raise ValueError("EMA weights do not name the model's parameters")
        for key, value in own.items():
            theirs = ema[key]
            if not isinstance(theirs, torch.Tensor) or theirs.shape != value.shape or theirs.dtype != value.dtype:
                raise ValueError(f"EMA weight {key} does not match the model")
        return ema

    def ema_unet(self) -> torch.nn.Module:
        """The UNet carrying the EMA weights (what is saved), on the CPU."""
        self.unet.load_state_dict(self.ema)
        return self.unet.to("cpu")

    def _indices(self) -> torch.Tensor:
        if self.private is not None:
            return torch.tensor(draw_batch(self.private.sampler), dtype=torch.long, device=self.device)
        n = len(self.images)
        if self.batch_size <= n:
            return torch.randperm(n, generator=self.g)[: self.batch_size].to(self.device)
        # tiny sets: draw with replacement
        return torch.randint(0, n, (self.batch_size,), generator=self.g).to(self.device)

    def step(self, step: int) -> None:
        """One denoising-score-matching step, then the EMA update."""
        idx = self._indices()
        empty = len(idx) == 0
        if empty:
            # An empty Poisson batch still takes a DP step (zero gradient + noise). The UNet cannot run on zero
            # images, so run one dummy image whose loss is multiplied by 0: its clipped gradient is exactly 0.
            idx = torch.zeros(1, dtype=torch.long, device=self.device)
        x0 = to_unit_range(self.images[idx])
        # every draw comes from the one CPU generator, so a run's randomness is the same on every device
        noise = torch.randn(x0.shape, generator=self.g).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(idx),), generator=self.g).to(self.device)
        labels = self.classes[idx] if self.classes is not None else None
        pred = self.model(self.scheduler.add_noise(x0, noise, t), t, class_labels=labels).sample
        target = self.scheduler.get_velocity(x0, noise, t) if self.v_prediction else noise
        loss = F.mse_loss(pred, target)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * 0.0 if empty else loss).backward()
        self.optimizer.step()
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():  # one fused update of every weight (the same arithmetic as per-tensor mul_/add_)
            current = self.unet.state_dict()
            ema = [self.ema[k] for k in current]
            torch._foreach_mul_(ema, decay)
            torch._foreach_add_(ema, [v.detach() for v in current.values()], alpha=1 - decay)
        if not empty:
            value = float(loss.detach())
            self.running_loss = value if self.running_loss is None else 0.98 * self.running_loss + 0.02 * value


def _cpu(state: Any) -> Any:
    """``state`` (nested dicts, lists and tensors) with every tensor copied to the CPU, for a portable checkpoint."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu")
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu(v) for v in state)
    return state
