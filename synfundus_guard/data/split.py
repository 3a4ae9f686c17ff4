"""Patient-disjoint train / holdout splits.

The holdout stands for "new patients": it calibrates how close an unseen patient's image gets to the training
set, and it is the negative class of membership inference. If one patient had images on both sides, those
distances would be measured against the patient's own other photographs and every threshold would come out
too loose. So the unit of the split is the patient, never the image.

Patients are ranked by a hash of ``(seed, patient_id)``, so the assignment does not depend on the order of the
records or the file system, and adding patients later leaves most earlier assignments unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..fsutil import require_new_dir, staged_dir, write_durable
from ..progress import NULL_PROGRESS, Progress
from .folder import LABELS_FILE, ImageRecord, read_labels, scan_folder

SIDES = ("train", "holdout")
"""Names of the two folders :func:`write_split` creates."""


def split_by_patient(records: list[ImageRecord], *, holdout_fraction: float,
                     seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split records into ``(train, holdout)`` so that every patient's images land on one side.

    ``holdout_fraction`` is the share of *patients* (not images) held out, rounded, with at least one patient on
    each side. Record order is kept within each side. Raises :class:`InputError` when the fraction is not in
    (0, 1) or the records hold fewer than two patients.
    """
    if isinstance(holdout_fraction, bool) or not isinstance(holdout_fraction, (int, float)) \
            or not 0 < holdout_fraction < 1:
        raise InputError(f"holdout fraction must be between 0 and 1, exclusive (got {holdout_fraction})")
    patients = sorted({r.patient_id for r in records})
    if len(patients) < 2:
        raise InputError(f"a patient-disjoint split needs at least 2 patients (found {len(patients)})")
    n_holdout = min(len(patients) - 1, max(1, round(holdout_fraction * len(patients))))
    ranked = sorted(patients, key=lambda pid: hashlib.sha256(f"{seed}\x00{pid}".encode()).hexdigest())
    holdout_ids = set(ranked[:n_holdout])
    train = [r for r in records if r.patient_id not in holdout_ids]
    holdout = [r for r in records if r.patient_id in holdout_ids]
    return train, holdout


@dataclass(frozen=True)
class SplitResult:
    """What :func:`write_split` wrote."""

    out: Path
    train_dir: Path
    holdout_dir: Path
    train_images: int
    holdout_images: int
    train_patients: int
    holdout_patients: int
    hardlinked: int
    """Images hard-linked to the source (no extra disk space)."""
    copied: int
    """Images copied because a hard link was not possible (other file system, no permission)."""
    labels_written: bool
    """True when the source had a labels.csv and each side received its filtered copy."""


def _place(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` to ``dst`` when possible, else copy. Returns True for a link."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copyfile(src, dst)
        return False


def _labels_csv(header: list[str], rows: dict[str, dict[str, str]], records: list[ImageRecord]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows[r.file_name] for r in records if r.file_name in rows)
    return buf.getvalue()


def _check_output(src: Path, out: Path) -> None:
    require_new_dir(out)
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise InputError(f"output folder {out} must not be inside the source folder {src}")


def _place_sides(staging: Path, sides: tuple[list[ImageRecord], list[ImageRecord]], progress: Progress) -> int:
    """Link or copy each side's images under ``staging``; returns how many were hard-linked."""
    linked = 0
    with progress.task("Writing patient-disjoint split", total=sum(map(len, sides))) as task:
        for side, recs in zip(SIDES, sides):
            (staging / side).mkdir()
            for r in recs:
                linked += _place(r.path, staging / side / r.file_name)
                task.advance()
    return linked


def _write_side_labels(staging: Path, labels_path: Path, sides: tuple[list[ImageRecord], list[ImageRecord]]) -> None:
    """Give each side the rows of ``labels_path`` that name its own images, under the source's header."""
    with open(labels_path, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    rows = read_labels(labels_path)
    for side, recs in zip(SIDES, sides):
        write_durable(staging / side / LABELS_FILE, _labels_csv(header, rows, recs).encode("utf-8"))


def write_split(src: Path, out: Path, *, holdout_fraction: float, seed: int,
                progress: Progress = NULL_PROGRESS) -> SplitResult:
    """Split the image folder ``src`` by patient into ``out/train`` and ``out/holdout``.

    Images keep their relative paths and are hard-linked when possible, else copied; when ``src`` has a
    labels.csv each side gets the rows of its own images. The folders are assembled in a hidden sibling of
    ``out`` and renamed into place (:func:`~synfundus_guard.fsutil.staged_dir`), so ``out`` is complete or as it
    was, also after an error or interrupt. Without labels.csv every image counts as
    its own patient; a warning goes to ``progress.log``. Raises :class:`InputError` for an unusable ``src``, an
    ``out`` that is not an empty folder or lies inside ``src``, or the conditions of :func:`split_by_patient`.
    """
    src, out = Path(src), Path(out)
    _check_output(src, out)
    records = scan_folder(src)
    train, holdout = split_by_patient(records, holdout_fraction=holdout_fraction, seed=seed)
    labels_path = src / LABELS_FILE
    has_labels = labels_path.is_file()
    unlabelled = sum(r.patient_id.startswith("?") for r in records)
    if not has_labels:
        progress.log(f"warning: {src} has no {LABELS_FILE}; every image is treated as its own patient, so the split "
                     "is patient-disjoint only if no patient has two images")
    elif unlabelled:
        progress.log(f"warning: {unlabelled} image(s) have no patient_id in {labels_path}; each is treated as its "
                     "own patient")
    with staged_dir(out) as staging:
        linked = _place_sides(staging, (train, holdout), progress)
        if has_labels:
            _write_side_labels(staging, labels_path, (train, holdout))
    return SplitResult(
        out=out, train_dir=out / SIDES[0], holdout_dir=out / SIDES[1],
        train_images=len(train), holdout_images=len(holdout),
        train_patients=len({r.patient_id for r in train}), holdout_patients=len({r.patient_id for r in holdout}),
        hardlinked=linked, copied=len(records) - linked, labels_written=has_labels,
    )
