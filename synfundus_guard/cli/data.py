"""``guard data``: make a phantom fundus dataset and split an image folder by patient."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..data.phantom import MAX_SIZE, MIN_SIZE, generate_phantom
from ..data.split import write_split
from .errors import fail_usage, guarded
from .progress import RichProgressObserver

data_app = typer.Typer(help="Make and prepare image datasets.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the ``guard`` app."""
    app.add_typer(data_app, name="data")


def _check_range(option: str, value: int | float, low: float, high: float | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise fail_usage(f"{option} must be {bound} (got {value})")


@data_app.command("phantom")
@guarded
def phantom(
    out: Annotated[Path, typer.Argument(help="Folder to create (must be absent or empty).")],
    patients: Annotated[int, typer.Option(help="Number of synthetic patients (one eye each).")] = 20,
    visits: Annotated[int, typer.Option(help="Photographs per patient.")] = 2,
    size: Annotated[int, typer.Option(help=f"Image side in pixels ({MIN_SIZE}-{MAX_SIZE}).")] = 256,
    seed: Annotated[int, typer.Option(help="Dataset seed; same arguments give byte-identical files.")] = 0,
) -> None:
    """Write a procedural colour fundus dataset: PNG images plus labels.csv with patient ids and grades."""
    _check_range("--patients", patients, 1)
    _check_range("--visits", visits, 1)
    _check_range("--size", size, MIN_SIZE, MAX_SIZE)
    _check_range("--seed", seed, 0)
    with RichProgressObserver() as progress:
        ds = generate_phantom(out, patients=patients, visits=visits, size=size, seed=seed, progress=progress)
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
    holdout_fraction: Annotated[float, typer.Option(help="Share of patients held out, in (0, 1).")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the patient assignment.")] = 0,
) -> None:
    """Split an image folder into patient-disjoint train/ and holdout/ folders (hard links where possible)."""
    if not 0 < holdout_fraction < 1:
        raise fail_usage(f"--holdout-fraction must be between 0 and 1, exclusive (got {holdout_fraction})")
    with RichProgressObserver() as progress:
        res = write_split(src, out, holdout_fraction=holdout_fraction, seed=seed, progress=progress)
    typer.echo(f"train: {res.train_images} images of {res.train_patients} patients -> {res.train_dir}")
    typer.echo(f"holdout: {res.holdout_images} images of {res.holdout_patients} patients -> {res.holdout_dir}")
    typer.echo(f"hard-linked {res.hardlinked}, copied {res.copied}; labels.csv "
               f"{'filtered into each side' if res.labels_written else 'not found in source'}")
