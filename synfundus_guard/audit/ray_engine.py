"""``--engine ray``: the same per-image checks as :mod:`.workers`, on a Ray cluster (or a local Ray instance).

Each Ray actor (one CPU) builds its checks once from the same picklable factory the local workers use: the
policy, the holdout calibration and the path of the training index travel with it, and the actor loads the index
from that path, so on a cluster the index folder, the release and the cache must sit on a filesystem every node
mounts (as they would for any Ray job reading files). Batches go out through a :class:`ray.util.ActorPool`,
which keeps one batch per actor in flight and returns results in release order: the report is the one the local
engine writes. Ray is an optional dependency: ``pip install 'synfundus-guard[ray]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from ..errors import CheckError, MissingDependencyError
from .workers import BatchResult, CheckFactory, check_in_worker, limit_threads


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray: pip install 'synfundus-guard[ray]'") from None
    return ray


def map_batches_ray(factory: CheckFactory, release_dir: Path, batches: Sequence[Sequence[Path]], *, workers: int,
                    address: str | None = None) -> Iterator[BatchResult]:
    """Check ``batches`` on Ray actors, in order. Starts a local Ray instance with ``workers`` CPUs unless
    ``address`` names a running cluster (``ray start --head``); ``workers`` <= 0 uses every CPU it offers."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        kw = {"address": address} if address else {"num_cpus": max(workers, 1)}
        try:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; say which cluster and why
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise CheckError(f"could not start {where}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    try:
        n = workers if workers >= 1 else max(1, int(ray.cluster_resources().get("CPU", 1)))
        n = min(n, max(len(batches), 1))

        @ray.remote(num_cpus=1)
        class Checker:
            def __init__(self, make: CheckFactory) -> None:
                limit_threads()
                self.checks = make()

            def run(self, folder: str, rels: list[str]) -> BatchResult:
                return check_in_worker(self.checks, Path(folder), [Path(r) for r in rels])

        actors = [Checker.remote(factory) for _ in range(n)]
        pool = ray.util.ActorPool(actors)
        jobs = ((str(release_dir), [r.as_posix() for r in rels]) for rels in batches)
        try:
            yield from pool.map(lambda actor, job: actor.run.remote(*job), jobs)
        except ray.exceptions.RayActorError as exc:
            raise CheckError(f"a Ray check worker died ({str(exc).splitlines()[0]}); nothing was written") from None
        finally:
            for actor in actors:
                ray.kill(actor)
    finally:
        if started:
            ray.shutdown()
