"""Search that scales (issue 10, part 2): recall@10 against exact search, queries/s, build time and memory of FAISS
index kinds over embeddings of fundus-like images, at 100 k and 1 M indexed vectors.

    .venv/bin/python bench/bench_search.py [--real 1500] [--sizes 100000,1000000] [--queries 2000] [--hnsw-max N]
                                           [--embeddings FILE.npz] [--source phantom|alt]

Data: ``--real`` phantom images (seed 51, 128 px, visits 0 and 1 of ``--real``/2 patients; ``--source alt``:
images of the second fundus renderer, ``bench/alt_fundus.py``, which played no part in choosing the ``ivfpq``
settings) are embedded by the default embedder, its PCA fitted on them as an index build fits it. A Gaussian
mixture (64 components, diagonal covariance) fitted to those embeddings is sampled to each size and L2-normalised
as the embedder's output is: the vectors keep the embeddings' clusters and spectrum, which decide how approximate
search fares (random vectors would not). Queries are fresh mixture samples plus embeddings of images of other
patients (seed 52), which the mixture never saw. The baseline is exact inner-product search (``IndexFlatIP``) in
the same run; recall@10 is the share of its 10 neighbours an index returns. FAISS uses every core.
IVF, IVF-PQ and HNSW indexes are built by the library's ``make_faiss`` (``ivf``: 4 sqrt(n) lists, ``ivfpq``:
sqrt(n) lists of 4-bit fast-scan codes re-ranked exactly; each trained as the library trains it); HNSW only up to
``--hnsw-max``. Each table names the kind ``build_index`` picks by itself at its size (``auto``).
Rendering the images dominates the run (about 13 minutes for 1500 phantoms on 2 cores); ``--embeddings FILE.npz``
keeps them (written when absent, reused when present).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from sklearn.mixture import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import alt_fundus  # noqa: E402
from bench.common import recall_at_k, table  # noqa: E402
from synfundus_guard.data.phantom import PhantomPatient, render_visit  # noqa: E402
from synfundus_guard.embed.base import l2_normalize  # noqa: E402
from synfundus_guard.embed.registry import DEFAULT_SPEC, embedder_from_spec  # noqa: E402
from synfundus_guard.index.store import (ivf_lists, ivf_nprobe, ivf_training_rows, make_faiss,  # noqa: E402
                                         resolve_kind)

K = 10


def real_embeddings(n: int, n_other: int, source: str = "phantom") -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``n`` images of ``source`` (the project's phantom, or ``alt``: the second, independent fundus
    renderer of ``bench/alt_fundus.py``; PCA fitted on them) and of ``n_other`` images of other patients."""
    emb = embedder_from_spec(DEFAULT_SPEC)

    def render(seed: int, p: int, v: int) -> np.ndarray:
        if source == "alt":
            return alt_fundus.render(seed, p, v, size=128)
        return render_visit(PhantomPatient.from_seed(seed, p), visit=v, size=128, seed=seed)[0]

    def images(seed: int, count: int) -> list[np.ndarray]:
        return [render(seed, p, v) for p in range((count + 1) // 2) for v in range(2)][:count]

    feats = np.concatenate([emb.features(images(51, n)[i : i + 64]) for i in range(0, n, 64)])
    emb.fit(feats)
    other = emb.features(images(52, n_other))
    return emb.project(feats), emb.project(other)


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def timed_search(index: faiss.Index, q: np.ndarray) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    _, ids = index.search(q, K)
    return ids, len(q) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=int, default=1500)
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--hnsw-max", type=int, default=100_000, help="build HNSW only up to this size (slow to build)")
    ap.add_argument("--source", choices=("phantom", "alt"), default="phantom", help="fundus renderer embedded")
    ap.add_argument("--embeddings", type=Path, help="npz of the embeddings: reused if present, else written")
    args = ap.parse_args()
    t0 = time.perf_counter()
    n_other = min(args.queries // 4, 500)
    if args.embeddings and args.embeddings.is_file():
        with np.load(args.embeddings) as z:
            base, other, source = z["base"], z["other"], str(z["source"])
        if len(base) != args.real or len(other) != n_other or source != args.source:
            sys.exit(f"{args.embeddings} holds {len(base)}/{len(other)} {source} embeddings, not --real {args.real} "
                     f"/ {n_other} {args.source}: give another file")
    else:
        base, other = real_embeddings(args.real, n_other, args.source)
        if args.embeddings:
            np.savez(args.embeddings, base=base, other=other, source=args.source)
    print(f"{len(base)} {args.source} embeddings (dim {base.shape[1]}) in {time.perf_counter() - t0:.0f} s; "
          f"{faiss.omp_get_max_threads()} FAISS threads", flush=True)
    gmm = GaussianMixture(64, covariance_type="diag", reg_covar=1e-4, random_state=0).fit(base)
    for n in args.sizes:
        x = l2_normalize(gmm.sample(n)[0][np.random.default_rng(n).permutation(n)])
        q = np.concatenate([l2_normalize(gmm.sample(args.queries - len(other))[0]), other])
        t = time.perf_counter()
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(x)
        build = time.perf_counter() - t
        exact, qps = timed_search(flat, q)
        rows = [[f"{n:,}", "flat (exact)", "-", f"{build:.1f}", f"{index_bytes(flat) / 2**20:.0f}",
                 f"{qps:,.0f}", "1.000", "1.00x"]]
        base_qps = qps
        del flat
        nlist = ivf_lists(n)
        t = time.perf_counter()
        ivf = make_faiss(x.shape[1], "ivf", n)  # as the library builds it
        ivf.train(x[ivf_training_rows(n, np.random.default_rng(0))])
        ivf.add(x)
        build = time.perf_counter() - t
        for nprobe in (16, 32, 64, 128):
            ivf.nprobe = nprobe
            ids, qps = timed_search(ivf, q)
            rows.append([f"{n:,}", f"IVF{nlist},Flat", f"nprobe {nprobe}", f"{build:.1f}",
                         f"{index_bytes(ivf) / 2**20:.0f}", f"{qps:,.0f}", f"{recall_at_k(ids, exact):.4f}",
                         f"{qps / base_qps:.1f}x"])
        del ivf
        ivfpq = make_faiss(x.shape[1], "ivfpq", n)  # as the library builds it: re-ranks 16 k candidates exactly
        t = time.perf_counter()
        ivfpq.train(x[ivf_training_rows(n, np.random.default_rng(0), "ivfpq")])
        ivfpq.add(x)
        build = time.perf_counter() - t
        lists = ivf_lists(n, "ivfpq")
        for nprobe in sorted({lists // 10, ivf_nprobe("ivfpq", lists), lists // 4}):
            faiss.extract_index_ivf(ivfpq).nprobe = nprobe
            ids, qps = timed_search(ivfpq, q)
            mark = " (library)" if nprobe == ivf_nprobe("ivfpq", lists) else ""
            rows.append([f"{n:,}", f"IVF{lists},PQ{x.shape[1]}x4fs,RFlat", f"nprobe {nprobe}{mark}",
                         f"{build:.1f}", f"{index_bytes(ivfpq) / 2**20:.0f}", f"{qps:,.0f}",
                         f"{recall_at_k(ids, exact):.4f}", f"{qps / base_qps:.1f}x"])
        del ivfpq
        if n <= args.hnsw_max:
            hnsw = make_faiss(x.shape[1], "hnsw", n)  # M 32, efConstruction 80
            t = time.perf_counter()
            hnsw.add(x)
            build = time.perf_counter() - t
            for ef in (64, 128, 256):
                hnsw.hnsw.efSearch = ef
                ids, qps = timed_search(hnsw, q)
                rows.append([f"{n:,}", "HNSW32", f"efSearch {ef}", f"{build:.1f}",
                             f"{index_bytes(hnsw) / 2**20:.0f}", f"{qps:,.0f}", f"{recall_at_k(ids, exact):.4f}",
                             f"{qps / base_qps:.1f}x"])
            del hnsw
        table(f"Search over {n:,} fundus-like vectors (dim {x.shape[1]}), {len(q)} queries, k = {K}; "
              f"build_index picks {resolve_kind('auto', n)} at this size",
              ["indexed", "index", "setting", "build s", "MiB", "queries/s", f"recall@{K}", "vs exact"],
              rows)


if __name__ == "__main__":
    main()
