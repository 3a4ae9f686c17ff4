"""Run per-image checks over release files in worker processes: all cores on one machine.

Each worker builds its own checks once (from a picklable factory: the training index is loaded from its folder,
never copied through a pipe), then reads, hashes, decodes and checks whole batches of files. Results come back
in release order, with at most ``2 x workers`` batches in flight, so memory does not grow with the release.
Workers use one thread each (torch, FAISS, OpenCV), so N workers use N cores without oversubscription.

A check that raises inside a worker fails its images closed (:func:`~.base.run_checks`), as in one process; a
file that cannot be read or decoded raises in the parent as it would in one process; a worker that dies (killed,
out of memory) raises :class:`~synfundus_guard.errors.CheckError`, and nothing is written.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..data.images import decode_image, read_image_bytes
from ..errors import CheckError
from ..fsutil import sha256_bytes
from .base import Candidate, Check, Finding, run_checks

CheckFactory = Callable[[], Sequence[Check]]
"""Builds the checks; must be picklable (a module-level function or a :func:`functools.partial` of one)."""
BatchResult = list[tuple[Candidate, str, list[Finding]]]
"""Per image of a batch: the candidate (its image dropped in workers), the sha256 of its bytes, its findings."""

MIN_IMAGES_PER_WORKER = 64
"""``workers=0`` (auto) starts one worker per core only when each would get at least this many images: starting
a worker costs seconds (interpreter, torch, loading the index), checking 64 images costs several more."""


def auto_workers(n_images: int, requested: int = 0) -> int:
    """The number of worker processes to use: ``requested`` when >= 1, else all cores (0 = auto) as far as each
    gets :data:`MIN_IMAGES_PER_WORKER` images; 1 means "in this process"."""
    if requested >= 1:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, n_images // MIN_IMAGES_PER_WORKER))


def read_candidate(release_dir: Path, rel: Path) -> tuple[Candidate, str]:
    """Read one release file once: decoded for the checks, hashed (sha256) for the seal."""
    path = release_dir / rel
    data = read_image_bytes(path)
    return Candidate(rel.as_posix(), decode_image(data, str(path)), path), sha256_bytes(data)


def check_files(checks: Sequence[Check], release_dir: Path, rels: Sequence[Path]) -> BatchResult:
    """Read and check one batch of release files (in this process)."""
    read = [read_candidate(release_dir, r) for r in rels]
    batch = [c for c, _ in read]
    return [(c, sha, f) for (c, sha), f in zip(read, run_checks(checks, batch))]


_CHECKS: Sequence[Check] | None = None
_EMPTY = np.zeros((0, 0, 3), np.float32)


def limit_threads() -> None:
    """One thread per worker process (torch, OpenMP, OpenCV, FAISS): N workers use N cores."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2
    import faiss
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    faiss.omp_set_num_threads(1)


def check_in_worker(checks: Sequence[Check], release_dir: Path, rels: Sequence[Path]) -> BatchResult:
    """:func:`check_files`, returning what the parent needs: names, hashes and findings, not the pixels."""
    return [(Candidate(c.file_name, _EMPTY, c.path), sha, f) for c, sha, f in check_files(checks, release_dir, rels)]


def _init_worker(factory: CheckFactory) -> None:
    global _CHECKS
    limit_threads()
    _CHECKS = factory()


def _check_in_worker(release_dir: Path, rels: Sequence[Path]) -> BatchResult:
    assert _CHECKS is not None, "worker not initialised"
    return check_in_worker(_CHECKS, release_dir, rels)


ENGINES = ("local", "ray")


def map_batches(factory: CheckFactory, checks: Sequence[Check], release_dir: Path,
                batches: Sequence[Sequence[Path]], *, workers: int, engine: str = "local",
                address: str | None = None) -> Iterator[BatchResult]:
    """Check ``batches`` of release files in order: in this process with ``checks`` when ``workers`` is 1, else
    in ``workers`` processes that build their own checks with ``factory``; with ``engine="ray"``, on Ray actors
    (:mod:`.ray_engine`; ``address``: a running cluster)."""
    if engine == "ray":
        from .ray_engine import map_batches_ray

        yield from map_batches_ray(factory, release_dir, batches, workers=workers, address=address)
        return
    if workers <= 1 or len(batches) <= 1:
        for rels in batches:
            yield check_files(checks, release_dir, rels)
        return
    ctx = mp.get_context("spawn")  # fork is unsafe once torch / OpenMP threads exist in this process
    pool = ProcessPoolExecutor(max_workers=min(workers, len(batches)), mp_context=ctx, initializer=_init_worker,
                               initargs=(factory,))
    pending: deque[Future] = deque()
    todo = iter(batches)
    try:
        for rels in todo:
            pending.append(pool.submit(_check_in_worker, release_dir, list(rels)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_check_in_worker, release_dir, list(nxt)))
            yield result
    except BrokenProcessPool as exc:
        raise CheckError(f"a check worker process died ({exc}); nothing was written. Run again, with fewer "
                         "--workers if memory is short") from None
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
