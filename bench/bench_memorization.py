"""Planted-copy benchmark for the memorization check, search throughput and end-to-end audit speed.

    .venv/bin/python bench/bench_memorization.py [--patients 200] [--novel 1200] [--copies 100] [--size 256]

1. Phantom patients (2 visits each) are split patient-disjoint into train and holdout; the real photograph
   ``skimage.data.retina()`` is planted among the training images.
2. The "synthetic" set: images of novel patients (negatives) and transformed copies of training images
   (positives), per transform family, plus transformed copies of the real photo.
3. Thresholds come from holdout calibration under the shipped ``public`` policy (nothing tuned here). The table
   shows recall and false-positive rate at that operating point, and the ROC-based recall at FPR <= 0.1 %.
4. Search throughput: FAISS (flat, HNSW) against scikit-learn brute force and a numpy matmul baseline measured
   in the same run. 5. End-to-end ``audit_release`` images/s with a warm index.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage import data as skdata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synfundus_guard.audit.memorization import score_images  # noqa: E402
from synfundus_guard.audit.runner import audit_release, prepare_guard  # noqa: E402
from synfundus_guard.data.fov import resize_image  # noqa: E402
from synfundus_guard.data.folder import write_image_folder  # noqa: E402
from synfundus_guard.data.images import encode_png  # noqa: E402
from synfundus_guard.data.perturb import FAMILIES, random_copy  # noqa: E402
from synfundus_guard.data.phantom import PhantomPatient, render_visit  # noqa: E402
from synfundus_guard.fsutil import atomic_write_bytes  # noqa: E402
from synfundus_guard.index.store import make_faiss  # noqa: E402
from synfundus_guard.policies import load_policy  # noqa: E402


from bench.common import recall_at_k, table  # noqa: E402




def retina(size: int) -> np.ndarray:
    return resize_image(skdata.retina().astype(np.float32) / 255.0, size, size)


def roc_recall_at(neg: np.ndarray, pos: np.ndarray, max_fpr: float) -> tuple[float, float]:
    """Best recall with FPR <= max_fpr over thresholds of a single score; returns (recall, threshold)."""
    order = np.sort(neg)[::-1]
    allowed = int(np.floor(max_fpr * len(neg)))
    thr = order[allowed] if allowed < len(order) else -np.inf  # flag strictly above this
    return float(np.mean(pos > thr)), float(thr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=200, help="phantom patients (half train, half holdout)")
    ap.add_argument("--novel", type=int, default=1200, help="novel-patient images (negatives)")
    ap.add_argument("--copies", type=int, default=100, help="planted copies per transform family")
    ap.add_argument("--retina-copies", type=int, default=40)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--search-base", type=int, default=100_000)
    ap.add_argument("--search-queries", type=int, default=2_000)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    policy = load_policy("public")
    k = policy.memorization.k
    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))

    t0 = time.perf_counter()
    train_items, holdout_items = [], []
    for p in range(args.patients):
        patient = PhantomPatient.from_seed(args.seed, p)
        dest = train_items if p % 2 == 0 else holdout_items
        for v in range(2):
            img, _ = render_visit(patient, visit=v, size=args.size, seed=args.seed)
            dest.append((f"p{p:05d}_v{v}.png", img, f"P{p:05d}-V{v}", f"P{p:05d}"))
    train_items.append(("real_retina.png", retina(args.size), "RETINA-1", "PRETINA"))
    write_image_folder(tmp / "train", train_items)
    write_image_folder(tmp / "holdout", holdout_items)
    t_data = time.perf_counter() - t0

    t0 = time.perf_counter()
    guard = prepare_guard(train_dir=tmp / "train", holdout_dir=tmp / "holdout", k=k, cache_dir=tmp / "cache")
    t_prep = time.perf_counter() - t0
    cal = guard.calibration
    mp = policy.memorization
    t_emb = cal.threshold(cal.embedding_sims, mp.embedding_quantile)
    t_pix = cal.threshold(cal.pixel_nccs, mp.pixel_quantile)

    # negatives: novel patients (seed differs from the training phantom's)
    t0 = time.perf_counter()
    neg_imgs = []
    for i in range(args.novel):
        patient = PhantomPatient.from_seed(args.seed + 1000, i // 2)
        neg_imgs.append(render_visit(patient, visit=i % 2, size=args.size, seed=args.seed + 1000)[0])
    groups: dict[str, list[np.ndarray]] = {}
    train_imgs = [it[1] for it in train_items[:-1]]
    for fam in FAMILIES:
        groups[fam] = [random_copy(train_imgs[rng.integers(len(train_imgs))], rng, family=fam)[0]
                       for _ in range(args.copies)]
    real = train_items[-1][1]
    groups["real photo (combined)"] = [random_copy(real, rng, family="combined")[0] for _ in range(args.retina_copies)]
    t_render = time.perf_counter() - t0

    def score(imgs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
        t = time.perf_counter()
        out = []
        for i in range(0, len(imgs), 32):
            out.extend(score_images(guard.index, imgs[i : i + 32], k=k))
        dt = time.perf_counter() - t
        return np.array([s.embedding_sim for s in out]), np.array([s.pixel_ncc for s in out]), dt

    neg_e, neg_p, dt_neg = score(neg_imgs)
    neg_flag = (neg_e > t_emb) | (neg_p > t_pix)
    rows = []
    all_pos_e, all_pos_p = [], []
    for name, imgs in groups.items():
        e, p, _ = score(imgs)
        all_pos_e.append(e)
        all_pos_p.append(p)
        flag = (e > t_emb) | (p > t_pix)
        rows.append([name, len(imgs), f"{flag.mean():.2%}", f"{(e > t_emb).mean():.2%}", f"{(p > t_pix).mean():.2%}",
                     f"{np.min(p):.3f}", f"{np.median(p):.3f}", f"{np.min(e):.3f}"])
    pos_e, pos_p = np.concatenate(all_pos_e), np.concatenate(all_pos_p)
    pos_flag = (pos_e > t_emb) | (pos_p > t_pix)
    rows.append(["ALL planted copies", len(pos_p), f"{pos_flag.mean():.2%}", f"{(pos_e > t_emb).mean():.2%}",
                 f"{(pos_p > t_pix).mean():.2%}", f"{pos_p.min():.3f}", f"{np.median(pos_p):.3f}", f"{pos_e.min():.3f}"])
    rows.append(["novel patients (FPR)", len(neg_p), f"{neg_flag.mean():.2%}", f"{(neg_e > t_emb).mean():.2%}",
                 f"{(neg_p > t_pix).mean():.2%}", f"{neg_p.max():.3f} (max)", f"{np.median(neg_p):.3f}", f"{neg_e.max():.3f} (max)"])
    print(f"data: {len(train_items)} train ({args.patients // 2} patients + real photo), {len(holdout_items)} holdout, "
          f"{args.size}px; rendered in {t_data + t_render:.1f}s; index+calibration {t_prep:.1f}s")
    print(f"thresholds (public policy, holdout quantiles {mp.embedding_quantile}/{mp.pixel_quantile}): "
          f"embedding_sim > {t_emb:.4f}, pixel_ncc > {t_pix:.4f}; novel max pixel_ncc {neg_p.max():.4f}")
    table("Planted-copy detection at the policy operating point (flag = either stage)",
          ["set", "n", "flagged", "stage1 emb", "stage2 pixel", "min pix", "median pix", "min emb"], rows)
    r_pix, thr = roc_recall_at(neg_p, pos_p, 0.001)
    r_emb, thr_e = roc_recall_at(neg_e, pos_e, 0.001)
    table("ROC operating points (single score, FPR <= 0.1 % on novel patients)",
          ["score", "recall", "threshold"], [["pixel_ncc", f"{r_pix:.2%}", f"{thr:.4f}"],
                                              ["embedding_sim", f"{r_emb:.2%}", f"{thr_e:.4f}"]])
    print(f"\nscoring throughput (both stages, k={k}): {len(neg_imgs) / dt_neg:.1f} images/s")

    bench_search(args, rng)
    bench_end_to_end(tmp, neg_imgs[:150] + groups["combined"][:50], policy)


def bench_search(args: argparse.Namespace, rng: np.random.Generator) -> None:
    import faiss
    from sklearn.neighbors import NearestNeighbors

    d, n, q, k = 128, args.search_base, args.search_queries, 10
    base = rng.standard_normal((n, d)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[rng.choice(n, q)] + 0.05 * rng.standard_normal((q, d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    def numpy_topk():
        out = []
        for i in range(0, q, 512):
            s = queries[i : i + 512] @ base.T
            out.append(np.argpartition(-s, k, axis=1)[:, :k])
        return np.concatenate(out)

    ref, t_np = timed(numpy_topk)
    flat = faiss.IndexFlatIP(d)
    flat.add(base)
    (_, i_flat), t_flat = timed(lambda: flat.search(queries, k))
    hnsw = make_faiss(d, "hnsw", len(base))  # the library's HNSW: M 32, efConstruction 80, efSearch 128
    _, t_hb = timed(lambda: hnsw.add(base))
    (_, i_hnsw), t_hnsw = timed(lambda: hnsw.search(queries, k))
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(base)
    (_, i_sk), t_sk = timed(lambda: nn.kneighbors(queries))

    rows = [
        ["numpy matmul + argpartition (baseline)", f"{q / t_np:,.0f}", "1.00x", f"{recall_at_k(ref, i_flat):.3f}"],
        ["scikit-learn brute force (cosine)", f"{q / t_sk:,.0f}", f"{t_np / t_sk:.2f}x",
         f"{recall_at_k(i_sk, i_flat):.3f}"],
        ["FAISS IndexFlatIP (exact, default)", f"{q / t_flat:,.0f}", f"{t_np / t_flat:.2f}x", "1.000"],
        [f"FAISS HNSW32 efSearch=128 (build {t_hb:.1f}s)", f"{q / t_hnsw:,.0f}", f"{t_np / t_hnsw:.2f}x",
         f"{recall_at_k(i_hnsw, i_flat):.3f}"],
    ]
    table(f"Search throughput: {n:,} x {d}-d base, {q:,} queries, k={k}",
          ["method", "queries/s", "vs numpy", "recall@10 vs exact"], rows)


def bench_end_to_end(tmp: Path, imgs: list[np.ndarray], policy) -> None:
    rel = tmp / "release"
    rel.mkdir()
    for i, img in enumerate(imgs):
        atomic_write_bytes(rel / f"synthetic_{i:05d}.png", encode_png(img))
    t = time.perf_counter()
    res = audit_release(release_dir=rel, out_dir=tmp / "report", policy=policy, train_dir=tmp / "train",
                        holdout_dir=tmp / "holdout", cache_dir=tmp / "cache")
    dt = time.perf_counter() - t
    table("End-to-end audit (warm index + calibration cache; load, check, report, manifest)",
          ["images", "seconds", "images/s", "failed"],
          [[len(imgs), f"{dt:.1f}", f"{len(imgs) / dt:.1f}", res.report.summary["n_fail"]]])


if __name__ == "__main__":
    main()
