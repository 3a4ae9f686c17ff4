"""An ordered parallel map over worker processes: all cores of one machine, memory bounded.

The audit's checks (:mod:`.audit.workers`) and the index build (:mod:`.index.store`) both map a function over
batches in ``spawn``-ed worker processes that set themselves up once (load a model or an index from its folder,
never through a pipe), with at most ``2 x workers`` batches in flight and results in input order. Each worker uses
one thread (torch, OpenMP, OpenCV, FAISS, BLAS), so N workers use N cores without oversubscription. A cluster is
Ray's job (:mod:`.audit.ray_engine`), not this module's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MIN_ITEMS_PER_WORKER = 64
"""Automatic worker counts give each worker at least this many images: starting one costs seconds (interpreter,
OpenCV, FAISS, loading an index), checking or embedding 64 images costs several more."""


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(n_items: int, requested: int = 0, min_per_worker: int = MIN_ITEMS_PER_WORKER) -> int:
    """The number of worker processes to use: ``requested`` when >= 1, else all cores (0 = auto) as far as each
    gets ``min_per_worker`` items; 1 means "in this process"."""
    if requested >= 1:
        return requested
    return max(1, min(cores(), n_items // min_per_worker))


def limit_threads() -> None:
    """One thread per worker process (torch, OpenMP, OpenCV, FAISS, BLAS): N workers use N cores.

    torch is set here only where it is already imported; where a worker imports it later (an open_clip embedder),
    it takes its thread count from ``OMP_NUM_THREADS``, set here first. Importing torch only to set it cost every
    worker ~1.6 s of start-up, and the pixel embedder and the checks do not use it."""
    os.environ["OMP_NUM_THREADS"] = "1"  # a worker's own environment: OpenMP libraries loaded from here on read it
    import cv2
    import faiss
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # numpy's BLAS was loaded before this ran, so the variable above came too late for it

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    cv2.setNumThreads(1)
    faiss.omp_set_num_threads(1)


@contextmanager
def single_thread_blas() -> Iterator[None]:
    """numpy's BLAS (not FAISS's) on one thread within the block.

    After a multi-threaded matrix product OpenBLAS's idle threads spin; on few cores they starve FAISS's OpenMP
    threads (measured on 2 cores: 40 queries against 120 vectors took 3.9 ms right after a small numpy product,
    0.19 ms otherwise). The checks' products are too small to gain from threads, their searches are not.
    """
    from threadpoolctl import ThreadpoolController

    libs = [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and "faiss" not in lib.filepath]
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


def _init(setup: Callable[..., None] | None, args: tuple) -> None:
    limit_threads()
    if setup is not None:
        setup(*args)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
                setup: Callable[..., None] | None = None, setup_args: tuple[Any, ...] = ()) -> Iterator[R]:
    """``fn(item)`` for each item, in order, computed in ``workers`` spawned processes that first run
    ``setup(*setup_args)`` (``fn`` and ``setup`` must be picklable: module-level functions or partials of them).

    At most ``2 x workers`` items are in flight. A worker that dies (killed, out of memory) raises
    :class:`concurrent.futures.process.BrokenProcessPool`; callers say what that means for their work.
    """
    ctx = mp.get_context("spawn")  # fork is unsafe once torch / OpenMP threads exist in this process
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init, initargs=(setup, setup_args))
    pending: deque[Future] = deque()
    todo = iter(items)
    try:
        for item in todo:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield result
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()
