"""Build, save, load and search the index of training images.

An index folder is *private* (it names training files) and holds:

* ``index.faiss`` — FAISS inner-product index of the projected embeddings (exact ``flat`` by default; ``ivf``,
  ``hnsw`` and ``ivfpq`` are approximate, ``auto`` picks by size; see :data:`INDEX_KINDS`);
* ``sketches.npy`` — stage-2 pixel sketches, float16, memory-mapped at search time;
* ``vessels.npy`` — vessel templates for the biometric check, float16, memory-mapped;
* ``embedder.npz`` — the fitted projection of the embedder;
* ``records.json`` — file name, image id, patient id and content hash of every indexed image;
* ``meta.json`` — fingerprints: embedder, features, dataset; a loader refuses an index built with another
  embedder (:class:`~synfundus_guard.errors.IndexMismatchError`);
* ``derived/`` — FAISS indexes derived from the above on first use (the vessel search,
  :meth:`GuardIndex.derived_faiss`), kept so that later runs and every worker process load them instead of
  deriving them again; ``calibration/`` — cached holdout scores.

FAISS files are memory-mapped where FAISS can (:func:`read_faiss`): the exact vectors of a flat or ``ivfpq`` index
stay in the page cache, shared by every worker process on the machine, not copied into each.

Building streams images in batches (never all in memory) and caches per-image features by content hash.
The folder is written under a temporary name (``NAME.building``, marked as ours by :data:`BUILDING_MARKER`)
and renamed when complete. The builder never deletes a folder it did not make: an existing ``out_dir`` is
replaced only when it is a guard index (its ``meta.json`` carries an ``INDEX_VERSION``-style version) or empty;
anything else is refused. Index folders are private: 0700, their files 0600.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import faiss
import numpy as np

from ..audit.pixel_match import SKETCH_SIDE, SKETCH_VERSION, VESSEL_VERSION, make_sketch
from ..data.folder import ImageRecord, scan_folder
from ..data.images import load_image
from ..data.memo import pinned
from ..embed.base import Embedder
from ..embed.cache import ArrayCache
from ..errors import IndexBuildError, IndexMismatchError, InputError
from ..fsutil import atomic_write_json, atomic_write_with, sha256_bytes, sha256_file
from ..parallel import auto_workers, ordered_map
from ..progress import NULL_PROGRESS, Progress
from ..safeload import read_json

INDEX_VERSION = "guard-index-v2"
BUILDING_MARKER = ".guard-index-building"
"""Written first into a folder being built; only a folder holding it is ever removed as a leftover build."""
DERIVED_DIR = "derived"
"""Subfolder of an index folder holding FAISS indexes derived from it (:meth:`GuardIndex.derived_faiss`)."""
_PCA_SAMPLE = 20_000
"""At most this many training images fit the embedder's projection (a random sample beyond that)."""


def dataset_fingerprint(shas: Sequence[str]) -> str:
    """Order-independent fingerprint of a set of images (by content)."""
    return sha256_bytes("\n".join(sorted(shas)).encode())


def identity_fingerprint(records: Sequence[ImageRecord | dict], shas: Sequence[str]) -> str:
    """Fingerprint of who is in a set: file name, image id, patient id and content of every image.

    Two folders with the same bytes but other names or patient ids get different fingerprints, so they never
    share a cached index (its ``records.json`` would name the other folder's patients).
    """
    def row(r: ImageRecord | dict, sha: str) -> str:
        get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
        return json.dumps([get("file_name"), get("image_id"), get("patient_id"), sha], ensure_ascii=True)

    return sha256_bytes("\n".join(sorted(row(r, h) for r, h in zip(records, shas))).encode())


def is_index_folder(path: Path) -> bool:
    """True when ``path`` holds a guard index (any version): its ``meta.json`` names a guard index version."""
    try:
        meta = read_json(Path(path) / "meta.json", expect=dict, max_bytes=1 << 20)
    except (OSError, InputError):
        return False
    return str(meta.get("version", "")).startswith("guard-index-")


def _refuse_foreign(path: Path, what: str) -> None:
    """Refuse to replace a folder the toolkit did not make (anything but an index or an empty folder)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise InputError(f"{what} {path} exists and is not a folder; choose another path")
    if path.is_dir() and any(path.iterdir()) and not is_index_folder(path):
        raise InputError(f"{what} {path} exists and is not a guard index; refusing to replace it "
                         "(choose an empty or new folder)")


def make_private_tree(root: Path) -> None:
    """chmod a folder tree the toolkit wrote to owner-only: folders 0700, files 0600."""
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o700)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o600)


def hash_records(records: Sequence[ImageRecord], progress: Progress = NULL_PROGRESS, what: str = "images") -> list[str]:
    """Content sha256 of every record's file, with progress."""
    out = []
    with progress.task(f"Hashing {what}", total=len(records)) as t:
        for r in records:
            try:
                out.append(sha256_file(r.path))
            except OSError as exc:
                raise InputError(f"{r.path}: cannot read ({exc.strerror or exc})") from None
            t.advance()
    return out


def _template_kinds(embedder: Embedder) -> dict[str, tuple[str, Callable[[list[np.ndarray]], list[np.ndarray]]]]:
    """What is stored per training image: name -> (cache fingerprint, batch function)."""
    return {
        "features": (embedder.feature_fingerprint(), lambda imgs: list(embedder.features(imgs))),
        "sketches": (SKETCH_VERSION, lambda imgs: [make_sketch(im) for im in imgs]),
        "vessels": (VESSEL_VERSION, lambda imgs: [make_sketch(im, "vessel") for im in imgs]),
    }


def _templates_of(embedder: Embedder, paths: Sequence[Path]) -> dict[str, list[np.ndarray]]:
    """Raw features, band sketches and vessel templates of image files (one batch; none when it is empty)."""
    if not paths:
        return {}
    imgs = [load_image(p) for p in paths]
    with pinned(imgs):  # each image hashed once for the memo the three kinds share
        return {name: fn(imgs) for name, (_, fn) in _template_kinds(embedder).items()}


BUILD_ITEMS_PER_WORKER = 2000
"""Automatic worker counts of an index build give each worker at least this many images: a worker starts in ~4 s
(interpreter, torch) and an image costs 10-20 ms (64-256 px). With 500, the quick start's 1000 images of 64 px
were built in two workers and took 152 s end to end against 144 s in one process."""
_BUILDER: dict[str, Embedder] = {}


def _init_builder(embedder: Embedder) -> None:
    _BUILDER["embedder"] = embedder


def _templates_in_worker(paths: Sequence[Path]) -> dict[str, list[np.ndarray]]:
    return _templates_of(_BUILDER["embedder"], paths)


def compute_features(
    records: Sequence[ImageRecord],
    shas: Sequence[str],
    *,
    embedder: Embedder,
    cache: ArrayCache,
    batch_size: int,
    progress: Progress,
    what: str,
    out: dict[str, np.ndarray],
    workers: int = 1,
) -> None:
    """Raw features, band sketches and vessel templates of records, from the cache where possible, the rest
    computed in ``workers`` processes (0: one per core, as far as each gets :data:`BUILD_ITEMS_PER_WORKER` images;
    1: in this process).

    Results are written batch by batch into ``out["features"]``, ``out["sketches"]`` and ``out["vessels"]``
    (memory maps on disk), so memory stays bounded by a few batches.
    """
    fps = {name: fp for name, (fp, _) in _template_kinds(embedder).items()}
    planned: deque[tuple[int, list[str], dict[str, dict[str, np.ndarray]], list[int]]] = deque()

    def plan() -> Iterator[list[Path]]:
        """Per batch, look the cache up and yield the files left to compute; lazily, so that only the batches in
        flight are held in memory."""
        for i in range(0, len(records), batch_size):
            hs = list(shas[i : i + batch_size])
            got = {name: cache.get_many(fp, hs) for name, fp in fps.items()}
            todo = [j for j, h in enumerate(hs) if any(h not in g for g in got.values())]
            planned.append((i, hs, got, todo))
            yield [records[i + j].path for j in todo]

    n_workers = auto_workers(len(records), workers, min_per_worker=BUILD_ITEMS_PER_WORKER)
    if n_workers <= 1:
        computed: Iterator[dict[str, list[np.ndarray]]] = (_templates_of(embedder, p) for p in plan())
    else:
        computed = ordered_map(_templates_in_worker, plan(), workers=n_workers, setup=_init_builder,
                               setup_args=(embedder,))
    with progress.task(f"Embedding {what}", total=len(records)) as t:
        try:
            for new in computed:
                i, hs, got, todo = planned.popleft()
                for name, values in new.items():
                    fresh = {hs[j]: v for j, v in zip(todo, values)}
                    got[name].update(fresh)
                    cache.put_many(fps[name], fresh)
                for name in fps:
                    out[name][i : i + len(hs)] = np.stack([got[name][h] for h in hs])
                t.advance(len(hs))
        except BrokenProcessPool as exc:
            raise IndexBuildError(f"an index worker process died ({exc}); nothing was kept. Run again, with "
                                  "fewer --workers if memory is short") from None


@dataclass
class GuardIndex:
    """A loaded index: search embeddings, fetch sketches and (private) records."""

    path: Path
    embedder: Embedder
    faiss_index: faiss.Index
    sketches: np.ndarray
    vessels: np.ndarray
    records: list[dict]
    meta: dict
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Number of indexed training images."""
        return len(self.records)

    @property
    def dataset_fingerprint(self) -> str:
        """Fingerprint of the indexed training set."""
        return self.meta["dataset_fingerprint"]

    def derived(self, key: str, build: Callable[["GuardIndex"], Any]) -> Any:
        """A structure computed from this index on first use and kept in this process."""
        with self._lock:
            if key not in self._derived:
                self._derived[key] = build(self)
            return self._derived[key]

    def derived_faiss(self, name: str, version: str, build: Callable[["GuardIndex"], faiss.Index]) -> faiss.Index:
        """A FAISS index computed from this index (e.g. the vessel search), kept in the folder's ``derived/``.

        Loaded (memory-mapped, :func:`read_faiss`) when a file of this ``version`` and training set is there;
        otherwise built once, written atomically (0600) and loaded from the file, so that every process on the
        machine shares its pages. A folder that cannot be written keeps it in memory; a damaged file is rebuilt.
        """
        key = sha256_bytes(f"{name}|{version}|{self.dataset_fingerprint}".encode())[:16]
        path = self.path / DERIVED_DIR / f"{name}-{key}.faiss"

        def load_or_build(ix: "GuardIndex") -> faiss.Index:
            if path.is_file():
                try:
                    index = read_faiss(path)
                    if index.ntotal == ix.size:
                        return index
                except RuntimeError:
                    pass  # damaged: build it again
            index = build(ix)
            try:
                _write_faiss_atomic(index, path)
                return read_faiss(path)
            except (OSError, RuntimeError):
                return index  # a read-only index folder: keep it in this process
        return self.derived(f"faiss:{path.name}", load_or_build)

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products and indices for each row of ``embeddings`` ``(m, D)``."""
        k = min(k, self.size)
        sims, idx = self.faiss_index.search(np.ascontiguousarray(embeddings, dtype=np.float32), k)
        return sims, idx

    def embed(self, images: Sequence[np.ndarray], *, views: bool = True) -> np.ndarray:
        """Projected embeddings of images: ``(n, V, D)`` with views, else ``(n, D)``."""
        return self.embedder.project(self.embedder.features(images, views=views))


INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
"""``flat`` (exact; the embedding index's default), ``auto`` (``flat`` up to :data:`EXACT_MAX` images, ``ivfpq``
above; the vessel search's default) and the approximate ``ivf``, ``hnsw`` and ``ivfpq``. ``bench/bench_search.py``
measures them per image source on vectors drawn from a mixture fitted to real embeddings or vessel descriptors
(their clusters and spectrum decide how approximate search fares). At 1 M vectors on 2 cores: exact search of
embeddings 336-529 queries/s in 488 MiB; ``ivf`` (4000 lists, 128 visited) recall@10 0.88-0.96; ``hnsw`` (M 32,
efSearch 1024) 0.977 at 544 q/s; ``ivfpq`` (1000 lists, 16 % visited, 4-bit fast-scan codes, the best 160
re-ranked exactly): 0.992 at 3 363 q/s on the phantom's embeddings, on which its settings were chosen, but 0.971
(5.8x exact) on the second renderer's, which played no part; so the embedding index stays exact by default (a
guard that misses a training image's neighbour misses a leak). On the vessel descriptors (576 dims, not used in
choosing the settings) ``ivfpq`` reached 0.9994 at 100 k and 0.9957 at 1 M (6.1x exact, 2.4 GiB) on the second
renderer and 0.9986 at 100 k on the phantom. Exact search of 576 dims is 5x slower than of the embeddings, and
the 80 rows (views, shifted views) of every query image make it the costlier search: the vessel search uses
``auto`` with its own, lower switch (:data:`~..audit.vessel_search.EXACT_MAX`, 20 000)."""
EXACT_MAX = 250_000
"""Largest training set ``auto`` searches exactly: exact search costs linearly in the set (vessel descriptors: 839
queries/s at 100 k vectors on 2 cores, ~340 at 250 k); above it ``ivfpq`` answers several times faster."""
IVF_NPROBE = 128
"""Inverted lists visited per query of an ``ivf`` index (recall@10 0.986 at 100 k and 0.960 at 1 M vectors)."""
IVFPQ_PROBE_FRACTION = 0.16
"""Share of an ``ivfpq`` index's lists visited per query. Fewer, longer lists scan faster per code than many short
ones at the same recall (1 M vectors, recall@10 ~0.99: 1000 lists at 16 % ~3 000 q/s, 4000 lists at 12.8 % 2 200,
16 384 lists at 12.5 % 400), so ``ivfpq`` has sqrt(n) lists where ``ivf`` has 4 sqrt(n)."""
IVFPQ_K_FACTOR = 16
"""An ``ivfpq`` search re-ranks its ``16 k`` best candidates by exact inner product (``IndexRefineFlat``)."""
IVFPQ_MIN = 64
"""Smallest set an ``ivfpq`` index is built for (its 4-bit codebooks need 16 training vectors; exact search is
faster at such sizes anyway)."""


def index_kind(kind: str) -> str:
    """``kind`` when it names a FAISS index kind; :class:`InputError` otherwise."""
    if kind not in INDEX_KINDS:
        raise InputError(f"unknown index kind {kind!r} (use {', '.join(INDEX_KINDS)})")
    return kind


def resolve_kind(kind: str, n: int, exact_max: int = EXACT_MAX) -> str:
    """The index kind built for ``n`` training images: ``auto`` resolved by size (flat up to ``exact_max``)."""
    kind = index_kind(kind)
    if kind == "auto":
        return "flat" if n <= exact_max else "ivfpq"
    if kind == "ivfpq" and n < IVFPQ_MIN:
        raise InputError(f"an ivfpq index needs at least {IVFPQ_MIN} training images (this set has {n}); "
                         "use flat (exact) search")
    return kind


IVF_TRAIN_PER_LIST = {"ivf": 32, "ivfpq": 64}
"""Vectors per inverted list that the coarse quantizer (and ivfpq's codebooks) are trained on (k-means wants >= 39
per centroid; ivfpq was measured with 64)."""


def ivf_lists(n: int, kind: str = "ivf") -> int:
    """Inverted lists of an IVF index over ``n`` vectors, never more than ``n``: 4 sqrt(n) (FAISS's usual rule) for
    ``ivf``, sqrt(n) for ``ivfpq`` (see :data:`IVFPQ_PROBE_FRACTION`)."""
    return max(1, min(n, int(round((4 if kind == "ivf" else 1) * np.sqrt(n)))))


def ivf_nprobe(kind: str, lists: int) -> int:
    """Lists an ``ivf`` or ``ivfpq`` index of ``lists`` lists visits per query (``ivfpq``: at least 8, which costs
    nothing on a small set)."""
    if kind == "ivf":
        return min(lists, IVF_NPROBE)
    return min(lists, max(8, int(np.ceil(IVFPQ_PROBE_FRACTION * lists))))


def ivf_training_rows(n: int, rng: np.random.Generator, kind: str = "ivf") -> np.ndarray:
    """Sorted rows of an ``n``-vector set that an ``ivf``/``ivfpq`` index is trained on."""
    return np.sort(rng.choice(n, min(n, IVF_TRAIN_PER_LIST[kind] * ivf_lists(n, kind)), replace=False))


def set_search_params(index: faiss.Index, kind: str) -> faiss.Index:
    """Give a built or loaded index of ``kind`` its search-time settings (FAISS does not store them all)."""
    if kind in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = ivf_nprobe(kind, ivf.nlist)
    if kind == "ivfpq":
        index.k_factor = IVFPQ_K_FACTOR  # FAISS's Python objects are of the most derived class
    if kind == "hnsw":
        index.hnsw.efSearch = 128
    return index


def kind_of(index: faiss.Index) -> str:
    """The :data:`INDEX_KINDS` name of an index :func:`make_faiss` made (after a save and load too)."""
    if isinstance(index, faiss.IndexRefine):
        return "ivfpq"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    return "flat"


def read_faiss(path: Path) -> faiss.Index:
    """Read a FAISS index file with its search settings, its flat vectors memory-mapped read-only (the exact vectors
    of ``flat`` and ``ivfpq`` indexes: file pages, shared between processes, not private memory)."""
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    return set_search_params(index, kind_of(index))


def _write_faiss_atomic(index: faiss.Index, path: Path) -> None:
    """Write ``index`` to ``path`` (0600, its folder 0700) atomically, streamed (no copy of it in memory)."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    atomic_write_with(path, lambda fh: faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write)), private=True)


def make_faiss(dim: int, kind: str, n: int) -> faiss.Index:
    """An empty FAISS inner-product index of ``kind`` (resolved by :func:`resolve_kind`) for ``n`` vectors of
    ``dim``; an ``ivf`` or ``ivfpq`` one still needs training (:func:`trained_faiss` does it)."""
    kind = resolve_kind(kind, n)
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind in ("ivf", "ivfpq"):
        codes = "Flat" if kind == "ivf" else f"PQ{dim}x4fs,RFlat"  # ivfpq: one 4-bit code per dimension
        idx = faiss.index_factory(dim, f"IVF{ivf_lists(n, kind)},{codes}", faiss.METRIC_INNER_PRODUCT)
        return set_search_params(idx, kind)
    idx = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = 80
    return set_search_params(idx, kind)


def trained_faiss(dim: int, kind: str, n: int, sample: Callable[[np.ndarray], np.ndarray],
                  rng: np.random.Generator) -> faiss.Index:
    """:func:`make_faiss`, trained when its kind needs it on ``sample(rows)``: the vectors of the set's
    :func:`ivf_training_rows` (drawn from ``rng``). Vectors are added by the caller."""
    index = make_faiss(dim, kind, n)
    if not index.is_trained:
        index.train(sample(ivf_training_rows(n, rng, resolve_kind(kind, n))))
    return index


def build_index(
    *,
    out_dir: Path,
    train_dir: Path | None = None,
    records: Sequence[ImageRecord] | None = None,
    shas: Sequence[str] | None = None,
    embedder: Embedder,
    cache: ArrayCache,
    kind: str = "flat",
    batch_size: int = 32,
    seed: int = 0,
    workers: int = 1,
    progress: Progress = NULL_PROGRESS,
) -> GuardIndex:
    """Embed every training image (of ``train_dir``, or the given ``records`` with their content ``shas`` when
    already known) into an index folder at ``out_dir``; returns it loaded. ``kind`` is the FAISS index, one of
    :data:`INDEX_KINDS`; ``workers``: processes that compute the templates (0: one per core, as far as each gets
    :data:`BUILD_ITEMS_PER_WORKER` images)."""
    if records is None:
        if train_dir is None:
            raise InputError("build_index needs train_dir or records")
        records = scan_folder(train_dir)
    if not records:
        raise InputError("the training set is empty")
    if shas is None or len(shas) != len(records):  # callers that hashed the set already pass its hashes
        shas = hash_records(records, progress, "training set")
    if len(set(shas)) < len(shas):
        progress.log("note: the training set holds byte-identical duplicate images")
    kind = resolve_kind(kind, len(records))
    out_dir = Path(out_dir)
    _refuse_foreign(out_dir, "index folder")
    tmp = _fresh_build_dir(out_dir)
    try:
        _write_index_files(tmp, records, shas, embedder=embedder, cache=cache, kind=kind, batch_size=batch_size,
                           seed=seed, workers=workers, progress=progress)
        (tmp / BUILDING_MARKER).unlink()
        make_private_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-built index behind (the folder is ours)
        raise
    _refuse_foreign(out_dir, "index folder")  # re-check: it may have been filled while we were building
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return load_index(out_dir, embedder)


def _fresh_build_dir(out_dir: Path) -> Path:
    """Make ``OUT.building`` (0700, marked as ours); a leftover build of ours is removed, anything else refused."""
    tmp = out_dir.with_name(out_dir.name + ".building")
    if tmp.is_symlink() or (tmp.exists() and not (tmp / BUILDING_MARKER).is_file()):
        raise InputError(f"{tmp} exists and was not made by guard; move it away to build the index {out_dir}")
    shutil.rmtree(tmp, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(mode=0o700)
    (tmp / BUILDING_MARKER).write_bytes(b"")
    return tmp


def _projected(embedder: Embedder, feats: np.ndarray, rows: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Projected embeddings of the given rows of a (memory-mapped) feature array, ``chunk`` rows at a time."""
    return np.concatenate([embedder.project(np.asarray(feats[rows[j : j + chunk]]))
                           for j in range(0, len(rows), chunk)])


def _write_index_files(tmp: Path, records: Sequence[ImageRecord], shas: Sequence[str], *, embedder: Embedder,
                       cache: ArrayCache, kind: str, batch_size: int, seed: int, workers: int,
                       progress: Progress) -> None:
    n = len(records)
    # Features, sketches and vessel templates stream into memory maps on disk: memory stays bounded by a batch.
    n_feat = embedder.features([load_image(records[0].path)]).shape[1]
    side = (n, SKETCH_SIDE, SKETCH_SIDE)
    out = {
        "features": np.lib.format.open_memmap(tmp / "features.tmp.npy", mode="w+", dtype=np.float32, shape=(n, n_feat)),
        "sketches": np.lib.format.open_memmap(tmp / "sketches.npy", mode="w+", dtype=np.float16, shape=side),
        "vessels": np.lib.format.open_memmap(tmp / "vessels.npy", mode="w+", dtype=np.float16, shape=side),
    }
    compute_features(records, shas, embedder=embedder, cache=cache, batch_size=batch_size, progress=progress,
                     what="training set", out=out, workers=workers)
    feats = out["features"]
    rng = np.random.default_rng(seed)
    pick = np.arange(n) if n <= _PCA_SAMPLE else np.sort(rng.choice(n, _PCA_SAMPLE, replace=False))
    embedder.fit(np.asarray(feats[pick]))
    index = None
    for i in range(0, n, 8192):
        emb = embedder.project(np.asarray(feats[i : i + 8192]))
        if index is None:  # an IVF kind is fitted on a sample of the set
            index = trained_faiss(emb.shape[1], kind, n, rng=rng, sample=partial(_projected, embedder, feats))
        index.add(emb)
    for arr in out.values():
        arr.flush()
    del feats, out
    (tmp / "features.tmp.npy").unlink()
    faiss.write_index(index, str(tmp / "index.faiss"))
    np.savez(tmp / "embedder.npz", **embedder.state())
    recs = [
        {"file_name": r.file_name, "image_id": r.image_id, "patient_id": r.patient_id, "sha256": h}
        for r, h in zip(records, shas)
    ]
    atomic_write_json(tmp / "records.json", recs, private=True)
    meta = {
        "version": INDEX_VERSION,
        "kind": kind,
        "n": n,
        "dim": int(index.d),
        "embedder": embedder.name,
        "feature_fingerprint": embedder.feature_fingerprint(),
        "embedder_fingerprint": embedder.fingerprint(),
        "sketch_version": SKETCH_VERSION,
        "vessel_version": VESSEL_VERSION,
        "dataset_fingerprint": dataset_fingerprint(shas),
        "identity_fingerprint": identity_fingerprint(records, shas),
    }
    atomic_write_json(tmp / "meta.json", meta, private=True)


_RECORD_KEYS = ("file_name", "image_id", "patient_id", "sha256")


def load_index(path: Path, embedder: Embedder) -> GuardIndex:
    """Load an index folder for use with ``embedder``.

    Raises :class:`InputError` when the folder is not an index, :class:`IndexMismatchError` when it was built
    with another embedder or sketch version.
    """
    path = Path(path)
    try:
        meta = read_json(path / "meta.json", expect=dict)
        records = read_json(path / "records.json", expect=list)
    except FileNotFoundError:
        raise InputError(f"not a guard index folder (meta.json/records.json missing): {path}") from None
    except InputError as exc:
        raise InputError(f"corrupt index folder: {exc}") from None
    if not all(isinstance(r, dict) and all(isinstance(r.get(k), str) for k in _RECORD_KEYS) for r in records):
        raise InputError(f"corrupt index folder {path}: records.json entries lack {', '.join(_RECORD_KEYS)}")
    if meta.get("version") != INDEX_VERSION:
        raise IndexMismatchError(f"index {path} has version {meta.get('version')!r}, expected {INDEX_VERSION}")
    if meta.get("feature_fingerprint") != embedder.feature_fingerprint():
        raise IndexMismatchError(
            f"index {path} was built with embedder {meta.get('feature_fingerprint')!r}, "
            f"not {embedder.feature_fingerprint()!r}; rebuild it or use the same --embedder"
        )
    if meta.get("sketch_version") != SKETCH_VERSION or meta.get("vessel_version") != VESSEL_VERSION:
        raise IndexMismatchError(
            f"index {path} holds templates {meta.get('sketch_version')!r}/{meta.get('vessel_version')!r} of another "
            f"guard version, not {SKETCH_VERSION}/{VESSEL_VERSION}; give another --index folder to rebuild")
    try:
        with np.load(path / "embedder.npz", allow_pickle=False) as z:
            embedder.load_state({k: z[k] for k in z.files})
        index = read_faiss(path / "index.faiss")
        sketches = np.load(path / "sketches.npy", mmap_mode="r", allow_pickle=False)
        vessels = np.load(path / "vessels.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"corrupt index folder {path}: {str(exc).splitlines()[0]}") from None
    if embedder.fingerprint() != meta.get("embedder_fingerprint"):
        raise IndexMismatchError(f"index {path}: embedder projection does not match its fingerprint")
    if index.ntotal != len(records) or sketches.shape != (len(records), SKETCH_SIDE, SKETCH_SIDE) \
            or vessels.shape != sketches.shape:
        raise InputError(f"corrupt index folder {path}: sizes of index, sketches and records disagree")
    return GuardIndex(path=path, embedder=embedder, faiss_index=index, sketches=sketches, vessels=vessels,
                      records=records, meta=meta)
