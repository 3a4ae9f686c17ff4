"""Small real datasets shared by the audit tests (phantom train/holdout folders + a synthetic release)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synfundus_guard.data.folder import write_image_folder
from synfundus_guard.data.images import encode_png
from synfundus_guard.data.perturb import random_copy
from synfundus_guard.data.phantom import PhantomPatient, render_visit
from synfundus_guard.fsutil import atomic_write_bytes

SIZE = 128
SEED = 11




def make_dataset(root: Path, *, patients: int = 30, novel: int = 6, copies: int = 4) -> dict[str, Path]:
    """train/ (even patients), holdout/ (odd), release_clean/ (novel patients), release_leaky/ (+ copies)."""
    train, holdout = [], []
    for p in range(patients):
        patient = PhantomPatient.from_seed(SEED, p)
        dest = train if p % 2 == 0 else holdout
        for v in range(2):
            img, _ = render_visit(patient, visit=v, size=SIZE, seed=SEED)
            dest.append((f"train_p{p:03d}_v{v}.png" if dest is train else f"hold_p{p:03d}_v{v}.png", img,
                         f"IMG-{p:03d}-{v}", f"PAT-{p:03d}"))
    write_image_folder(root / "train", train)
    write_image_folder(root / "holdout", holdout)
    novel_imgs = [render_visit(PhantomPatient.from_seed(SEED + 500, i), visit=0, size=SIZE, seed=SEED + 500)[0]
                  for i in range(novel)]
    rng = np.random.default_rng(3)
    copy_imgs = [random_copy(train[int(j)][1], rng, family="combined")[0]
                 for j in rng.choice(len(train), copies, replace=False)]
    clean = root / "release_clean"
    leaky = root / "release_leaky"
    for folder, imgs in ((clean, novel_imgs), (leaky, novel_imgs + copy_imgs)):
        folder.mkdir()
        for i, img in enumerate(imgs):
            atomic_write_bytes(folder / f"synthetic_{i:03d}.png", encode_png(img))
    return {"root": root, "train": root / "train", "holdout": root / "holdout", "clean": clean, "leaky": leaky,
            "n_novel": novel, "n_copies": copies}
