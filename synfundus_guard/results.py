"""The results data model that every layer shares: what a check found, what an image and a release got.

Checks (``audit/``) produce :class:`Finding` s, the policy layer (``policies/``) turns them into
:class:`ImageResult` s and a :class:`ReleaseVerdict`, the release layer (``release/``) stores the
:class:`Report`, and the report formats (``formats/``) render all of it. Every one of them imports this module
downward; it imports nothing of theirs, so none of them depends on another through the data model.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .errors import InputError

SCHEMA = "synfundus-guard/report/v1"
PRIVATE_DIR = "private"
"""The report folder's owner-only sub-folder for evidence that names training images."""

PASS, FLAG, ERROR = "pass", "flag", "error"
"""Per-check statuses stored in :attr:`ImageResult.checks`."""
LOW_FPRS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_01pct_fpr": 0.001}
"""Membership metrics read at a low false-positive rate: report key -> that rate."""


@dataclass(frozen=True)
class Candidate:
    """One image under test: a synthetic sample in the sampler, or a release file in an audit."""

    file_name: str
    """Release-relative name (public)."""
    image: np.ndarray
    """float32 RGB array (H, W, 3) in [0, 1]."""
    path: Path | None = None
    """The file on disk when there is one (the metadata check re-reads it)."""


@dataclass(frozen=True)
class Finding:
    """What one check concluded about one image."""

    check: str
    """Name of the check that produced it."""
    flagged: bool
    """True when the check found a (possible) leak, or could not run."""
    reasons: tuple[str, ...] = ()
    """One line per problem, public: never names a training image or patient."""
    scores: dict[str, float] = field(default_factory=dict)
    """Numeric evidence (public), e.g. ``{"memorization.embedding_sim": 0.93}``."""
    private: dict[str, Any] = field(default_factory=dict)
    """Evidence that may name training images (closest pairs); written only to the private report."""
    error: str | None = None
    """Set when the check failed to run; the image then fails closed."""


@dataclass
class ImageResult:
    """Public outcome for one image."""

    file_name: str
    verdict: str
    """``"pass"`` or ``"fail"``."""
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """Flags from checks whose policy action is ``warn``: reported, not blocking."""
    checks: dict[str, str] = field(default_factory=dict)
    """Per check name: ``"pass"``, ``"flag"`` or ``"error"`` (so a gate can re-apply a policy's actions)."""


@dataclass
class Report:
    """Machine-readable result of an audit (``report.json``)."""

    policy: dict[str, str]
    embedder: dict[str, Any]
    images: list[ImageResult]
    verdict: str
    """Release verdict: ``"pass"`` or ``"fail"``."""
    summary: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    """Fingerprints of the per-image checks that ran (thresholds included)."""
    calibration: dict[str, Any] = field(default_factory=dict)
    release_checks: dict[str, Any] = field(default_factory=dict)
    """Release-level results, e.g. ``{"membership": {...}}``."""
    violations: list[str] = field(default_factory=list)
    """Release-level policy violations, one line each."""
    release: dict[str, Any] = field(default_factory=dict)
    tool: dict[str, str] = field(default_factory=lambda: {"name": "synfundus-guard", "version": __version__})
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """Inverse of :meth:`to_dict`; raises :class:`InputError` on a document that is not a report."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise InputError(f"not a synfundus-guard report (expected schema {SCHEMA!r})")
        if not isinstance(data.get("images"), list):
            raise InputError("malformed report: 'images' must be a list")
        try:
            images = [ImageResult(**img) for img in data["images"]]
            rest = {k: v for k, v in data.items() if k != "images"}
            return cls(images=images, **rest)
        except (KeyError, TypeError) as exc:
            raise InputError(f"malformed report: {exc}") from None


class Status(str, enum.Enum):
    """Outcome of one release-level check."""

    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"
    """Not evaluated: not required by the policy, or the audit did not run it (then a note says so)."""


@dataclass(frozen=True)
class ReleaseCheck:
    """One release-level check and its outcome, e.g. ``failed-fraction`` or ``membership-auc``."""

    name: str
    status: Status
    message: str
    """One line: the measured value and the limit, the violation, or why it was skipped."""
    group: str = "release"
    """``"release"`` for release limits, ``"checks"`` for the coverage of a per-image check."""


@dataclass(frozen=True)
class ReleaseVerdict:
    """What a policy says about a whole release."""

    verdict: str
    """``"pass"`` or ``"fail"``."""
    violations: tuple[str, ...]
    """Every violated limit, one line each (the messages of the failed :attr:`checks`)."""
    notes: tuple[str, ...]
    """Things a reviewer must know that are not violations (a check not run, another policy's thresholds)."""
    image_failures: int
    """Images whose verdict is not ``"pass"``."""
    failed_fraction: float
    """``image_failures`` over the number of images audited (0.0 when there are none)."""
    checks: tuple[ReleaseCheck, ...] = ()
    """Every release-level check, in a stable order (for JUnit test cases and the terminal)."""
    images: int = 0
    """Images audited."""
    policy_name: str = ""
    policy_sha256: str = ""
    actions: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    """Per image check: ``"block"``, ``"warn"`` or ``"off"`` under the judging policy (for CI formats)."""


def summarize(results: Sequence[ImageResult]) -> dict[str, Any]:
    """Counts of passed/failed images and flags per check."""
    by_check: dict[str, int] = {}
    for r in results:
        for name, status in r.checks.items():
            if status != "pass":
                by_check[name] = by_check.get(name, 0) + 1
    n_fail = sum(r.verdict == "fail" for r in results)
    return {"n_images": len(results), "n_pass": len(results) - n_fail, "n_fail": n_fail,
            "n_warned": sum(bool(r.warnings) for r in results), "flags_by_check": by_check}
