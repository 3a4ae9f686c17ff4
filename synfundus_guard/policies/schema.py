"""Policy schema and loader.

A policy is a YAML file naming the checks a release tier must pass and their limits. Loading validates the
whole document and raises one :class:`~synfundus_guard.errors.PolicyError` listing *every* problem (unknown
keys, wrong types, out-of-range values), so one CI run shows all of them.

Thresholds for distance-like checks are never absolute constants: a policy names a *quantile* of the
holdout (other-patient) distribution, and calibration turns it into a threshold for the data at hand.

Policy files come from CI configs and pull requests, so the YAML is read with bounds: at most
:data:`MAX_POLICY_BYTES`, nesting at most :data:`MAX_POLICY_DEPTH` deep, and no anchors or aliases at all (a
policy never needs them, and nine nested aliases of nine items expand to 10^9 nodes: the "billion laughs" that
took 100 s and 5.8 GB before this check). The structure is checked on the YAML event stream, which the parser
produces iteratively without building or expanding anything, before a single node is constructed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import PolicyError
from ..fsutil import sha256_bytes
from .shipped import is_policy_name, shipped_policy_names, shipped_policy_text

MAX_POLICY_BYTES = 1024 * 1024
"""Largest policy file accepted (the shipped ones are under 2 KB)."""
MAX_POLICY_DEPTH = 16
"""Deepest nesting of mappings/sequences accepted (the schema itself is three levels deep)."""
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
class VesselsPolicy(FilterPolicy):
    """The vessels filter: a calibrated identity-leak filter with a cheap first pass."""

    first_pass: bool = True
    """Clear an image on its first pass (a few candidates aligned) when that flags nothing; ``false`` aligns every
    retrieved candidate of every image (~2-3x the check's time; the first pass cleared 2 of 1 666 revisits that
    the full path flags in ``bench/bench_vessels.py``)."""


@dataclass(frozen=True)
class IdentityPolicy:
    """Identity-leak filters."""

    vessels: VesselsPolicy = field(default_factory=VesselsPolicy)
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
class FidelityPolicy:
    """Optional limits on fidelity and utility (``guard evaluate``, ``guard audit --evaluate``): none by default.

    A release can leak nothing and still be useless (collapsed onto a few patients' look, blurred, its labels not
    shown): these limits let a gate fail it. ``min_*`` limits are lower bounds of higher-is-better metrics,
    ``max_*`` upper bounds of lower-is-better ones.
    """

    enabled: bool = False
    """Require fidelity to be measured: a report without it fails the release (closed)."""
    min_precision: float | None = None
    min_recall: float | None = None
    min_density: float | None = None
    min_coverage: float | None = None
    min_authenticity: float | None = None
    max_fd: float | None = None
    max_kd: float | None = None
    min_label_consistency: float | None = None
    """Lowest balanced accuracy, on every tested label, of a real-data classifier reading the release's labels."""
    conservative: bool = False
    """Compare the conservative end of each 95 % CI (lower for minimums, upper for maximums), not the estimate."""


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
    fidelity: FidelityPolicy = field(default_factory=FidelityPolicy)
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
    (VesselsPolicy, "quantile"): _UNIT,
    (MembershipPolicy, "max_auc"): _UNIT,
    (MembershipPolicy, "max_tpr_at_1pct_fpr"): _UNIT,
    (MembershipPolicy, "max_tpr_at_01pct_fpr"): _UNIT,
    (MembershipPolicy, "bootstrap"): ("between 10 and 100000", lambda v: 10 <= v <= 100000),
    (GenerationPolicy, "max_rejection_rate"): _UNIT,
    (GenerationPolicy, "min_samples_before_stop"): ("between 1 and 1000000", lambda v: 1 <= v <= 1_000_000),
    (GenerationPolicy, "max_epsilon"): _POS,
    **{(FidelityPolicy, f"min_{m}"): _UNIT for m in ("precision", "recall", "coverage", "authenticity",
                                                   "label_consistency")},
    (FidelityPolicy, "min_density"): (">= 0", lambda v: v >= 0),
    (FidelityPolicy, "max_fd"): _POS,
    (FidelityPolicy, "max_kd"): _POS,
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
    "VesselsPolicy": VesselsPolicy,
    "IdentityPolicy": IdentityPolicy,
    "MembershipPolicy": MembershipPolicy,
    "GenerationPolicy": GenerationPolicy,
    "FidelityPolicy": FidelityPolicy,
}


def _structure_problem(text: str) -> str | None:
    """The first anchor, alias or too-deep nesting in ``text``, found on parser events (no recursion, no expansion).

    Raises ``yaml.YAMLError`` for text that is not YAML.
    """
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        where = f"line {event.start_mark.line + 1}"
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            return f"{where}: YAML anchors and aliases are not allowed in policies (found {event.anchor!r})"
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_POLICY_DEPTH:
                return f"{where}: nested deeper than {MAX_POLICY_DEPTH} levels"
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _load_yaml(text: str, source: str) -> Any:
    """The YAML document in ``text`` after the bounds checks. Raises :class:`PolicyError` naming the problem."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_POLICY_BYTES:
        raise PolicyError(source, [f"file too large ({size} bytes; at most {MAX_POLICY_BYTES})"])
    try:
        problem = _structure_problem(text)
        if problem is None:
            return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader, structure checked above
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        if "nesting depth" in str(getattr(exc, "problem", "")):  # libyaml's own cap, beyond ours
            problem = f"nested deeper than {MAX_POLICY_DEPTH} levels{at}"
        else:
            problem = f"not valid YAML{at}"
    except ValueError as exc:  # e.g. an integer longer than Python's int-string digit limit
        problem = f"not valid YAML ({exc})"
    raise PolicyError(source, [problem])


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse and validate policy YAML. Raises :class:`PolicyError` listing every problem."""
    data = _load_yaml(text, source)
    problems: list[str] = []
    policy = _build(Policy, data, "", problems)
    if problems or policy is None:
        raise PolicyError(source, problems or ["empty policy"])
    object.__setattr__(policy, "sha256", sha256_bytes(text.encode("utf-8")))
    object.__setattr__(policy, "source", source)
    return policy


def _read_policy_text(path: Path) -> str:
    """The file's text. Reads at most one byte past the size cap, so /dev/zero or a huge file costs nothing."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError(str(path), ["file not found" + _shipped_hint(path)]) from None
    except OSError as exc:
        raise PolicyError(str(path), [f"cannot read ({exc.strerror or exc})"]) from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(str(path), [f"file too large (more than {MAX_POLICY_BYTES} bytes)"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(str(path), [f"not UTF-8 text (byte {exc.start})"]) from None


def _shipped_hint(path: Path) -> str:
    """A pointer to the shipped policy a missing path probably meant (``policies/public.yaml`` -> ``public``)."""
    if path.suffix in (".yaml", ".yml") and path.stem in shipped_policy_names():
        return f" (the shipped policy is loaded by its name: {path.stem})"
    return ""


def load_shipped_policy(name: str) -> Policy:
    """The shipped policy ``name`` (package data), whatever the working directory holds. Raises :class:`PolicyError`."""
    return parse_policy(shipped_policy_text(name), source=f"shipped:{name}")


def load_policy(path: Path | str) -> Policy:
    """Load and validate a policy file, or a shipped policy by name (``public``, ``internal``).

    A plain name (no folder, no suffix) means the shipped policy unless a file of that name exists in the
    working directory: a file the user made always wins. Shipped policies are package data, so the name works
    from an installed wheel too. Raises :class:`PolicyError` (exit 2) on any problem.
    """
    text = str(path)
    if is_policy_name(text) and not Path(text).is_file():
        if text not in shipped_policy_names():
            names = ", ".join(shipped_policy_names()) or "none found"
            raise PolicyError(text, [f"no such file, and no shipped policy of that name (shipped: {names})"])
        return load_shipped_policy(text)
    path = Path(path)
    return parse_policy(_read_policy_text(path), source=str(path))
