"""Membership tests under the null (issue 13): releases independent of the training set must centre at AUC 0.5,
and the public policy must pass them at realistic sizes while failing underpowered ones closed.

    .venv/bin/python bench/bench_membership_null.py [--reps 30] [--quick]

Per data source (the phantom, and the second, independent renderer ``bench/alt_fundus.py``): members (training
images, 2 visits per patient), non-members (holdout patients) and a "release" of other patients are embedded
once with the built-in pixel embedder; then, for each set size, ``--reps`` draws (disjoint within each pass over
the pools; images, not whole patients, are drawn) run both black-box
attacks and the report's evaluation (patient bootstrap, 200 resamples) and the public policy judges them.
Printed per size: mean image-level AUC of each attack and its spread, how often the old rule (upper bound <=
0.6) and the shipped rule (point estimate with the power rule, ``policies/evaluate.py``) pass the release.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.alt_fundus import render as alt_render  # noqa: E402
from bench.common import table  # noqa: E402
from synfundus_guard.audit.membership.blackbox import density_ratio_scores, nearest_synthetic_scores  # noqa: E402
from synfundus_guard.audit.membership.evaluation import membership_sections  # noqa: E402
from synfundus_guard.data.phantom import PhantomPatient, render_visit  # noqa: E402
from synfundus_guard.embed.pixel import PixelEmbedder  # noqa: E402
from synfundus_guard.policies import load_policy  # noqa: E402
from synfundus_guard.policies.evaluate import evaluate_release  # noqa: E402
from synfundus_guard.results import Report  # noqa: E402

PUBLIC = load_policy("public")


def features(render, seed: int, patients: int, visits: int) -> tuple[np.ndarray, np.ndarray]:
    emb = PixelEmbedder()
    imgs, pids = [], []
    for i in range(patients):
        for v in range(visits):
            imgs.append(render(seed, i, v))
            pids.append(f"S{seed}-P{i}")
    feats = np.concatenate([emb.features(imgs[k:k + 32]) for k in range(0, len(imgs), 32)])
    return feats.astype(np.float64), np.array(pids)


def phantom(seed: int, i: int, v: int) -> np.ndarray:
    return render_visit(PhantomPatient.from_seed(seed, i), visit=v, size=128, seed=seed)[0]


def alt(seed: int, i: int, v: int) -> np.ndarray:
    return alt_render(seed, i, v, 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = [(30, 20), (60, 40), (121, 80), (300, 200)]
    pool = (400, 300, 600)
    if args.quick:
        args.reps, sizes, pool = 5, [(60, 40), (121, 80)], (70, 50, 150)
    rows = []
    for source, render in (("phantom", phantom), ("other renderer", alt)):
        t0 = time.perf_counter()
        members, mp = features(render, 41, pool[0], 2)
        holdout, hp = features(render, 42, pool[1], 2)
        release, _ = features(render, 43, pool[2], 1)
        print(f"{source}: features in {time.perf_counter() - t0:.0f} s")
        rng = np.random.default_rng(0)

        def draws(n_pool: int, n: int) -> list[np.ndarray]:
            """``args.reps`` samples of ``n``: disjoint within each pass over the pool (so that the mean over draws
            measures the estimator, not one pool's luck), the pool reshuffled between passes."""
            out: list[np.ndarray] = []
            while len(out) < args.reps:
                perm = rng.permutation(n_pool)
                out += [perm[k:k + n] for k in range(0, n_pool - n + 1, n)]
            return out[:args.reps]

        for n_m, n_h in sizes:
            m_draws, h_draws = draws(len(members), min(n_m, len(members))), draws(len(holdout), min(n_h, len(holdout)))
            s_draws = draws(len(release), min(2 * n_h, len(release)))
            aucs: dict[str, list[float]] = {"density-ratio": [], "nearest-synthetic": []}
            old_pass = new_pass = 0
            for rep in range(args.reps):
                mi, hi, si = m_draws[rep], h_draws[rep], s_draws[rep]
                q, qp = np.concatenate([members[mi], holdout[hi]]), np.concatenate([mp[mi], hp[hi]])
                is_member = np.r_[np.ones(len(mi)), np.zeros(len(hi))].astype(bool)
                attacks = {"density-ratio": density_ratio_scores(release[si], holdout[hi], hp[hi], q, qp, dim=8,
                                                                 seed=rep),
                           "nearest-synthetic": nearest_synthetic_scores(release[si], q, dim=64)}
                sections = membership_sections(attacks, is_member, list(qp), families={}, n_boot=200, seed=rep)
                for name, m in sections[0]["attacks"].items():
                    aucs[name].append(m["auc"]["point"])
                old_pass += all(m["auc"]["upper"] <= 0.6 and m["tpr_at_1pct_fpr"]["upper"] <= 0.05
                                for sec in sections for m in sec["attacks"].values())
                report = Report(policy=PUBLIC.fingerprint(), embedder={}, images=[], verdict="pending",
                                release_checks={"membership": sections})
                new_pass += evaluate_release(report, PUBLIC).verdict == "pass"
            d, n = np.array(aucs["density-ratio"]), np.array(aucs["nearest-synthetic"])
            rows.append([source, f"{len(mi)} / {len(hi)}", f"{d.mean():.3f} +- {d.std():.3f}",
                         f"{n.mean():.3f} +- {n.std():.3f}", f"{100 * old_pass / args.reps:.0f} %",
                         f"{100 * new_pass / args.reps:.0f} %"])
    table(f"Releases independent of the training set, {args.reps} draws per row (image level; pass = public policy)",
          ["source", "members / non-members", "density-ratio AUC", "nearest-synthetic AUC", "pass, upper-bound rule",
           "pass, shipped rule"], rows)


if __name__ == "__main__":
    main()
