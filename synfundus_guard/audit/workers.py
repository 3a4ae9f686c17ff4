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

from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..data.images import decode_image, read_image_bytes
from ..errors import CheckError
from ..fsutil import sha256_bytes
from ..parallel import auto_workers, limit_threads, ordered_map
from .base import Candidate, Check, Finding, run_checks

__all__ = ["auto_workers", "limit_threads", "map_batches", "check_files", "read_candidate"]

CheckFactory = Callable[[], Sequence[Check]]
"""Builds the checks; must be picklable (a module-level function or a :func:`functools.partial` of one)."""
BatchResult = list[tuple[Candidate, str, list[Finding]]]
"""Per image of a batch: the candidate (its image dropped in workers), the sha256 of its bytes, its findings."""

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


def check_in_worker(checks: Sequence[Check], release_dir: Path, rels: Sequence[Path]) -> BatchResult:
    """:func:`check_files`, returning what the parent needs: names, hashes and findings, not the pixels."""
    return [(Candidate(c.file_name, _EMPTY, c.path), sha, f) for c, sha, f in check_files(checks, release_dir, rels)]


def _init_worker(factory: CheckFactory) -> None:
    global _CHECKS
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
    try:
        yield from ordered_map(partial(_check_in_worker, release_dir), [list(rels) for rels in batches],
                               workers=min(workers, len(batches)), setup=_init_worker, setup_args=(factory,))
    except BrokenProcessPool as exc:
        raise CheckError(f"a check worker process died ({exc}); nothing was written. Run again, with fewer "
                         "--workers if memory is short") from None
