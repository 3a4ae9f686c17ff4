"""The interface every per-image check implements, and the fail-closed runner around it.

A check looks at a batch of candidate images and returns one :class:`Finding` per image: scores, a flag,
human-readable reasons, and private evidence (which may name training images and so never enters a public
file). Checks receive their thresholds when they are built (from calibration and the policy); the policy's
``action`` for the check decides whether a flag blocks the image (see :mod:`synfundus_guard.policies`).

:func:`run_checks` runs checks so that an exception inside a check becomes a flagged finding whose reason is
the error: when a check cannot run, the image does not ship.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Sequence

from ..data.memo import pinned
from ..parallel import single_thread_blas
from ..results import Candidate, Finding

__all__ = ["Candidate", "Check", "Finding", "failed_closed", "run_checks"]


class Check(abc.ABC):
    """A per-image check. Subclasses set ``name`` and implement :meth:`check_batch`."""

    name: str = "check"
    calibration: dict[str, Any] = {}
    """Public summary of the holdout calibration its thresholds come from (set by the runner; report pages plot
    the holdout histograms in it). Empty for checks with fixed thresholds."""

    @abc.abstractmethod
    def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
        """Return exactly one finding per candidate, in order."""

    def fingerprint(self) -> dict[str, Any]:
        """Public description of the check's configuration and thresholds (for reports and manifests)."""
        return {"name": self.name}


def failed_closed(check: str, error: str) -> Finding:
    """The finding recorded when ``check`` could not run on an image."""
    return Finding(check=check, flagged=True, reasons=(f"{check} check could not run: {error}",), error=error)


def _finite_or_failed(finding: Finding) -> Finding:
    """A score that is NaN or infinite means the check did not work: fail that image closed."""
    bad = [k for k, v in finding.scores.items() if not math.isfinite(float(v))]
    if bad:
        return failed_closed(finding.check, f"non-finite score {bad[0]}")
    return finding


def run_checks(checks: Sequence[Check], batch: Sequence[Candidate]) -> list[list[Finding]]:
    """Run every check on ``batch``; returns, per image, the list of findings (one per check).

    Any exception, or a check returning the wrong number of findings, fails every image of the batch closed
    for that check, with the error as the reason. numpy's BLAS runs on one thread meanwhile
    (:func:`~synfundus_guard.parallel.single_thread_blas`).
    """
    per_image: list[list[Finding]] = [[] for _ in batch]
    with single_thread_blas(), pinned([c.image for c in batch]):  # each image hashed once for the checks' memo
        for check in checks:
            try:
                findings = check.check_batch(batch)
                if len(findings) != len(batch):
                    raise RuntimeError(f"returned {len(findings)} findings for {len(batch)} images")
                findings = [_finite_or_failed(f) for f in findings]
            except Exception as exc:  # noqa: BLE001 - fail closed on anything a check raises
                msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
                findings = [failed_closed(check.name, msg) for _ in batch]
            for slot, finding in zip(per_image, findings):
                slot.append(finding)
    return per_image
