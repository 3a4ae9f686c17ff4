"""Policy schema and loader.

A policy is a YAML file naming the checks a release tier must pass and their limits. Loading validates the
whole document and raises one :class:`~synfundus_guard.errors.PolicyError` listing *every* problem (unknown
keys, wrong types, out-of-range values), so one CI run shows all of them.

Thresholds for distance-like checks are never absolute constants: a policy names a *quantile* of the
holdout (other-patient) distribution, and calibration turns it into a threshold for the data at hand.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import PolicyError
from ..fsutil import sha256_bytes


class Action(str, enum.Enum):
    """What a flag from a check does to an image."""

    BLOCK = "block"
    """The image fails and may not enter the release."""
    WARN = "warn"
    """The flag is reported but the image may ship."""


class Bound(str, enum.Enum):
    """Which value of a metric with a confidence interval a limit is compared with."""

    POINT = "point"
    LOWER = "lower"
    UPPER = "upper"


@dataclass(frozen=True)
class MemorizationPolicy:
    """Nearest-neighbour memorization check (FAISS kNN, then an aligned pixel check on candidates)."""

    enabled: bool = True
    action: Action = Action.BLOCK
    k: int = 10
    """Training neighbours retrieved per image and verified in pixel space."""
    embedding_quantile: float = 0.999
    """Flag when embedding similarity to a training image exceeds this quantile of holdout→train."""
    pixel_quantile: float = 0.999
    """Flag when aligned pixel similarity exceeds this quantile of holdout→train."""


@dataclass(frozen=True)
class FilterPolicy:
    """An identity-leak filter (vessels, text, faces, metadata)."""

    enabled: bool = True
    action: Action = Action.BLOCK
    quantile: float = 0.999
    """For calibrated filters (vessels): flag above this quantile of holdout (other-patient) match scores."""


@dataclass(frozen=True)
class IdentityPolicy:
    """Identity-leak filters."""

    vessels: FilterPolicy = field(default_factory=FilterPolicy)
    text: FilterPolicy = field(default_factory=FilterPolicy)
    faces: FilterPolicy = field(default_factory=FilterPolicy)
    metadata: FilterPolicy = field(default_factory=FilterPolicy)


@dataclass(frozen=True)
class MembershipPolicy:
    """Limits on membership-inference attack success (model white-box and release black-box)."""

    enabled: bool = True
    max_auc: float | None = 0.6
    max_tpr_at_1pct_fpr: float | None = None
    max_tpr_at_01pct_fpr: float | None = None
    bound: Bound = Bound.UPPER
    """The confidence bound compared with each limit (``upper`` is the conservative choice)."""
    bootstrap: int = 200
    """Bootstrap resamples for confidence intervals."""


@dataclass(frozen=True)
class GenerationPolicy:
    """Rules for the guarded sampler and the model behind a release."""

    max_rejection_rate: float = 0.5
    """Sampling stops (exit 1) when the fraction of rejected samples exceeds this."""
    min_samples_before_stop: int = 20
    """The rejection rate is only judged once this many samples were drawn."""
    require_dp: bool = False
    max_epsilon: float | None = None


@dataclass(frozen=True)
class Policy:
    """A release policy. ``sha256`` is the hash of the file it was read from."""

    name: str
    description: str = ""
    max_failed_fraction: float = 0.0
    """Release-level: fraction of audited images allowed to fail before the release fails."""
    memorization: MemorizationPolicy = field(default_factory=MemorizationPolicy)
    identity: IdentityPolicy = field(default_factory=IdentityPolicy)
    membership: MembershipPolicy = field(default_factory=MembershipPolicy)
    generation: GenerationPolicy = field(default_factory=GenerationPolicy)
    sha256: str = ""
    source: str = ""

    def fingerprint(self) -> dict[str, str]:
        """Public identification of the policy for reports and manifests."""
        return {"name": self.name, "sha256": self.sha256}


# --- validation -------------------------------------------------------------------------------------------

_UNIT = ("in [0, 1]", lambda v: 0.0 <= v <= 1.0)
_POS = ("> 0", lambda v: v > 0)
_RANGES: dict[tuple[type, str], tuple[str, Any]] = {
    (Policy, "max_failed_fraction"): _UNIT,
    (MemorizationPolicy, "k"): ("between 1 and 1000", lambda v: 1 <= v <= 1000),
    (MemorizationPolicy, "embedding_quantile"): _UNIT,
    (MemorizationPolicy, "pixel_quantile"): _UNIT,
    (FilterPolicy, "quantile"): _UNIT,
    (MembershipPolicy, "max_auc"): _UNIT,
    (MembershipPolicy, "max_tpr_at_1pct_fpr"): _UNIT,
    (MembershipPolicy, "max_tpr_at_01pct_fpr"): _UNIT,
    (MembershipPolicy, "bootstrap"): ("between 10 and 100000", lambda v: 10 <= v <= 100000),
    (GenerationPolicy, "max_rejection_rate"): _UNIT,
    (GenerationPolicy, "min_samples_before_stop"): ("between 1 and 1000000", lambda v: 1 <= v <= 1_000_000),
    (GenerationPolicy, "max_epsilon"): _POS,
}
_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def _check_scalar(value: Any, annotation: str, where: str, problems: list[str]) -> Any:
    optional = annotation.endswith("| None")
    base = annotation.replace("| None", "").strip()
    if value is None:
        if optional:
            return None
        problems.append(f"{where}: must not be empty")
        return None
    if base in ("Action", "Bound"):
        enum_cls = Action if base == "Action" else Bound
        try:
            return enum_cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum_cls)
            problems.append(f"{where}: {value!r} is not one of {allowed}")
            return None
    typ = _TYPES[base]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        problems.append(f"{where}: expected {base}, got {type(value).__name__} {value!r}")
        return None
    return value


def _build(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{where or 'policy'}: expected a mapping, got {type(data).__name__}")
        return cls() if cls is not Policy else None
    known = {f.name: f for f in fields(cls) if f.name not in ("sha256", "source")}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        f = known.get(key)
        if f is None:
            problems.append(f"{path}: unknown key (allowed: {', '.join(sorted(known))})")
            continue
        ann = f.type if isinstance(f.type, str) else f.type.__name__
        sub = _SECTIONS.get(ann)
        if sub is not None:
            kwargs[key] = _build(sub, value, path, problems)
            continue
        checked = _check_scalar(value, ann, path, problems)
        if checked is None:
            continue
        rule = _RANGES.get((cls, key))
        if rule is not None and not rule[1](checked):
            problems.append(f"{path}: {checked!r} must be {rule[0]}")
            continue
        kwargs[key] = checked
    if cls is Policy and "name" not in kwargs:
        if "name" not in data:
            problems.append("name: required")
        return None
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        problems.append(f"{where or 'policy'}: {exc}")
        return None


_SECTIONS: dict[str, type] = {
    "MemorizationPolicy": MemorizationPolicy,
    "FilterPolicy": FilterPolicy,
    "IdentityPolicy": IdentityPolicy,
    "MembershipPolicy": MembershipPolicy,
    "GenerationPolicy": GenerationPolicy,
}


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse and validate policy YAML. Raises :class:`PolicyError` listing every problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise PolicyError(source, [f"not valid YAML{at}"]) from None
    problems: list[str] = []
    policy = _build(Policy, data, "", problems)
    if problems or policy is None:
        raise PolicyError(source, problems or ["empty policy"])
    object.__setattr__(policy, "sha256", sha256_bytes(text.encode("utf-8")))
    object.__setattr__(policy, "source", source)
    return policy


def load_policy(path: Path) -> Policy:
    """Load and validate a policy file. Raises :class:`PolicyError` (exit 2) on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(str(path), [f"cannot read ({exc})"]) from None
    return parse_policy(text, source=str(path))
