"""A self-contained demonstration on built-in data: the audit finds planted copies among novel patients.

``run_demo`` makes a phantom fundus dataset, splits it patient-disjoint into train and holdout, builds a
"synthetic" release of novel patients with a few transformed copies of training images planted in it (their
file names do not give them away), and audits it under the public policy. It returns which planted copies
were caught and whether any novel image was flagged.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audit.runner import AuditResult, audit_release
from .data.folder import scan_folder
from .data.images import encode_png, load_image
from .data.perturb import random_copy
from .data.phantom import PhantomPatient, generate_phantom, render_visit
from .data.split import write_split
from .errors import InputError
from .fsutil import atomic_write_bytes
from .policies.schema import load_shipped_policy
from .progress import NULL_PROGRESS, Progress


@dataclass(frozen=True)
class DemoResult:
    """Outcome of the demonstration."""

    audit: AuditResult
    planted: tuple[str, ...]
    """Release file names that are copies of training images."""
    caught: tuple[str, ...]
    """Planted copies the audit failed."""
    false_alarms: tuple[str, ...]
    """Novel-patient images the audit failed."""

    @property
    def ok(self) -> bool:
        """Every planted copy caught and no novel image flagged."""
        return set(self.caught) == set(self.planted) and not self.false_alarms


def run_demo(
    out_dir: Path,
    *,
    patients: int = 60,
    novel: int = 24,
    copies: int = 6,
    size: int = 192,
    seed: int = 0,
    policy: str = "public",
    progress: Progress = NULL_PROGRESS,
) -> DemoResult:
    """Run the demonstration in ``out_dir`` (must be absent or empty)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir} is not empty; give a new folder for the demo")
    if patients < 20 or novel < 1 or copies < 1:
        raise InputError("the demo needs at least 20 patients, 1 novel image and 1 copy")
    generate_phantom(out_dir / "phantom", patients=patients, visits=2, size=size, seed=seed, progress=progress)
    write_split(out_dir / "phantom", out_dir / "split", holdout_fraction=0.5, seed=seed, progress=progress)
    train, holdout = out_dir / "split" / "train", out_dir / "split" / "holdout"
    shutil.rmtree(out_dir / "phantom")

    rng = np.random.default_rng(seed)
    train_records = scan_folder(train)
    images = [render_visit(PhantomPatient.from_seed(seed + 1, i), visit=0, size=size, seed=seed + 1)[0]
              for i in range(novel)]
    sources = rng.choice(len(train_records), size=min(copies, len(train_records)), replace=False)
    images += [random_copy(load_image(train_records[int(j)].path), rng, family="combined")[0] for j in sources]
    order = rng.permutation(len(images))
    release = out_dir / "release"
    planted = []
    for pos, i in enumerate(order):
        name = f"synthetic_{pos:04d}.png"
        atomic_write_bytes(release / name, encode_png(images[i]))
        if i >= novel:
            planted.append(name)
    result = audit_release(release_dir=release, out_dir=out_dir / "report", policy=load_shipped_policy(policy),
                           train_dir=train, holdout_dir=holdout, cache_dir=out_dir / "cache", progress=progress)
    failed = {img.file_name for img in result.report.images if img.verdict == "fail"}
    return DemoResult(
        audit=result,
        planted=tuple(sorted(planted)),
        caught=tuple(sorted(failed & set(planted))),
        false_alarms=tuple(sorted(failed - set(planted))),
    )
