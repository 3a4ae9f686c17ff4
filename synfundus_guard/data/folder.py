"""Image folders with an optional ``labels.csv`` (columns ``file_name``, ``image_id``, ``patient_id``, labels).

Without a labels file every image is its own record: ``image_id`` is the relative path and ``patient_id`` is
unknown (each image is treated as its own patient, the conservative choice for patient-disjoint checks).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from .images import list_images

LABELS_FILE = "labels.csv"
REQUIRED_COLUMNS = ("file_name",)


@dataclass(frozen=True)
class ImageRecord:
    """One image of a folder."""

    file_name: str
    """Path relative to the folder, POSIX separators."""
    path: Path
    """Absolute path on disk."""
    image_id: str
    """Stable id of the image (from labels.csv, else the file name)."""
    patient_id: str
    """Patient the image belongs to (from labels.csv, else ``"?" + file_name``)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Remaining labels.csv columns for this image."""


def read_labels(path: Path) -> dict[str, dict[str, str]]:
    """Read a labels CSV into ``{file_name: row}``. Raises :class:`InputError` on malformed files."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in cols]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
            rows: dict[str, dict[str, str]] = {}
            for i, row in enumerate(reader, start=2):
                name = (row.get("file_name") or "").strip()
                if not name:
                    raise InputError(f"{path}: line {i} has an empty file_name")
                if name in rows:
                    raise InputError(f"{path}: file_name {name!r} listed twice")
                rows[name] = {k: (v or "").strip() for k, v in row.items() if k is not None}
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 CSV file") from None
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV ({exc})") from None
    return rows


def scan_folder(folder: Path) -> list[ImageRecord]:
    """List a folder's images as records, joined with its ``labels.csv`` when present.

    Raises :class:`InputError` when the folder is missing or empty, or when labels.csv names files that do not
    exist. Images not listed in labels.csv still load, with default ids.
    """
    folder = Path(folder)
    rels = list_images(folder)
    labels_path = folder / LABELS_FILE
    rows = read_labels(labels_path) if labels_path.is_file() else {}
    names = {r.as_posix() for r in rels}
    absent = sorted(set(rows) - names)
    if absent:
        more = f" (and {len(absent) - 3} more)" if len(absent) > 3 else ""
        raise InputError(f"{labels_path}: lists missing image(s) {', '.join(absent[:3])}{more}")
    records = []
    for rel in rels:
        name = rel.as_posix()
        row = rows.get(name, {})
        labels = {k: v for k, v in row.items() if k not in ("file_name", "image_id", "patient_id")}
        records.append(
            ImageRecord(
                file_name=name,
                path=(folder / rel).resolve(),
                image_id=row.get("image_id") or name,
                patient_id=row.get("patient_id") or f"?{name}",
                labels=labels,
            )
        )
    return records


def write_image_folder(folder: Path, items: Sequence[tuple[str, np.ndarray, str, str]]) -> None:
    """Write ``(file_name, image, image_id, patient_id)`` items as PNGs plus a ``labels.csv`` (atomic writes)."""
    from ..fsutil import atomic_write_bytes, atomic_write_text
    from .images import encode_png

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file_name,image_id,patient_id"]
    for name, img, image_id, patient in items:
        atomic_write_bytes(folder / name, encode_png(img))
        lines.append(f"{name},{image_id},{patient}")
    atomic_write_text(folder / LABELS_FILE, "\n".join(lines) + "\n")
