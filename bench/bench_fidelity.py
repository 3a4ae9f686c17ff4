"""Fidelity and utility metrics rank releases with known defects, per data source; the default model's numbers.

Real data: phantom fundus photographs of patients the model never saw (``--real``) and a training set
(``--train``). Releases, each as large as the real set:

* ``diverse``: new phantom patients (the renderer's own distribution: what a faithful generator would draw);
* ``other renderer``: new patients from the second, independent renderer (``bench/alt_fundus.py``): a
  domain shift that fidelity metrics should see;
* ``collapsed``: many photographs of only 5 patients (mode collapse);
* ``blurred``: the diverse set blurred (Gaussian, sigma 1.5 px at 128 px);
* ``shuffled labels``: the diverse set with its labels (``--label``, default dr_grade) permuted;
* ``copies``: transformed copies of training photographs (memorization);
* ``default model``: samples of the built-in default model against its own phantom holdout (at its 64 px), and
  of any ``--compare-model`` (e.g. the earlier 32 px default: ``git show`` it into a folder) against the same.

Expected, against the faithful ``diverse`` release: collapse -> lower coverage and recall; blur -> higher FD and
lower precision; shuffled labels -> lower label consistency (towards chance); copies -> lower authenticity. The
second table says, per metric, whether the ranking holds and whether the 95 % CIs separate. (Blur also ruins
recall and coverage, more than collapse does: each defect is compared with the faithful release, not with the
other defects.)

    .venv/bin/python bench/bench_fidelity.py [--n 600] [--size 128] [--bootstrap 200] [--default-model 100]
        [--compare-model OLD_MODEL/] [--default-only]
    .venv/bin/python bench/bench_fidelity.py --speed 512     # feature extraction img/s at 256 px: 1 process vs all

Numbers of each run are what that run measured; nothing here is a fitted threshold.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.alt_fundus import render as alt_render  # noqa: E402
from bench.common import table  # noqa: E402
from synfundus_guard.data.perturb import random_copy  # noqa: E402
from synfundus_guard.data.phantom import PhantomPatient, render_visit  # noqa: E402
from synfundus_guard.embed.stats import StatsEmbedder  # noqa: E402
from synfundus_guard.fidelity.metrics import fidelity_metrics  # noqa: E402
from synfundus_guard.fidelity.utility import label_consistency, utility  # noqa: E402

METRICS = ("fd", "kd", "precision", "recall", "density", "coverage", "authenticity")
EXPECT = {  # defect -> (metric, the release that must be worse on it than the faithful "diverse" release)
    "collapse": [("coverage", "collapsed"), ("recall", "collapsed")],
    "blur": [("fd", "blurred"), ("precision", "blurred")],
    "copies": [("authenticity", "copies")],
    "shuffled labels": [("label_consistency", "shuffled labels")],
}


def _phantoms(seed: int, patients: range, visits: int, size: int,
              label: str) -> tuple[list[np.ndarray], list[str], list[str]]:
    imgs, grades, pids = [], [], []
    for p in patients:
        patient = PhantomPatient.from_seed(seed, p)
        for v in range(visits):
            img, lab = render_visit(patient, visit=v, size=size, seed=seed)
            imgs.append(img)
            grades.append(str(lab[label]))
            pids.append(f"{seed}-{p}")
    return imgs, grades, pids


def build(n: int, size: int, label: str) -> dict[str, dict]:
    """Image sets and their ``label`` labels."""
    visits = 2
    sets = {}
    for name, seed in (("train", 101), ("real", 202), ("diverse", 303)):
        imgs, grades, pids = _phantoms(seed, range(n // visits), visits, size, label)
        sets[name] = {"images": imgs, "labels": np.asarray(grades), "patients": np.asarray(pids)}
    rng = np.random.default_rng(0)
    collapsed, cgrades, _ = _phantoms(404, range(5), n // 5, size, label)
    sets["collapsed"] = {"images": collapsed, "labels": np.asarray(cgrades)}
    sets["blurred"] = {"images": [ndi.gaussian_filter(im, (1.5, 1.5, 0)) for im in sets["diverse"]["images"]],
                       "labels": sets["diverse"]["labels"]}
    shuffled = rng.permutation(sets["diverse"]["labels"])
    sets["shuffled labels"] = {"images": sets["diverse"]["images"], "labels": shuffled}
    picks = rng.choice(len(sets["train"]["images"]), n, replace=True)
    sets["copies"] = {"images": [random_copy(sets["train"]["images"][i], rng, family="combined")[0] for i in picks],
                      "labels": sets["train"]["labels"][picks]}
    alt = [alt_render(505, i, 0, size) for i in range(n)]
    sets["other renderer"] = {"images": alt, "labels": None}
    return sets


def speed(n: int) -> None:
    """Feature extraction from PNG files at 256 px: one process (baseline) vs one per core."""
    import os
    import tempfile

    from synfundus_guard.data.images import encode_png
    from synfundus_guard.fidelity.extract import extract_features

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):
            path = Path(tmp) / f"{i:05d}.png"
            path.write_bytes(encode_png(render_visit(PhantomPatient.from_seed(7, i), visit=0, size=256)[0]))
            paths.append(path)
        rows, base = [], None
        for workers in (1, os.cpu_count() or 1):
            t0 = time.perf_counter()
            extract_features(paths, workers=workers)
            rate = n / (time.perf_counter() - t0)
            base = base or rate
            rows.append([workers, f"{rate:.0f}", f"{rate / base:.2f}x"])
    table(f"stats features from {n} PNG files at 256 px (decode included; worker start-up included)",
          ["processes", "img/s", "vs 1 process"], rows)


def default_model(n: int, n_boot: int, others: list[Path] = ()) -> None:
    """The built-in default model's samples (and those of ``others``, e.g. an earlier default model) against the
    default model's own phantom holdout and training split."""
    from synfundus_guard.audit.runner import default_cache_dir
    from synfundus_guard.data.images import load_image
    from synfundus_guard.generation.default import training_data_dir
    from synfundus_guard.generation.model import DEFAULT_MODEL_DIR, load_model
    from synfundus_guard.generation.sample import sample_images

    model = load_model(DEFAULT_MODEL_DIR)
    data = training_data_dir(model, cache_dir=default_cache_dir())
    emb = StatsEmbedder()
    real = emb.features([load_image(data / f) for f in model.card.data.holdout_files])
    train = emb.features([load_image(data / f) for f in model.card.data.train_files])
    rows = []
    for name, candidate in [("default model", model), *((str(p), load_model(p)) for p in others)]:
        t0 = time.perf_counter()
        samples = emb.features([s.image for s in sample_images(candidate, n=n, seed=0)])
        print(f"{name}: {n} samples at {candidate.resolution} px in {time.perf_counter() - t0:.0f} s (CPU)")
        m = fidelity_metrics(real, samples, train=train, n_boot=n_boot, seed=0)
        rows.append([f"{name} ({candidate.resolution} px)", *(_cell(m[c]) if c in m else "-" for c in METRICS)])
        for w in m["warnings"]:
            print(f"warning ({name}): {w}")
    ref = fidelity_metrics(real, train[:n], n_boot=n_boot, seed=0)
    table(f"Default model vs its phantom holdout ({len(real)} images); reference: its training images as a "
          "'release'", ["release", *METRICS],
          [*rows, ["training images", *(_cell(ref[c]) if c in ref else "-" for c in METRICS)]])


def _cell(m: dict) -> str:
    return f"{m['point']:.3g} [{m['lower']:.3g}, {m['upper']:.3g}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600,
                    help="images per set (at 300 the dr_grade label-consistency CIs of the shuffled and faithful "
                         "releases touch; at 600 they separate)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--label", default="dr_grade", choices=("dr_grade", "amd", "glaucoma_suspect"),
                    help="the conditioning label of the label-consistency and utility columns")
    ap.add_argument("--speed", type=int, default=0, help="only measure feature extraction on this many files")
    ap.add_argument("--default-model", type=int, default=100, help="samples of the built-in model (0: skip)")
    ap.add_argument("--compare-model", type=Path, action="append", default=[],
                    help="another model folder sampled and scored beside the default model (repeatable)")
    ap.add_argument("--default-only", action="store_true", help="only the default-model table")
    args = ap.parse_args()
    if args.speed:
        speed(args.speed)
        return
    if args.default_only:
        default_model(args.default_model, args.bootstrap, args.compare_model)
        return
    t0 = time.perf_counter()
    sets = build(args.n, args.size, args.label)
    print(f"rendered {sum(len(s['images']) for s in sets.values())} images in {time.perf_counter() - t0:.0f} s")
    emb = StatsEmbedder()
    t0 = time.perf_counter()
    feats = {name: emb.features(s["images"]) for name, s in sets.items()}
    n_feat = sum(len(f) for f in feats.values())
    print(f"features: {n_feat} images in {time.perf_counter() - t0:.0f} s ({n_feat / (time.perf_counter() - t0):.0f} "
          f"img/s, one process, {args.size} px)")
    real, train = feats["real"], feats["train"]
    releases = ["diverse", "other renderer", "collapsed", "blurred", "shuffled labels", "copies"]
    results: dict[str, dict] = {}
    for name in releases:
        m = fidelity_metrics(real, feats[name], train=train, n_boot=args.bootstrap, seed=0)
        if sets[name]["labels"] is not None:
            m["label_consistency"] = label_consistency(
                real_x=train, real_y=sets["train"]["labels"], fake_x=feats[name], fake_y=sets[name]["labels"],
                patients=sets["train"]["patients"], seed=0, n_boot=args.bootstrap)["synthetic"]["balanced_accuracy"]
            tstr = utility(real_train_x=train, real_train_y=sets["train"]["labels"], real_test_x=real,
                           real_test_y=sets["real"]["labels"], fake_x=feats[name], fake_y=sets[name]["labels"],
                           seed=0, n_boot=args.bootstrap)
            m["tstr_auroc"] = tstr["tstr"]
        results[name] = m
    cols = [*METRICS, "label_consistency", "tstr_auroc"]
    table(f"Releases of {args.n} images vs {len(real)} real ({args.size} px, stats features, label {args.label}, "
          "95 % bootstrap CIs)",
          ["release", *cols], [[name, *(_cell(results[name][c]) if c in results[name] else "-" for c in cols)]
                               for name in releases])
    rows = []
    reference = results["diverse"]
    for defect, checks in EXPECT.items():
        for metric, worse in checks:
            higher = metric not in ("fd", "kd")
            d, r = results[worse][metric], reference[metric]
            holds = (d["point"] < r["point"]) if higher else (d["point"] > r["point"])
            separate = (d["upper"] < r["lower"]) if higher else (d["lower"] > r["upper"])
            rows.append([defect, metric, worse, _cell(d), _cell(r), "yes" if holds else "NO",
                         "yes" if separate else "no"])
    table("Does each metric see its defect? (the defective release against the faithful 'diverse' one)",
          ["defect", "metric", "release", "its value", "diverse", "worse", "CIs separate"], rows)
    if args.default_model:
        default_model(args.default_model, args.bootstrap, args.compare_model)


if __name__ == "__main__":
    main()
