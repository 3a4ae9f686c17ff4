"""Membership-inference acceptance benchmark: three tiny DDPMs, every attack, AUC with CIs, attack throughput.

    .venv/bin/python bench/bench_membership.py [--work DIR] [--bootstrap 200] [--release 200]

Models (trained with ``synfundus_guard.generation.train.train_model``; data from the phantom generator, split
patient-disjoint with ``write_split``; the training card's own held-out patients join the non-members):

* ``memorizing`` — 8 patients (16 images), 2000 steps at batch 16: every image seen ~2000 times.
  Expected: the best white-box attack reaches AUC >= 0.9.
* ``many-patients`` — 80 patients (160 images), 60 steps (~6 passes over the data). Expected: the AUC
  confidence interval of every attack covers 0.5.
* ``dp`` — the same data, DP-SGD with Opacus at epsilon = 8 (delta 1e-5), 300 steps. Expected: CIs cover 0.5.

All models: ``UNet2DModel`` with ``block_out_channels=(16, 32)`` at 16x16 pixels. For the black-box attacks each
model samples a release (DDIM, 25 steps); the 16x16 samples are upsampled to 64x64 when written, because the
toolkit refuses images under 32 pixels. Nothing here is tuned to pass: attacks use their published settings.
Models and data are kept in ``--work`` (re-runs reuse them; delete the folder to start over).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synfundus_guard.audit.membership import membership_report, score_membership  # noqa: E402
from synfundus_guard.data.images import encode_png  # noqa: E402
from synfundus_guard.data.phantom import generate_phantom  # noqa: E402
from synfundus_guard.data.split import write_split  # noqa: E402
from synfundus_guard.fsutil import atomic_write_bytes  # noqa: E402
from synfundus_guard.generation.dp import DPConfig  # noqa: E402
from synfundus_guard.errors import InputError, ModelError  # noqa: E402
from synfundus_guard.generation.model import load_model, model_fingerprint  # noqa: E402
from synfundus_guard.generation.sample import sample_images  # noqa: E402
from synfundus_guard.generation.train import train_model  # noqa: E402

CHANNELS, RESOLUTION = (16, 32), 16


@dataclass(frozen=True)
class Scenario:
    """One model of the benchmark."""

    name: str
    dataset: str
    """Phantom dataset key (see :data:`DATASETS`)."""
    steps: int
    dp: DPConfig | None = None


DATASETS = {
    # key: (patients, visits, phantom seed, share of patients in the holdout folder)
    "few": (40, 2, 0, 0.75),
    "many": (200, 2, 1, 0.5),
}
SCENARIOS = (
    Scenario("memorizing", "few", steps=2000),
    Scenario("many-patients", "many", steps=60),
    Scenario("dp", "many", steps=300, dp=DPConfig(target_epsilon=8.0, delta=1e-5)),
)


def dataset(work: Path, key: str) -> tuple[Path, Path]:
    """(train folder, holdout folder) of a phantom dataset, generated once."""
    patients, visits, seed, holdout = DATASETS[key]
    split = work / f"data-{key}" / "split"
    if not (split / "train").is_dir():
        raw = work / f"data-{key}" / "all"
        if not (raw / "labels.csv").is_file():
            generate_phantom(raw, patients=patients, visits=visits, size=64, seed=seed)
        write_split(raw, split, holdout_fraction=holdout, seed=seed)
    return split / "train", split / "holdout"


def train(work: Path, sc: Scenario, train_dir: Path) -> tuple[Path, float]:
    """Train (or reuse) the scenario's model; returns its folder and the training seconds of this call."""
    out = work / f"model-{sc.name}"
    kwargs = dict(train_dir=train_dir, out_dir=out, steps=sc.steps, resolution=RESOLUTION, batch_size=16, lr=1e-3,
                  seed=0, channels=CHANNELS, holdout_fraction=0.2, dp=sc.dp, checkpoint_every=500)
    try:
        res = train_model(**kwargs)
    except (InputError, ModelError) as exc:  # a model left by another version of the trainer: train it again
        if not out.is_dir() or not ("already holds" in str(exc) or "training card" in str(exc)):
            raise
        print(f"  {sc.name}: retraining ({exc})", flush=True)
        shutil.rmtree(out)
        res = train_model(**kwargs)
    return out, res.seconds


def release(work: Path, model_dir: Path, n: int) -> tuple[Path, float]:
    """Sample ``n`` images into a release folder (once per model); returns it and the sampling images/s."""
    out = work / f"release-{model_dir.name}-{model_fingerprint(model_dir)[:12]}-{n}"
    if out.is_dir() and len(list(out.glob("*.png"))) == n:
        return out, 0.0
    model = load_model(model_dir)
    t0 = time.perf_counter()
    for s in sample_images(model, n=n, seed=0, batch_size=50):
        img = Image.fromarray((np.clip(s.image, 0, 1) * 255 + 0.5).astype(np.uint8)).resize((64, 64), Image.BILINEAR)
        atomic_write_bytes(out / f"sample_{s.index:05d}.png", encode_png(np.asarray(img, dtype=np.float32) / 255))
    return out, n / (time.perf_counter() - t0)


def run_scenario(work: Path, sc: Scenario, *, n_release: int, n_boot: int, blackbox: bool = True) -> dict:
    """Train, sample and attack one scenario; returns the report sections, timings and model facts."""
    train_dir, holdout_dir = dataset(work, sc.dataset)
    model_dir, train_s = train(work, sc, train_dir)
    rel, sample_ips = release(work, model_dir, n_release) if blackbox else (None, 0.0)
    scores = score_membership(train_dir=train_dir, holdout_dir=holdout_dir, model_dir=model_dir, release_dir=rel,
                              max_per_class=None)
    t0 = time.perf_counter()
    sections = membership_report(scores, n_boot=n_boot)
    card = load_model(model_dir).card
    n_images = len(scores.sets.records)
    return {"scenario": sc, "sections": sections, "seconds": scores.seconds, "n_images": n_images,
            "embed_seconds": scores.embed_seconds, "n_release": n_release, "train_seconds": train_s,
            "sample_ips": sample_ips, "report_seconds": time.perf_counter() - t0,
            "epsilon": card.dp.epsilon if card and card.dp else None}


from bench.common import table  # noqa: E402


def ci(m: dict) -> str:
    return f"{m['point']:.3f} [{m['lower']:.3f}, {m['upper']:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "synfundus-bench-membership")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--release", type=int, default=200, help="synthetic images sampled per model")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {device}; work folder: {args.work}")
    results = []
    for sc in SCENARIOS:
        t0 = time.perf_counter()
        results.append(run_scenario(args.work, sc, n_release=args.release, n_boot=args.bootstrap))
        print(f"  {sc.name}: done in {time.perf_counter() - t0:.0f} s", flush=True)

    rows = []
    for r in results:
        for sec in r["sections"]:
            for name, m in sec["attacks"].items():
                rows.append([r["scenario"].name, sec["level"], name, m["family"],
                             f"{m['n_members']}/{m['n_nonmembers']}",
                             ci(m["auc"]), ci(m["tpr_at_1pct_fpr"]), f"{m['balanced_accuracy']['point']:.3f}",
                             m["direction"], f"{m['auc_published_direction']:.3f}"])
    table(f"Attack results (95% bootstrap CIs over patients, {args.bootstrap} resamples)",
          ["model", "level", "attack", "family", "members/non", "AUC [CI]", "TPR@1%FPR [CI]", "bal.acc",
           "direction", "AUC as published"], rows)

    rows = []
    for r in results:
        sc = r["scenario"]
        img = {n: m for n, m in r["sections"][0]["attacks"].items()}
        best = max(img, key=lambda n: img[n]["auc"]["point"])
        eps = f"{r['epsilon']:.2f}" if r["epsilon"] is not None else "-"
        covers = all(m["auc"]["lower"] <= 0.5 <= m["auc"]["upper"] for sec in r["sections"]
                     for m in sec["attacks"].values())
        wb = [n for n in img if img[n]["family"] == "white-box"]
        best_wb = max(wb, key=lambda n: img[n]["auc"]["point"])
        rows.append([sc.name, sc.steps, eps, f"{best_wb} {img[best_wb]['auc']['point']:.3f}",
                     f"{best} {img[best]['auc']['point']:.3f}", "yes" if covers else "no",
                     f"{r['train_seconds']:.0f}" if r["train_seconds"] else "(reused)"])
    table("Acceptance: memorizing -> best white-box AUC >= 0.9; many-patients and dp -> every AUC CI covers 0.5",
          ["model", "steps", "epsilon", "best white-box AUC (image)", "best AUC (image)", "all CIs cover 0.5",
           "train s"], rows)

    rows = []
    for r in results:
        for name, secs in r["seconds"].items():
            rows.append([r["scenario"].name, name, r["n_images"], f"{secs:.2f}", f"{r['n_images'] / secs:.0f}"])
        if r["embed_seconds"]:
            n_embed = r["n_images"] + r["n_release"]
            rows.append([r["scenario"].name, "(black-box embedding: release + members + non-members)", n_embed,
                         f"{r['embed_seconds']:.2f}", f"{n_embed / r['embed_seconds']:.0f}"])
        rows.append([r["scenario"].name, "(bootstrap, all attacks, both levels)", r["n_images"],
                     f"{r['report_seconds']:.2f}", "-"])
        if r["sample_ips"]:
            rows.append([r["scenario"].name, "(DDIM sampling of the release, 25 steps)", args.release,
                         f"{args.release / r['sample_ips']:.2f}", f"{r['sample_ips']:.0f}"])
    table(f"Throughput on {device} (white-box: UNet {CHANNELS} at {RESOLUTION}px; black-box: scoring only, "
          "embedding excluded)", ["model", "attack", "images", "seconds", "images/s"], rows)


if __name__ == "__main__":
    main()
