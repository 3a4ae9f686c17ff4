"""The training card: a JSON file in the (private) model folder saying how and on what a model was trained.

The card lets audits find the training split (to build the memorization index) and the patient-disjoint
holdout split (to calibrate thresholds and run membership tests), and carries the differential-privacy
parameters and the ε that Opacus' accountant reported. It names training files, so the model folder is
private; :meth:`TrainingCard.public_summary` is the part that may travel into a release manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..errors import ModelError
from ..fsutil import atomic_write_json, sha256_bytes, sha256_file
from ..safeload import read_json

CARD_FILE = "training_card.json"
SCHEMA = "synfundus-guard/training-card/v1"


def data_fingerprint(files: Sequence[tuple[str, Path]]) -> str:
    """sha256 over the sorted ``(file_name, sha256 of content)`` pairs of a split.

    Two folders with the same relative names and byte-identical images have the same fingerprint, wherever
    they live on disk.
    """
    pairs = sorted((name, sha256_file(path)) for name, path in files)
    return sha256_bytes(json.dumps(pairs, separators=(",", ":")).encode("utf-8"))


@dataclass(frozen=True)
class DataSplit:
    """The patient-disjoint split made before training."""

    train_dir: str
    """Absolute path of the folder the model was trained from (private)."""
    fingerprint: str
    """:func:`data_fingerprint` of the training split."""
    train_files: tuple[str, ...]
    """Folder-relative names of the training images (members)."""
    holdout_files: tuple[str, ...]
    """Folder-relative names of held-out images of other patients (non-members)."""
    train_patients: int
    holdout_patients: int
    holdout_fraction: float
    split_seed: int


@dataclass(frozen=True)
class DPRecord:
    """How the model was trained with DP-SGD (Opacus), and the privacy spent."""

    epsilon: float
    """ε for ``delta`` after the achieved steps, from Opacus' accountant."""
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    """Poisson sampling rate per step (Opacus: 1 / batches per epoch)."""
    steps: int
    accountant: str = "rdp"
    target_epsilon: float | None = None
    """The ε asked for, when the noise multiplier was derived from it."""
    poisson_sampling: bool = True
    secure_rng: bool = False
    """False: noise and sampling come from a seeded pseudo-random generator (reproducible, not hardened)."""


@dataclass(frozen=True)
class TrainingCard:
    """Everything the toolkit needs to know about a model it trained."""

    resolution: int
    steps: int
    batch_size: int
    lr: float
    seed: int
    block_out_channels: tuple[int, ...]
    data: DataSplit
    conditioning: dict[str, Any] | None = None
    """:meth:`~synfundus_guard.generation.conditioning.Conditioning.to_dict`, or None when unconditional."""
    dp: DPRecord | None = None
    run_key: str = ""
    """Hash of the training arguments and data; a re-run with the same key resumes instead of refusing."""
    tool_version: str = __version__
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "card") -> "TrainingCard":
        """Inverse of :meth:`to_dict`. Raises :class:`ModelError` for a document that is not a card."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ModelError(f"{source}: not a synfundus-guard training card (expected schema {SCHEMA!r})")
        try:
            rest = dict(data)
            split = rest.pop("data")
            split = DataSplit(**{**split, "train_files": tuple(split["train_files"]),
                                 "holdout_files": tuple(split["holdout_files"])})
            dp = rest.pop("dp", None)
            return cls(data=split, dp=DPRecord(**dp) if dp is not None else None,
                       block_out_channels=tuple(rest.pop("block_out_channels")), **rest)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{source}: malformed training card ({exc})") from None

    def public_summary(self) -> dict[str, Any]:
        """What may be published with a release: no file names, paths or patient counts of single patients."""
        dp = self.dp
        return {
            "dp": dp is not None,
            "epsilon": dp.epsilon if dp else None,
            "delta": dp.delta if dp else None,
            "noise_multiplier": dp.noise_multiplier if dp else None,
            "max_grad_norm": dp.max_grad_norm if dp else None,
            "resolution": self.resolution,
            "steps": self.steps,
            "conditioning": list(self.conditioning["columns"]) if self.conditioning else [],
            "data_fingerprint": self.data.fingerprint,
        }


def write_card(model_dir: Path, card: TrainingCard) -> Path:
    """Write the card atomically into ``model_dir``, owner-only (0600); returns its path.

    The card names every training and holdout file and the training folder's path, so it is private even
    where the model folder is copied with looser permissions; :meth:`TrainingCard.public_summary` is what
    may travel.
    """
    path = Path(model_dir) / CARD_FILE
    atomic_write_json(path, card.to_dict(), private=True)
    return path


MAX_CARD_BYTES = 256 * 1024 * 1024
"""A card lists every training file name: ~100 bytes each, so 256 MB covers millions of images."""


def read_card(model_dir: Path) -> TrainingCard | None:
    """The card of ``model_dir``, or None when there is none. Raises :class:`ModelError` when malformed."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return None
    # bounded: a card comes with a model folder, which may come from anyone (size, nesting, top-level type)
    data = read_json(path, error=ModelError, expect=dict, max_bytes=MAX_CARD_BYTES)
    return TrainingCard.from_dict(data, source=str(path))
