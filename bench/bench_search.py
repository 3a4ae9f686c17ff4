"""Search that scales (issue 10, part 2): recall@10 against exact search, queries/s, build time and memory of FAISS
index kinds over the embeddings and vessel descriptors of fundus-like images, at 20 k (where the vessel search turns
approximate), 100 k and 1 M indexed vectors.

    .venv/bin/python bench/bench_search.py [--real 1500] [--sizes 20000,100000,1000000] [--queries 2000] [--hnsw-max N]
                                           [--cache FILE.npz] [--source phantom|alt] [--vectors embeddings,vessels]
                                           [--workers-memory]

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
``--hnsw-max``. Each table names the kind ``auto`` (the vessel search's default) picks at its size.
Rendering and describing the images takes ~2 minutes; exact and IVF search of 1 M vessel descriptors most of the
~30-minute run. ``--cache FILE.npz`` keeps the vectors (written when absent, reused when present).

``--workers-memory`` measures instead what a worker process pays for the index kind ``auto`` builds at each size,
saved as the library keeps the vessel search in the index folder: loaded in 2 worker processes at once, memory-mapped
as the library loads it against read into each process's memory (the baseline, as when every worker derived its
own copy): load seconds, queries/s, and the memory each process gained, its own (anonymous) against pages of the
mapped file (the page cache, shared).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np
from sklearn.mixture import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import alt_fundus  # noqa: E402
from bench.common import recall_at_k, table  # noqa: E402
from synfundus_guard.audit.pixel_match import make_sketch  # noqa: E402
from synfundus_guard.audit.vessel_search import descriptors  # noqa: E402
from synfundus_guard.data.phantom import PhantomPatient, render_visit  # noqa: E402
from synfundus_guard.embed.base import l2_normalize  # noqa: E402
from synfundus_guard.embed.registry import DEFAULT_SPEC, embedder_from_spec  # noqa: E402
from synfundus_guard.audit.vessel_search import EXACT_MAX as VESSEL_EXACT_MAX  # noqa: E402
from synfundus_guard.index.store import (EXACT_MAX, ivf_lists, ivf_nprobe, kind_of, read_faiss,  # noqa: E402
                                         resolve_kind, set_search_params, trained_faiss)

K = 10


VECTORS = ("embeddings", "vessels")
"""What is searched: the memorization embeddings (``GuardIndex.search``) and the vessel check's coarse descriptors
(``VesselSearch``)."""


def real_vectors(n: int, n_other: int, source: str = "phantom") -> dict[str, np.ndarray]:
    """Embeddings (PCA fitted on them) and vessel descriptors of ``n`` images of ``source`` (the project's phantom,
    or ``alt``: the second, independent fundus renderer of ``bench/alt_fundus.py``) and of ``n_other`` images of
    other patients: keys ``embeddings``, ``embeddings_other``, ``vessels``, ``vessels_other``."""
    emb = embedder_from_spec(DEFAULT_SPEC)

    def render(seed: int, p: int, v: int) -> np.ndarray:
        if source == "alt":
            return alt_fundus.render(seed, p, v, size=128)
        return render_visit(PhantomPatient.from_seed(seed, p), visit=v, size=128, seed=seed)[0]

    def images(seed: int, count: int) -> list[np.ndarray]:
        return [render(seed, p, v) for p in range((count + 1) // 2) for v in range(2)][:count]

    def vessels(imgs: list[np.ndarray]) -> np.ndarray:
        return descriptors(np.stack([make_sketch(im, "vessel") for im in imgs]))

    base = images(51, n)  # 128 px: ~100 MB for 1500
    feats = np.concatenate([emb.features(base[i : i + 64]) for i in range(0, n, 64)])
    emb.fit(feats)
    other = images(52, n_other)
    return {"embeddings": emb.project(feats), "embeddings_other": emb.project(emb.features(other)),
            "vessels": vessels(base), "vessels_other": vessels(other)}


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def timed_search(index: faiss.Index, q: np.ndarray) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    _, ids = index.search(q, K)
    return ids, len(q) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=int, default=1500)
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[20_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--hnsw-max", type=int, default=100_000, help="build HNSW only up to this size (slow to build)")
    ap.add_argument("--source", choices=("phantom", "alt"), default="phantom", help="fundus renderer embedded")
    ap.add_argument("--vectors", type=lambda v: v.split(","), default=list(VECTORS),
                    help=f"comma-separated, of {', '.join(VECTORS)}")
    ap.add_argument("--cache", type=Path, help="npz of the rendered images' vectors: reused if present, else written")
    ap.add_argument("--workers-memory", action="store_true",
                    help="instead: memory and load time of the kept index in worker processes, mapped vs in memory")
    args = ap.parse_args()
    if set(args.vectors) - set(VECTORS):
        sys.exit(f"--vectors: choose from {', '.join(VECTORS)}")
    t0 = time.perf_counter()
    n_other = min(args.queries // 4, 500)
    if args.cache and args.cache.is_file():
        with np.load(args.cache) as z:
            vecs, source = {k: z[k] for k in z.files if k != "source"}, str(z["source"])
        if len(vecs["embeddings"]) != args.real or len(vecs["embeddings_other"]) != n_other or source != args.source:
            sys.exit(f"{args.cache} holds vectors of {len(vecs['embeddings'])}/{len(vecs['embeddings_other'])} "
                     f"{source} images, not --real {args.real} / {n_other} {args.source}: give another file")
    else:
        vecs = real_vectors(args.real, n_other, args.source)
        if args.cache:
            np.savez(args.cache, source=args.source, **vecs)
    print(f"vectors of {args.real} + {n_other} {args.source} images in {time.perf_counter() - t0:.0f} s; "
          f"{faiss.omp_get_max_threads()} FAISS threads", flush=True)
    for what in args.vectors:
        (memory_per_worker if args.workers_memory else compare_kinds)(what, vecs[what], vecs[f"{what}_other"], args)


def auto_kind(what: str, n: int) -> str:
    """The kind ``auto`` resolves to at ``n`` vectors for what is searched (the vessel search switches lower)."""
    return resolve_kind("auto", n, VESSEL_EXACT_MAX if what == "vessels" else EXACT_MAX)


def built(x: np.ndarray, kind: str) -> tuple[faiss.Index, float]:
    """An index of ``kind`` over ``x`` as the library builds and trains it, and its build seconds."""
    t = time.perf_counter()
    index = trained_faiss(x.shape[1], kind, len(x), sample=lambda r: x[r], rng=np.random.default_rng(0))
    index.add(x)
    return index, time.perf_counter() - t


def mixture_sets(base: np.ndarray, other: np.ndarray, args: argparse.Namespace) -> Iterator[tuple[int, np.ndarray,
                                                                                                 np.ndarray]]:
    """(size, indexed vectors, queries) per ``--sizes``: mixture samples like ``base``; queries also ``other``."""
    gmm = GaussianMixture(64, covariance_type="diag", reg_covar=1e-4, random_state=0).fit(base)
    for n in args.sizes:
        x = gmm.sample(n)[0]
        x = l2_normalize(x[np.random.default_rng(n).permutation(n)]).astype(np.float32)
        yield n, x, np.concatenate([l2_normalize(gmm.sample(args.queries - len(other))[0]), other])


def memory_rollup() -> dict[str, float]:
    """This process's resident memory in MiB: ``anonymous`` (its own heap, copied per process) and ``file`` (pages of
    mapped files: the page cache, one copy shared by every process that maps the file)."""
    kib = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        kib[key] = float(value.split()[0])
    return {"anonymous": kib["Anonymous"] / 1024, "file": (kib["Rss"] - kib["Anonymous"]) / 1024}


def load_and_search(path: str, mapped: bool, q: np.ndarray) -> tuple[float, float, dict[str, float]]:
    """In a fresh worker process: load an index file (``mapped``: as the library does, :func:`read_faiss`; else read
    into memory) and search ``q``; (load s, queries/s, memory after the search)."""
    faiss.omp_set_num_threads(1)  # a worker process uses one core
    before = memory_rollup()
    t = time.perf_counter()
    index = read_faiss(Path(path)) if mapped else faiss.read_index(path)
    load = time.perf_counter() - t
    set_search_params(index, kind_of(index))
    _, qps = timed_search(index, q)
    after = memory_rollup()
    return load, qps, {k: after[k] - before[k] for k in after}


def memory_per_worker(what: str, base: np.ndarray, other: np.ndarray, args: argparse.Namespace) -> None:
    """Per size: the index kind ``auto`` builds (the vessel search's), saved, then loaded and searched in 2 worker
    processes at once, memory-mapped as the library loads a kept index against read into each process's memory
    (as every worker held it when each derived its own)."""
    for n, x, q in mixture_sets(base, other, args):
        kind = auto_kind(what, n)
        index, build = built(x, kind)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "kept.faiss")
            faiss.write_index(index, path)
            del index
            for mapped in (False, True):
                with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
                    done = list(pool.map(load_and_search, [path] * 2, [mapped] * 2, [q[:500]] * 2))
                for w, (load, qps, mem) in enumerate(done):
                    rows.append([f"{n:,}", kind, "mapped (library)" if mapped else "in memory",
                                 w, f"{load:.2f}", f"{qps:,.0f}", f"{mem['anonymous']:,.0f}", f"{mem['file']:,.0f}"])
        table(f"{what}: the kept index of {n:,} {args.source} vectors (built in {build:.0f} s) in 2 worker processes "
              "(1 thread each, 500 queries)",
              ["indexed", "kind", "loaded", "worker", "load s", "queries/s", "own MiB", "shared file MiB"], rows)


def compare_kinds(what: str, base: np.ndarray, other: np.ndarray, args: argparse.Namespace) -> None:
    """One table per size: exact search against the approximate kinds on vectors like ``base``."""
    for n, x, q in mixture_sets(base, other, args):
        t = time.perf_counter()
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(x)
        build = time.perf_counter() - t
        exact, qps = timed_search(flat, q)
        rows = [[f"{n:,}", "flat (exact)", "-", f"{build:.1f}", f"{index_bytes(flat) / 2**20:.0f}",
                 f"{qps:,.0f}", "1.000", "1.00x"]]
        base_qps = qps
        del flat

        def measure(index: faiss.Index, name: str, setting: str, build: float) -> None:
            ids, qps = timed_search(index, q)
            rows.append([f"{n:,}", name, setting, f"{build:.1f}", f"{index_bytes(index) / 2**20:.0f}",
                         f"{qps:,.0f}", f"{recall_at_k(ids, exact):.4f}", f"{qps / base_qps:.1f}x"])

        ivf, build = built(x, "ivf")
        for nprobe in (16, 32, 64, 128):
            ivf.nprobe = nprobe
            measure(ivf, f"IVF{ivf.nlist},Flat", f"nprobe {nprobe}", build)
        del ivf
        ivfpq, build = built(x, "ivfpq")  # re-ranks 16 k candidates exactly
        lists = ivf_lists(n, "ivfpq")
        for nprobe in sorted({lists // 10, ivf_nprobe("ivfpq", lists), lists // 4}):
            faiss.extract_index_ivf(ivfpq).nprobe = nprobe
            mark = " (library)" if nprobe == ivf_nprobe("ivfpq", lists) else ""
            measure(ivfpq, f"IVF{lists},PQ{x.shape[1]}x4fs,RFlat", f"nprobe {nprobe}{mark}", build)
        del ivfpq
        if n <= args.hnsw_max:
            hnsw, build = built(x, "hnsw")  # M 32, efConstruction 80
            for ef in (64, 128, 256):
                hnsw.hnsw.efSearch = ef
                measure(hnsw, "HNSW32", f"efSearch {ef}", build)
            del hnsw
        table(f"Search over {n:,} {args.source} {what} (mixture, dim {x.shape[1]}), {len(q)} queries, k = {K}; "
              f"kind 'auto' picks {auto_kind(what, n)}",
              ["indexed", "index", "setting", "build s", "MiB", "queries/s", f"recall@{K}", "vs exact"],
              rows)


if __name__ == "__main__":
    main()
