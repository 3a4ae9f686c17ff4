"""Thread limits of synfundus_guard.parallel: numpy's BLAS on one thread while checks run, FAISS's untouched."""

from __future__ import annotations

import faiss  # noqa: F401 - loads FAISS's own BLAS, which must stay as it is
import numpy as np
from threadpoolctl import ThreadpoolController

from synfundus_guard.audit.base import Candidate, Check, Finding, run_checks
from synfundus_guard.parallel import single_thread_blas


def _blas_threads() -> dict[str, int]:
    return {lib.filepath: lib.num_threads for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"}


def test_single_thread_blas_limits_numpy_only_and_restores() -> None:
    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS is loaded
    before = _blas_threads()
    numpy_libs = [p for p in before if "faiss" not in p]
    assert numpy_libs
    with single_thread_blas():
        inside = _blas_threads()
    assert all(inside[p] == 1 for p in numpy_libs)
    assert all(inside[p] == n for p, n in before.items() if "faiss" in p)
    assert _blas_threads() == before


class _Probe(Check):
    name = "probe"

    def fingerprint(self) -> dict:
        return {"name": self.name}

    def check_batch(self, batch):
        threads = min(n for p, n in _blas_threads().items() if "faiss" not in p)
        return [Finding(check=self.name, flagged=False, scores={"threads": float(threads)}) for _ in batch]


def test_checks_run_with_numpy_blas_on_one_thread() -> None:
    findings = run_checks([_Probe()], [Candidate(file_name="a.png", image=np.zeros((4, 4, 3), np.float32))])
    assert findings[0][0].scores["threads"] == 1.0


def test_a_worker_runs_one_thread_without_importing_torch_and_torch_imported_later_follows() -> None:
    """limit_threads does not import torch (~1.6 s of every worker's start-up); torch imported afterwards in the
    worker, as an open_clip embedder would, still runs on one thread, whatever the parent's OMP_NUM_THREADS."""
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            "from synfundus_guard.parallel import limit_threads\n"
            "limit_threads()\n"
            "print('torch' in sys.modules)\n"
            "import torch\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"}).stdout.split()
    assert out == ["False", "1"]
