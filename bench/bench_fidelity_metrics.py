"""Speed of the fidelity metrics on random features, against reference implementations in the same run.

    .venv/bin/python bench/bench_fidelity_metrics.py [--dim 64] [--sizes 10000 100000] [--skip-baselines]

Random Gaussian features (real ~ N(0, I), fake ~ N(0.1, 1.1^2 I)), n real x n fake, float32 as an extractor gives
them. Each metric's point estimate (no bootstrap) is timed once; baselines are the packages the tests compare
against, where they fit in memory (prdc builds three full n x n float32 distance matrices: 1.2 GB at 10k,
120 GB at 100k; authenticity's baseline is scikit-learn brute-force k-NN as in synthcity). The last rows time
``fidelity_metrics`` with its bootstrap at the smallest size. KD is subset-based by definition (100 subsets of
1000), so its cost does not grow with n and its value moves slightly with the seed; all other metrics are exact.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
from cleanfid.fid import fid_from_feats
from cleanfid.fid import kernel_distance as cleanfid_kernel_distance
from prdc import compute_prdc
from sklearn.neighbors import NearestNeighbors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table  # noqa: E402
from synfundus_guard.fidelity.metrics import (authenticity, fidelity_metrics, frechet_distance,  # noqa: E402
                                              kernel_distance, prdc)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    with redirect_stdout(io.StringIO()):  # prdc prints its sizes
        value = fn(*args, **kwargs)
    return value, time.perf_counter() - t0


def cleanfid_fd(real: np.ndarray, fake: np.ndarray) -> float:
    return float(fid_from_feats(real, fake))


def cleanfid_kd(real: np.ndarray, fake: np.ndarray) -> float:
    np.random.seed(0)
    return cleanfid_kernel_distance(real, fake, num_subsets=100, max_subset_size=1000)


def sklearn_authenticity(train: np.ndarray, fake: np.ndarray) -> float:
    gap = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(train).kneighbors(train)[0][:, 1]
    dist, idx = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(train).kneighbors(fake)
    return float(np.mean(dist[:, 0] > gap[idx[:, 0]]))


def prdc_baseline(real: np.ndarray, fake: np.ndarray) -> dict:
    return compute_prdc(real, fake, nearest_k=5)


def fmt(value: object) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k[:4]}={float(v):.4f}" for k, v in value.items())
    return f"{float(value):.6g}"


def bench(n: int, dim: int, baselines: bool) -> tuple[list[list[object]], float]:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(n, dim)).astype(np.float32)
    fake = (rng.normal(size=(n, dim)) * 1.1 + 0.1).astype(np.float32)
    train = rng.normal(size=(n, dim)).astype(np.float32)
    cases = [("fd", "exact", lambda: frechet_distance(real, fake), "clean-fid sqrtm",
              lambda: cleanfid_fd(real, fake), True),
             ("kd", "subsets", lambda: kernel_distance(real, fake)[0], "clean-fid kernel_distance",
              lambda: cleanfid_kd(real, fake), True),
             ("prdc", "exact", lambda: prdc(real, fake, k=5), "prdc.compute_prdc",
              lambda: prdc_baseline(real, fake), n <= 20_000),
             ("authenticity", "exact", lambda: authenticity(train, fake), "sklearn brute k-NN",
              lambda: sklearn_authenticity(train, fake), n <= 20_000)]
    rows, total = [], 0.0
    for name, kind, ours, base_name, base, base_fits in cases:
        value, secs = timed(ours)
        total += secs
        if baselines and base_fits:
            ref, ref_secs = timed(base)
            base_cell, ratio, ref_cell = f"{ref_secs:.2f}", f"{ref_secs / secs:.1f}x", fmt(ref)
        else:
            base_cell, ratio, ref_cell = "n/a (memory)" if not base_fits else "skipped", "", ""
        rows.append([f"{n}x{n}", name, kind, f"{secs:.2f}", base_name, base_cell, ratio, fmt(value), ref_cell])
    rows.append([f"{n}x{n}", "all points", "", f"{total:.2f}", "", "", "", "", ""])
    return rows, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        size_rows, _ = bench(n, args.dim, not args.skip_baselines)
        rows += size_rows
        table(f"fidelity metrics, dim {args.dim} (seconds, 2 cores)",
              ["size", "metric", "kind", "ours_s", "baseline", "base_s", "speedup", "ours", "baseline value"], rows)
    n = min(args.sizes)
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(n, args.dim)), rng.normal(size=(n, args.dim)) * 1.1 + 0.1
    for n_boot in (0, args.n_boot):
        _, secs = timed(fidelity_metrics, real, fake, train=real, n_boot=n_boot)
        rows.append([f"{n}x{n}", f"fidelity_metrics n_boot={n_boot}", "", f"{secs:.2f}", "", "", "", "", ""])
    table(f"fidelity metrics, dim {args.dim} (seconds, 2 cores)",
          ["size", "metric", "kind", "ours_s", "baseline", "base_s", "speedup", "ours", "baseline value"], rows)


if __name__ == "__main__":
    main()
