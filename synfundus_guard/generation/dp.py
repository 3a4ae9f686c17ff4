"""Differentially private training through Opacus (DP-SGD with Poisson sampling, RDP accounting).

Opacus' ``make_private_with_epsilon`` derives the noise multiplier from a whole number of *epochs*; training
here is measured in *steps*, so the noise multiplier is derived with Opacus' own
``get_noise_multiplier(..., steps=steps)`` for exactly the planned steps and handed to ``make_private`` (the
same computation without rounding the step count to epochs). The ε recorded in the card is read back from the
engine's accountant after the achieved steps.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from opacus import PrivacyEngine
from opacus.accountants.utils import get_noise_multiplier
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from ..errors import InputError, ModelError
from .card import DPRecord

ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings. Give exactly one of ``target_epsilon`` and ``noise_multiplier``."""

    target_epsilon: float | None = 8.0
    """ε to reach after the planned steps; the noise multiplier is derived from it."""
    noise_multiplier: float | None = None
    """Noise standard deviation relative to ``max_grad_norm``; ε then follows from the steps."""
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    """Per-sample gradient clipping bound."""

    def validate(self) -> None:
        """Raise :class:`InputError` listing every unusable setting."""
        problems = []
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            problems.append("give exactly one of a target epsilon and a noise multiplier")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            problems.append(f"target epsilon must be > 0, got {self.target_epsilon}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            problems.append(f"noise multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            problems.append(f"delta must be in (0, 1), got {self.delta}")
        if not self.max_grad_norm > 0:
            problems.append(f"max grad norm must be > 0, got {self.max_grad_norm}")
        if problems:
            raise InputError("invalid DP settings: " + "; ".join(problems))


@dataclass
class DPTraining:
    """The objects Opacus hands back, and the parameters the accountant uses."""

    engine: PrivacyEngine
    module: torch.nn.Module
    """The ``GradSampleModule`` to call for training (wraps the original UNet)."""
    optimizer: Any
    """Opacus ``DPOptimizer``: clips per-sample gradients and adds noise on ``step``."""
    sampler: UniformWithReplacementSampler
    """Poisson sampler over dataset indices (each image joins a step with probability ``sample_rate``)."""
    noise_multiplier: float
    sample_rate: float
    config: DPConfig

    def epsilon(self) -> float:
        """ε spent so far, for ``config.delta``, from the engine's accountant."""
        return float(self.engine.accountant.get_epsilon(delta=self.config.delta))

    def record(self, steps: int) -> DPRecord:
        """The card entry after ``steps`` steps."""
        return DPRecord(epsilon=self.epsilon(), delta=self.config.delta, noise_multiplier=self.noise_multiplier,
                        max_grad_norm=self.config.max_grad_norm, sample_rate=self.sample_rate, steps=steps,
                        accountant=ACCOUNTANT, target_epsilon=self.config.target_epsilon)


@contextmanager
def quiet_opacus() -> Iterator[None]:
    """Silence Opacus/torch warnings that are expected here (seeded RNG on purpose, hooks on input layers)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Using a non-full backward hook")
        yield


def make_private(*, module: torch.nn.Module, optimizer: torch.optim.Optimizer, dataset_size: int,
                 batch_size: int, steps: int, config: DPConfig, generator: torch.Generator) -> DPTraining:
    """Wrap model and optimizer with Opacus for ``steps`` DP-SGD steps at expected batch size ``batch_size``.

    Raises :class:`ModelError` when Opacus' validator finds layers it cannot train privately, and
    :class:`InputError` when no noise level reaches the target ε.
    """
    config.validate()
    errors = ModuleValidator.validate(module, strict=False)
    if errors:
        raise ModelError("model cannot be trained with DP: " + "; ".join(str(e).splitlines()[0] for e in errors))
    # Opacus only uses the loader for its length (sample rate) and dataset size; batches are drawn by index.
    loader = DataLoader(TensorDataset(torch.arange(dataset_size)), batch_size=batch_size)
    sample_rate = 1.0 / len(loader)
    if config.noise_multiplier is not None:
        sigma = float(config.noise_multiplier)
    else:
        try:
            sigma = float(get_noise_multiplier(target_epsilon=config.target_epsilon, target_delta=config.delta,
                                               sample_rate=sample_rate, steps=steps, accountant=ACCOUNTANT))
        except ValueError as exc:
            raise InputError(f"cannot reach target epsilon {config.target_epsilon}: {exc}") from None
    with quiet_opacus():
        engine = PrivacyEngine(accountant=ACCOUNTANT)
        dp_module, dp_optimizer, dp_loader = engine.make_private(
            module=module, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=config.max_grad_norm, poisson_sampling=True, noise_generator=generator,
        )
    sampler = dp_loader.batch_sampler
    assert isinstance(sampler, UniformWithReplacementSampler)
    sampler.generator = generator  # Poisson draws from the run's seeded generator: resumable, reproducible
    return DPTraining(engine=engine, module=dp_module, optimizer=dp_optimizer, sampler=sampler,
                      noise_multiplier=sigma, sample_rate=sample_rate, config=config)


def draw_batch(sampler: UniformWithReplacementSampler) -> list[int]:
    """One Poisson-sampled batch of indices (may be empty)."""
    return next(iter(sampler))
