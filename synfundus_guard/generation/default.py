"""The built-in default model: a small DDPM trained on phantom fundus data by the project's own recipe.

``guard generate --out RELEASE/`` uses it when no ``--model`` is given. Its training data is not shipped: it is
a pure function of the phantom generator's arguments, recorded in ``recipe.json`` beside the weights, so
:func:`training_data_dir` can regenerate it on any machine (and audits can index it and calibrate on its
holdout). :func:`build_default_model` reproduces the shipped model; the same two CLI commands are::

    guard data phantom PHANTOM/ --patients 200 --visits 2 --size 64 --seed 0
    guard train PHANTOM/ --out MODEL/ --steps 4000 --resolution 32 --batch-size 16 --lr 5e-4 --seed 0 \\
        --channels 32,64,64 --holdout-fraction 0.2
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..fsutil import atomic_write_json
from ..progress import NULL_PROGRESS, Progress
from .card import data_fingerprint
from .model import DEFAULT_MODEL_DIR, LoadedModel

RECIPE_FILE = "recipe.json"
PHANTOM = {"patients": 200, "visits": 2, "size": 64, "seed": 0}
"""Arguments of :func:`synfundus_guard.data.phantom.generate_phantom` for the default model's data."""
TRAIN = {"steps": 4000, "resolution": 32, "batch_size": 16, "lr": 5e-4, "seed": 0, "channels": [32, 64, 64],
         "holdout_fraction": 0.2}
"""Arguments of :func:`synfundus_guard.generation.train.train_model` for the default model."""


def recipe() -> dict[str, Any]:
    """The recipe stored beside the default model's weights."""
    return {
        "phantom": dict(PHANTOM),
        "train": dict(TRAIN),
        "commands": [
            "guard data phantom PHANTOM/ " + " ".join(f"--{k} {v}" for k, v in PHANTOM.items()),
            "guard train PHANTOM/ --out MODEL/ --steps {steps} --resolution {resolution} --batch-size {batch_size} "
            "--lr {lr} --seed {seed} --channels {ch} --holdout-fraction {holdout_fraction}".format(
                ch=",".join(map(str, TRAIN["channels"])), **TRAIN),
        ],
    }


def build_default_model(out_dir: Path, *, data_dir: Path, progress: Progress = NULL_PROGRESS) -> Path:
    """Regenerate the phantom data into ``data_dir`` and train the default model into ``out_dir``."""
    from ..data.phantom import generate_phantom
    from .train import train_model

    if not (Path(data_dir) / "labels.csv").is_file():
        generate_phantom(Path(data_dir), progress=progress, **PHANTOM)
    t = dict(TRAIN)
    train_model(train_dir=Path(data_dir), out_dir=Path(out_dir), channels=tuple(t.pop("channels")),
                progress=progress, **t)
    atomic_write_json(Path(out_dir) / RECIPE_FILE, recipe())
    return Path(out_dir)


def read_recipe(model_dir: Path) -> dict[str, Any] | None:
    """The phantom recipe of a model folder, or None when it has none."""
    path = Path(model_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"phantom": dict(data["phantom"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: malformed recipe ({exc})") from None


def training_data_dir(model: LoadedModel, *, cache_dir: Path, progress: Progress = NULL_PROGRESS) -> Path:
    """The folder holding the images the model's card names (train and holdout splits).

    The card's ``train_dir`` when it still holds them unchanged (same data fingerprint); otherwise, for a model
    with a phantom recipe (the built-in default), the phantom regenerated under ``cache_dir``. Raises :class:`ModelError` for a model
    without a card, or whose training data cannot be found or regenerated.
    """
    card = model.card
    if card is None:
        raise ModelError(f"{model.path}: no training card; the training data of an external model must be given")
    names = list(card.data.train_files) + list(card.data.holdout_files)
    recorded = Path(card.data.train_dir)
    present = all((recorded / n).is_file() for n in names)
    if present and data_fingerprint([(n, recorded / n) for n in card.data.train_files]) == card.data.fingerprint:
        return recorded
    rec = read_recipe(model.path)
    if rec is None:
        state = "changed since training (data fingerprint differs)" if present else "not found"
        raise ModelError(f"training data of {model.path} at {recorded}: {state}; checks need the images it was "
                         "trained on")
    from ..data.phantom import generate_phantom

    phantom = rec["phantom"]
    key = "-".join(f"{k}{phantom[k]}" for k in sorted(phantom))
    folder = Path(cache_dir) / "phantom" / key
    if not (folder / "labels.csv").is_file():
        progress.log(f"regenerating the default model's phantom training data in {folder}")
        tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"  # concurrent runs each write their own
        shutil.rmtree(tmp, ignore_errors=True)
        generate_phantom(tmp, progress=progress, **phantom)
        try:
            tmp.replace(folder)
        except OSError:  # another run finished first; its files are the same
            shutil.rmtree(tmp, ignore_errors=True)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ModelError(f"regenerated phantom data in {folder} lacks {len(missing)} file(s) the card names")
    if data_fingerprint([(n, folder / n) for n in card.data.train_files]) != card.data.fingerprint:
        progress.log("warning: the regenerated phantom images differ in bytes from those the model was trained on "
                     "(another phantom generator version or platform); checks use the regenerated images")
    return folder


def default_model_dir() -> Path:
    """Where the built-in model lives (inside the installed package)."""
    return DEFAULT_MODEL_DIR
