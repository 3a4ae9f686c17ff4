"""``guard data``: make a phantom fundus dataset and split an image folder by patient."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ..data.phantom import MAX_PATIENTS, MAX_SIZE, MAX_VISITS, MIN_SIZE, generate_phantom
from ..data.split import write_split
from .errors import fail_usage, guarded
from .progress import RichProgressObserver

data_app = typer.Typer(help="Make and prepare image datasets.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the ``guard`` app."""
    app.add_typer(data_app, name="data")


MAX_SEED = 2**63 - 1
"""Largest ``--seed`` accepted: any larger is a typo, and ids carry the seed (``S7-P00012``)."""


def _whole_number(option: str, text: str, low: int, high: int) -> int:
    """Parse an integer option given as text, bounded to [low, high], or fail with one line (exit 2).

    Options are taken as text, not Typer ints, so that ``--patients 1e20`` or ``--visits 2.5`` get the same
    one-line error as an out-of-range number instead of Click's multi-line usage box.
    """
    try:
        number = int(text)
    except ValueError:  # "1e20", "2.5", "abc", or over 4300 digits
        try:
            as_float = float(text)
        except ValueError:
            as_float = math.nan
        if not as_float.is_integer():
            raise fail_usage(f"{option} must be a whole number between {low} and {high} (got {text!r})") from None
        number = int(as_float)
    if not low <= number <= high:
        raise fail_usage(f"{option} must be between {low} and {high} (got {text})")
    return number


def _fraction(option: str, text: str) -> float:
    """Parse a share in the open interval (0, 1), or fail with one line (exit 2); nan and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise fail_usage(f"{option} must be between 0 and 1, exclusive (got {text})")
    return value


@data_app.command("phantom")
@guarded
def phantom(
    out: Annotated[Path, typer.Argument(help="Folder to create (must be absent or empty).")],
    patients: Annotated[str, typer.Option(metavar="INTEGER",
                                          help=f"Number of synthetic patients, one eye each (1-{MAX_PATIENTS}).")]
    = "20",
    visits: Annotated[str, typer.Option(metavar="INTEGER", help=f"Photographs per patient (1-{MAX_VISITS}).")] = "2",
    size: Annotated[str, typer.Option(metavar="INTEGER", help=f"Image side in pixels ({MIN_SIZE}-{MAX_SIZE}).")]
    = "256",
    seed: Annotated[str, typer.Option(metavar="INTEGER",
                                      help="Dataset seed; same arguments give byte-identical files. Seeds other "
                                           "than 0 prefix ids with the seed (S7-P00012).")] = "0",
) -> None:
    """Write a procedural colour fundus dataset: PNG images plus labels.csv with patient ids and grades.

    All or nothing: the folder appears complete or not at all (also on Ctrl-C or SIGTERM).
    """
    n_patients = _whole_number("--patients", patients, 1, MAX_PATIENTS)
    n_visits = _whole_number("--visits", visits, 1, MAX_VISITS)
    px = _whole_number("--size", size, MIN_SIZE, MAX_SIZE)
    seed_n = _whole_number("--seed", seed, 0, MAX_SEED)
    with RichProgressObserver() as progress:
        ds = generate_phantom(out, patients=n_patients, visits=n_visits, size=px, seed=seed_n, progress=progress)
    typer.echo(f"wrote {ds.images} images ({ds.patients} patients x {ds.visits} visits, {ds.size} px) "
               f"and {ds.labels_path.name} to {ds.root}")
    grades = "/".join(str(n) for n in ds.dr_grade_counts)
    typer.echo(f"DR grade 0/1/2/3/4 images: {grades}; AMD patients: {ds.amd_patients}; "
               f"glaucoma suspects: {ds.glaucoma_suspects}")


@data_app.command("split")
@guarded
def split(
    src: Annotated[Path, typer.Argument(help="Image folder, with labels.csv naming each image's patient_id.")],
    out: Annotated[Path, typer.Argument(help="Folder to create with train/ and holdout/ (absent or empty).")],
    holdout_fraction: Annotated[str, typer.Option(metavar="FLOAT", help="Share of patients held out, in (0, 1).")]
    = "0.2",
    seed: Annotated[str, typer.Option(metavar="INTEGER", help="Seed of the patient assignment.")] = "0",
) -> None:
    """Split an image folder into patient-disjoint train/ and holdout/ folders (hard links where possible).

    All or nothing: OUT appears complete or not at all; an OUT that holds anything is refused, never replaced.
    """
    fraction = _fraction("--holdout-fraction", holdout_fraction)
    seed_n = _whole_number("--seed", seed, 0, MAX_SEED)
    with RichProgressObserver() as progress:
        res = write_split(src, out, holdout_fraction=fraction, seed=seed_n, progress=progress)
    typer.echo(f"train: {res.train_images} images of {res.train_patients} patients -> {res.train_dir}")
    typer.echo(f"holdout: {res.holdout_images} images of {res.holdout_patients} patients -> {res.holdout_dir}")
    typer.echo(f"hard-linked {res.hardlinked}, copied {res.copied}; labels.csv "
               f"{'filtered into each side' if res.labels_written else 'not found in source'}")
