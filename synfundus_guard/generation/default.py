"""The built-in default model: a small DDPM trained on phantom fundus data by the project's own recipe.

``guard generate --out RELEASE/`` uses it when no ``--model`` is given. Its training data is not shipped: it is
a pure function of the phantom generator's arguments, recorded in ``recipe.json`` beside the weights, so
:func:`training_data_dir` can regenerate it on any machine (and audits can index it and calibrate on its
holdout). :func:`build_default_model` reproduces the shipped model; the same two CLI commands are::

    guard data phantom PHANTOM/ --patients 500 --visits 2 --size 128 --seed 0
    guard train PHANTOM/ --out MODEL/ --steps 4500 --resolution 64 --batch-size 64 --lr 5e-4 --seed 0 \\
        --channels 32,64,128,128 --holdout-fraction 0.2 [--device cuda]

The shipped weights were trained with ``--device cuda`` on one NVIDIA H200 (4500 steps in 275 s, 16 steps/s,
launch-bound); the same command on the CPU gives the same model up to floating-point rounding and takes several
hours on 2 cores. The model is 64 px, 4.3 M parameters, and draws visible vessels, an optic disc and a macula.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelError
from ..fsutil import atomic_write_json
from ..progress import NULL_PROGRESS, Progress
from ..safeload import read_json
from .card import data_fingerprint
from .model import DEFAULT_MODEL_DIR, LoadedModel

RECIPE_FILE = "recipe.json"
PHANTOM = {"patients": 500, "visits": 2, "size": 128, "seed": 0}
"""Arguments of :func:`synfundus_guard.data.phantom.generate_phantom` for the default model's data."""
TRAIN = {"steps": 4500, "resolution": 64, "batch_size": 64, "lr": 5e-4, "seed": 0, "channels": [32, 64, 128, 128],
         "holdout_fraction": 0.2}
"""Arguments of :func:`synfundus_guard.generation.train.train_model` for the default model."""
MAX_RECIPE_BYTES = 64 * 1024
"""Largest recipe.json read (the shipped one is under 1 KB)."""
MAX_RECIPE_PATIENTS, MAX_RECIPE_VISITS, MAX_RECIPE_SIZE = 10_000, 20, 512
"""Bounds on each phantom argument a recipe may give."""
MAX_RECIPE_PIXELS = 4 * 1000 * 128 * 128
"""Most pixels (images x side^2) a recipe may ask to regenerate: 4 times the shipped recipe's 1000 images of 128 px,
which take 35 s on one core, so an audit never spends more than a few minutes on a folder's say-so."""
MAX_RECIPE_STEPS = 1_000_000


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


def _int_rule(low: int, high: int) -> tuple[str, Callable[[Any], bool]]:
    return (f"an integer in [{low}, {high}]",
            lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high)


def _num_rule(low: float, high: float) -> tuple[str, Callable[[Any], bool]]:
    return (f"a number in ({low:g}, {high:g}]",
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and low < v <= high)


_PHANTOM_RULES = {"patients": _int_rule(1, MAX_RECIPE_PATIENTS), "visits": _int_rule(1, MAX_RECIPE_VISITS),
                  "size": _int_rule(64, MAX_RECIPE_SIZE), "seed": _int_rule(0, 2**32 - 1)}
_TRAIN_RULES = {"steps": _int_rule(1, MAX_RECIPE_STEPS), "resolution": _int_rule(8, 512),
                "batch_size": _int_rule(1, 4096), "lr": _num_rule(0, 1), "seed": _int_rule(0, 2**32 - 1),
                "holdout_fraction": _num_rule(0, 0.999),
                "channels": ("a list of 1 to 6 integers in [8, 1024]",
                             lambda v: isinstance(v, list) and 1 <= len(v) <= 6
                             and all(_int_rule(8, 1024)[1](c) for c in v))}


def _section_problems(name: str, section: Any, rules: dict[str, tuple[str, Callable[[Any], bool]]],
                      *, complete: bool) -> list[str]:
    """Every unknown, missing (when ``complete``) or out-of-range key of one recipe section."""
    if not isinstance(section, dict):
        return [f"{name}: expected an object, got {type(section).__name__}"]
    problems = [f"{name}.{key}: unknown key (allowed: {', '.join(rules)})" for key in section if key not in rules]
    if complete:
        problems += [f"{name}.{key}: required" for key in rules if key not in section]
    problems += [f"{name}.{key}: must be {rules[key][0]}, got {section[key]!r}"[:200]
                 for key in section if key in rules and not rules[key][1](section[key])]
    return problems


def recipe_problems(data: dict[str, Any]) -> list[str]:
    """Every problem of a parsed recipe: unknown keys, wrong types, values out of the bounds above."""
    problems = [f"{key}: unknown key (allowed: phantom, train, commands)" for key in data
                if key not in ("phantom", "train", "commands")]
    if "phantom" not in data:
        problems.append("phantom: required")
    else:
        problems += _section_problems("phantom", data["phantom"], _PHANTOM_RULES, complete=True)
        phantom = data["phantom"]
        if not problems and phantom["patients"] * phantom["visits"] * phantom["size"] ** 2 > MAX_RECIPE_PIXELS:
            problems.append(f"phantom: {phantom['patients']} patients x {phantom['visits']} visits of "
                            f"{phantom['size']} px exceed {MAX_RECIPE_PIXELS} pixels")
    if "train" in data:
        problems += _section_problems("train", data["train"], _TRAIN_RULES, complete=False)
    commands = data.get("commands", [])
    if not isinstance(commands, list) or len(commands) > 10 or not all(isinstance(c, str) for c in commands):
        problems.append("commands: must be a list of at most 10 strings")
    return problems


def read_recipe(model_dir: Path) -> dict[str, Any] | None:
    """The phantom recipe of a model folder, or None when it has none.

    The recipe decides how much work an audit does before it starts (it regenerates the training data), and a
    model folder may come from anyone, so it is validated strictly first: known keys only, integers in bounds.
    Raises :class:`ModelError` listing every problem.
    """
    path = Path(model_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path, error=ModelError, expect=dict, max_bytes=MAX_RECIPE_BYTES)
    except FileNotFoundError:
        return None
    problems = recipe_problems(data)
    if problems:
        raise ModelError(f"{path}: malformed recipe: " + "; ".join(problems))
    return {"phantom": dict(data["phantom"])}


def training_data_dir(model: LoadedModel, *, cache_dir: Path, progress: Progress = NULL_PROGRESS) -> Path:
    """The folder holding the images the model's card names (train and holdout splits).

    The card's ``train_dir`` when it still holds them unchanged (same data fingerprint); otherwise, for a model
    with a phantom recipe (the built-in default), the phantom regenerated under ``cache_dir``. Raises
    :class:`ModelError` for a model without a card, or whose training data cannot be found or regenerated.
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
