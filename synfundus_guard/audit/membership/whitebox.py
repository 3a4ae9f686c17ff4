"""White-box membership attacks on a diffusers model (``UNet2DModel`` + its DDPM-family noise schedule).

The hospital holds the weights, so it can run the strongest published query attacks. Each attack gives one
score per image, higher meaning "more likely trained on":

* ``loss`` — the denoising loss / t-error (Matsumoto et al. 2023; Carlini et al. 2023): ``-|eps_theta(x_t, t) -
  eps|^2`` at one timestep, averaged over a few noise draws. The draws are seeded and shared by every image
  (common random numbers), so a score never depends on batching or on which other images are scored.
* ``pia`` — proximal initialisation (Kong et al. 2024): the model's own ``eps_theta(x0, 0)`` serves as the
  noise, ``x_t`` is built from it, and the score is ``-mean |eps_theta(x_t, t) - eps_theta(x0, 0)|^p`` (p = 4 as
  in the paper). Two queries per image, no randomness.
* ``secmi`` — SecMI's statistic (Duan et al. 2023): deterministic DDIM inversion of ``x0`` to ``t - k``, one more
  inversion step to ``t`` and one DDIM denoising step back to ``t - k``; the score is minus the squared error of
  that step pair. ``t / k + 1`` queries per image.

Timesteps are given for a 1000-step schedule (the papers' setting: loss t=100, PIA t=200, SecMI t=100, k=10)
and scaled to the model's ``num_train_timesteps``. Images are prepared exactly as for training (centre square,
antialiased resize to the model's ``sample_size``); images smaller than the model's input are refused rather
than upsampled. Class-conditional models get each image's own label combination.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ...data.folder import ImageRecord
from ...data.images import load_image
from ...errors import CheckError, InputError, ModelError
from ...progress import NULL_PROGRESS, Progress


class WhiteBoxAttack(str, enum.Enum):
    """The white-box attacks; the value is the attack's name in the report."""

    LOSS = "loss"
    PIA = "pia"
    SECMI = "secmi"


@dataclass(frozen=True)
class WhiteBoxOptions:
    """Settings of the white-box attacks (timesteps for a 1000-step schedule, scaled to the model's)."""

    attacks: tuple[WhiteBoxAttack, ...] = tuple(WhiteBoxAttack)
    loss_timestep: int = 100
    loss_draws: int = 4
    """Noise draws averaged per image by the loss attack (one query each)."""
    pia_timestep: int = 200
    pia_p: float = 4.0
    """Exponent of the PIA distance."""
    secmi_timestep: int = 100
    secmi_interval: int = 10
    """SecMI's DDIM step ``k``."""
    batch_size: int = 32
    seed: int = 0
    device: str | None = None
    """``None``: CUDA when available, else CPU."""

    def validate(self) -> None:
        """Raise :class:`InputError` listing every unusable setting."""
        problems = []
        for name in ("loss_timestep", "pia_timestep", "secmi_timestep"):
            if not 1 <= getattr(self, name) < 1000:
                problems.append(f"{name} must be in [1, 999], got {getattr(self, name)}")
        if not 1 <= self.secmi_interval < self.secmi_timestep:
            problems.append(f"secmi_interval must be in [1, secmi_timestep), got {self.secmi_interval}")
        if self.loss_draws < 1 or self.batch_size < 1 or not self.pia_p > 0:
            problems.append("loss_draws and batch_size must be >= 1 and pia_p > 0")
        if problems:
            raise InputError("invalid white-box attack settings: " + "; ".join(problems))

    def queries(self, attack: WhiteBoxAttack) -> int:
        """UNet evaluations per image for ``attack``."""
        if attack is WhiteBoxAttack.LOSS:
            return self.loss_draws
        if attack is WhiteBoxAttack.PIA:
            return 2
        return self.secmi_timestep // self.secmi_interval + 1


class DiffusionTarget:
    """A UNet and its schedule on one device, as the attacks query it: ``eps(x, t, labels)``."""

    def __init__(self, unet: torch.nn.Module, scheduler: Any, *, device: str | None = None):
        cfg = scheduler.config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.unet = unet.to(self.device).eval()
        self.prediction_type = cfg.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ModelError(f"membership attacks support epsilon and v-prediction models, not "
                             f"{self.prediction_type!r}")
        self.num_train_timesteps = int(cfg.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        ucfg = unet.config
        size = ucfg.sample_size
        self.resolution = int(size if isinstance(size, int) else size[0])
        self.in_channels = int(ucfg.in_channels)
        if self.in_channels not in (1, 3):
            raise ModelError(f"membership attacks need a 1- or 3-channel image model, not {self.in_channels} channels")
        self._split_output = int(ucfg.out_channels) == 2 * self.in_channels  # learned variance: eps comes first

    def timestep(self, t_1000: int) -> int:
        """A timestep given for a 1000-step schedule, on this model's schedule."""
        return int(min(self.num_train_timesteps - 1, max(1, round(t_1000 * self.num_train_timesteps / 1000))))

    def abar(self, t: int) -> torch.Tensor:
        """``alpha_bar_t`` as a 0-d tensor."""
        return self.alphas_cumprod[t]

    def eps(self, x: torch.Tensor, t: int, labels: torch.Tensor | None) -> torch.Tensor:
        """The model's noise prediction at integer timestep ``t`` for a batch ``x``."""
        steps = torch.full((x.shape[0],), t, device=self.device, dtype=torch.long)
        out = self.unet(x, steps, class_labels=labels).sample
        if self._split_output:
            out = out[:, : self.in_channels]
        if self.prediction_type == "v_prediction":
            a = self.abar(t)
            out = a.sqrt() * out + (1 - a).sqrt() * x
        return out

    def ddim_step(self, x: torch.Tensor, t_from: int, t_to: int, labels: torch.Tensor | None) -> torch.Tensor:
        """One deterministic DDIM step (eta = 0) from ``t_from`` to ``t_to``, forwards (inversion) or back."""
        eps = self.eps(x, t_from, labels)
        a_from, a_to = self.abar(t_from), self.abar(t_to)
        x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
        return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


def _per_image(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def loss_scores(target: DiffusionTarget, x0: torch.Tensor, labels: torch.Tensor | None, *, t: int,
                noise: torch.Tensor) -> torch.Tensor:
    """Minus the denoising loss at ``t``, averaged over the draws in ``noise`` ``(K, C, H, W)``."""
    k, b = noise.shape[0], x0.shape[0]
    a = target.abar(t)
    xs = x0.repeat(k, 1, 1, 1)
    eps = noise.repeat_interleave(b, dim=0)
    xt = a.sqrt() * xs + (1 - a).sqrt() * eps
    err = _per_image((target.eps(xt, t, labels.repeat(k) if labels is not None else None) - eps) ** 2)
    return -err.view(k, b).mean(dim=0)


def pia_scores(target: DiffusionTarget, x0: torch.Tensor, labels: torch.Tensor | None, *, t: int,
               p: float) -> torch.Tensor:
    """Minus PIA's distance ``mean |eps_theta(x_t, t) - eps_theta(x0, 0)|^p`` with ``x_t`` built from the latter."""
    eps0 = target.eps(x0, 0, labels)
    a = target.abar(t)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps0
    return -_per_image((target.eps(xt, t, labels) - eps0).abs() ** p)


def secmi_scores(target: DiffusionTarget, x0: torch.Tensor, labels: torch.Tensor | None, *, t: int,
                 interval: int) -> torch.Tensor:
    """Minus SecMI's step-pair error at ``t - interval`` (see the module docstring)."""
    x, t_c = x0, 0
    for t_next in range(interval, t - interval + 1, interval):  # DDIM inversion 0 -> t - k, step k
        x, t_c = target.ddim_step(x, t_c, t_next, labels), t_next
    there = target.ddim_step(x, t_c, t_c + interval, labels)
    back = target.ddim_step(there, t_c + interval, t_c, labels)
    return -_per_image((back - x) ** 2)


@dataclass
class PreparedImages:
    """Images as the model sees them, with their class labels (conditional models)."""

    pixels: torch.Tensor
    """``(N, C, R, R)`` uint8."""
    labels: torch.Tensor | None


def prepare_images(records: Sequence[ImageRecord], *, resolution: int, in_channels: int,
                   conditioning: Any = None, progress: Progress = NULL_PROGRESS) -> PreparedImages:
    """Load and resize images as training did. Raises :class:`InputError` for images smaller than the model's
    input (naming one and the count) and for label values a conditional model was not trained on."""
    from ...generation.data import to_model_input

    pixels = torch.empty((len(records), in_channels, resolution, resolution), dtype=torch.uint8)
    small: list[str] = []
    classes: list[int] = []
    bad_labels: list[str] = []
    with progress.task("Membership: loading images", total=len(records)) as task:
        for i, rec in enumerate(records):
            img = load_image(rec.path)
            h, w = img.shape[:2]
            if min(h, w) < resolution:
                small.append(f"{rec.path} is {w}x{h}")
            else:
                x = to_model_input(img, resolution)
                pixels[i] = x.float().mean(0, keepdim=True).round().to(torch.uint8) if in_channels == 1 else x
            if conditioning is not None:
                try:
                    classes.append(conditioning.class_index({c: rec.labels[c] for c in conditioning.columns}))
                except (KeyError, ValueError):
                    bad_labels.append(rec.path.name)
            task.advance()
    if small:
        raise InputError(f"{len(small)} image(s) are smaller than the model's {resolution}x{resolution} input "
                         f"(e.g. {small[0]}); membership attacks do not upsample images")
    if bad_labels:
        raise InputError(f"{len(bad_labels)} image(s) lack a label value the model was conditioned on "
                         f"({', '.join(conditioning.columns)}), e.g. {bad_labels[0]}")
    return PreparedImages(pixels, torch.tensor(classes, dtype=torch.long) if conditioning is not None else None)


@dataclass
class WhiteBoxRun:
    """Scores of every attack for the images given, and the time each attack took."""

    scores: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)


def score_images(target: DiffusionTarget, images: PreparedImages, *, options: WhiteBoxOptions = WhiteBoxOptions(),
                 progress: Progress = NULL_PROGRESS) -> WhiteBoxRun:
    """Run every attack of ``options`` on ``images``; one score per image and attack, higher = member."""
    options.validate()
    n = images.pixels.shape[0]
    gen = torch.Generator().manual_seed(options.seed)
    shape = (options.loss_draws, target.in_channels, target.resolution, target.resolution)
    noise = torch.randn(shape, generator=gen).to(target.device)
    run = WhiteBoxRun(scores={})
    with progress.task("Membership: white-box attacks", total=n * len(options.attacks)) as task, \
            torch.inference_mode():
        for attack in options.attacks:
            out = np.empty(n, dtype=np.float64)
            t0 = time.perf_counter()
            for lo in range(0, n, options.batch_size):
                x0 = images.pixels[lo:lo + options.batch_size].to(target.device).float() / 127.5 - 1.0
                labels = images.labels[lo:lo + options.batch_size].to(target.device) \
                    if images.labels is not None else None
                out[lo:lo + len(x0)] = _attack_batch(target, attack, x0, labels, options, noise).double().cpu().numpy()
                task.advance(len(x0))
            run.seconds[attack.value] = time.perf_counter() - t0
            if not np.all(np.isfinite(out)):
                raise CheckError(f"white-box attack {attack.value} gave non-finite scores (the model's weights may "
                                 "hold NaN or inf)")
            run.scores[attack.value] = out
    return run


def _attack_batch(target: DiffusionTarget, attack: WhiteBoxAttack, x0: torch.Tensor, labels: torch.Tensor | None,
                  options: WhiteBoxOptions, noise: torch.Tensor) -> torch.Tensor:
    if attack is WhiteBoxAttack.LOSS:
        return loss_scores(target, x0, labels, t=target.timestep(options.loss_timestep), noise=noise)
    if attack is WhiteBoxAttack.PIA:
        return pia_scores(target, x0, labels, t=target.timestep(options.pia_timestep), p=options.pia_p)
    if attack is WhiteBoxAttack.SECMI:
        k = max(1, target.timestep(options.secmi_interval))
        t = max(2 * k, k * round(target.timestep(options.secmi_timestep) / k))
        return secmi_scores(target, x0, labels, t=t, interval=k)
    raise AssertionError(f"unhandled attack {attack}")  # pragma: no cover - every member is handled above
