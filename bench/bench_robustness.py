"""Robustness of the memorization check beyond the transforms it was designed for: copies and non-members.

    .venv/bin/python bench/bench_robustness.py [--patients 60] [--policy public]

Training set: half of ``--patients`` phantom patients (seed 5; two visits each) plus real or natural images shipped
with scikit-image (a fundus photograph, and non-fundus images standing in for X-ray/skin/histology-like frames
without a field-of-view disc); the other half is the holdout that calibrates the thresholds. Every image is
judged by the shipped ``MemorizationCheck`` as ``--policy`` builds it (its own quantiles, no number set here).

Positives: each transform applied to 8 training images (4 phantom patients, the retina photograph and three
natural images). Negatives: the same transform applied to 8 images the index never saw (phantom patients of
another seed, visits the holdout does not hold, and natural images not in the training set); a flag there is a
false positive. The ``identity`` row (the untransformed image) is the same-run baseline: a transform that the
check resists flags as many copies as it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi
from skimage import color
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import table  # noqa: E402
from synfundus_guard.audit.base import Candidate  # noqa: E402
from synfundus_guard.audit.memorization import MemorizationCheck  # noqa: E402
from synfundus_guard.audit.runner import build_checks, prepare_guard  # noqa: E402
from synfundus_guard.data.folder import write_image_folder  # noqa: E402
from synfundus_guard.data.fov import resize_image  # noqa: E402
from synfundus_guard.data.perturb import affine, jpeg, random_copy  # noqa: E402
from synfundus_guard.data.phantom import PhantomPatient, render_visit  # noqa: E402
from synfundus_guard.policies.schema import load_policy  # noqa: E402

S = 256


def rgb(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32) / 255.0
    return np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]


def natural(name: str) -> np.ndarray:
    img = rgb(getattr(skdata, name)())
    return resize_image(img, S, int(S * img.shape[1] / img.shape[0]))


def stamp(img: np.ndarray, text: str = "PATIENT 12345 2024-01-02") -> np.ndarray:
    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    dr = ImageDraw.Draw(im)
    dr.text((5, 5), text, fill=(255, 255, 255), font=ImageFont.load_default(size=14))
    dr.text((5, im.height - 20), text, fill=(255, 255, 0), font=ImageFont.load_default(size=12))
    return np.asarray(im, dtype=np.float32) / 255


def crop(img: np.ndarray, f: float = 0.85) -> np.ndarray:
    h, w = img.shape[:2]
    ch, cw = int(h * f), int(w * f)
    y, x = (h - ch) // 2 + 5, (w - cw) // 2 - 4
    return img[y:y + ch, x:x + cw]


def hue(img: np.ndarray) -> np.ndarray:
    hsv = color.rgb2hsv(img)
    hsv[..., 0] = (hsv[..., 0] + 0.05) % 1
    hsv[..., 1] *= 0.8
    return color.hsv2rgb(hsv).astype(np.float32)


def transforms(rng: np.random.Generator) -> dict:
    return {
        "identity": lambda i: i,
        "crop85": crop, "crop75": lambda i: crop(i, 0.75),
        "blur1.5": lambda i: np.stack([ndi.gaussian_filter(i[..., c], 1.5) for c in range(3)], 2),
        "downres": lambda i: resize_image(i, int(i.shape[0] * 0.55), int(i.shape[1] * 0.55)),
        "upres": lambda i: resize_image(i, int(i.shape[0] * 1.7), int(i.shape[1] * 1.7)),
        "hue/sat": hue, "grey": lambda i: np.repeat(i.mean(2, keepdims=True), 3, 2), "stamp": stamp,
        "jpeg40": lambda i: jpeg(i, 40), "vflip": lambda i: i[::-1].copy(), "rot90": lambda i: np.rot90(i).copy(),
        "rot15": lambda i: affine(i, dx=0, dy=0, angle=15, scale=1),
        "combined+stamp": lambda i: stamp(random_copy(i, rng)[0]),
        "pad": lambda i: np.pad(i, ((20, 20), (30, 30), (0, 0))),
        "aspect": lambda i: resize_image(i, i.shape[0], int(i.shape[1] * 1.2)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--policy", default="public")
    args = ap.parse_args()
    members_nat = ["camera", "astronaut", "chelsea", "coins"]
    others_nat = ["coffee", "rocket", "immunohistochemistry"]  # not cat: skimage's cat is chelsea
    train, hold = [], []
    for p in range(args.patients):
        pt, dest = PhantomPatient.from_seed(5, p), (train if p % 2 == 0 else hold)
        for v in range(2):
            dest.append((f"p{p}_{v}.png", render_visit(pt, visit=v, size=S, seed=5)[0], f"i{p}{v}", f"P{p}"))
    retina = resize_image(rgb(skdata.retina()), S, S)
    train.append(("retina.png", retina, "retina", "retina"))
    train += [(f"{k}.png", natural(k), k, k) for k in members_nat]
    root = Path(tempfile.mkdtemp())
    write_image_folder(root / "train", train)
    write_image_folder(root / "holdout", hold)
    policy = load_policy(args.policy)
    guard = prepare_guard(train_dir=root / "train", holdout_dir=root / "holdout", k=policy.memorization.k,
                          cache_dir=root / "c")
    check = next(c for c in build_checks(policy=policy, guard=guard) if isinstance(c, MemorizationCheck))
    print(f"policy {policy.name}: embedding threshold {check.embedding_threshold:.3f}, pixel threshold "
          f"{check.pixel_threshold:.3f} (holdout quantiles {policy.memorization.embedding_quantile}, "
          f"{policy.memorization.pixel_quantile}; {len(hold)} holdout images)")
    members = [("phantom", train[2 * i][1]) for i in range(4)] + [("retina", retina)]
    members += [("natural", natural(k)) for k in members_nat[:3]]
    nonmembers = [("phantom", render_visit(PhantomPatient.from_seed(77, i), visit=0, size=S, seed=77)[0])
                  for i in range(4)]
    nonmembers += [("fundus (other seed, visit 1)", render_visit(PhantomPatient.from_seed(78, 0), visit=1, size=S,
                                                                 seed=78)[0])]
    nonmembers += [("natural", natural(k)) for k in others_nat]
    rows, t0, n = [], time.perf_counter(), 0
    for name, fn in transforms(np.random.default_rng(0)).items():
        pos = check.check_batch([Candidate(f"m{i}.png", fn(img).astype(np.float32))
                                 for i, (_, img) in enumerate(members)])
        neg = check.check_batch([Candidate(f"n{i}.png", fn(img).astype(np.float32))
                                 for i, (_, img) in enumerate(nonmembers)])
        n += len(pos) + len(neg)
        by_kind = {kind: [f.flagged for (k, _), f in zip(members, pos) if k == kind] for kind in ("phantom",
                                                                                                 "retina", "natural")}
        rows.append([name, *(f"{sum(v)}/{len(v)}" for v in by_kind.values()),
                     f"{sum(f.flagged for f in pos)}/{len(pos)}", f"{sum(f.flagged for f in neg)}/{len(neg)}",
                     f"{min(f.scores['memorization.pixel_ncc'] for f in pos):.2f}",
                     f"{max(f.scores['memorization.pixel_ncc'] for f in neg):.2f}"])
    table(f"Transformed copies of training images flagged (TP) and transformed non-members flagged (FP) by the "
          f"shipped memorization check under {policy.name}",
          ["transform", "phantom", "retina", "natural", "copies flagged", "non-members flagged",
           "min copy pixel", "max non-member pixel"], rows)
    print(f"{n} images in {time.perf_counter() - t0:.0f} s ({n / (time.perf_counter() - t0):.1f} img/s)")


if __name__ == "__main__":
    main()
