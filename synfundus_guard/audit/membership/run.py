"""Membership inference for an audit: who counts as member and non-member, which attacks run, the report entry.

* Members are the training images; with a model trained by this toolkit, exactly the files its training card
  lists (checked by content fingerprint against ``train_dir``), and held-out files of the card are added to
  the non-members. Non-members are the holdout images. A holdout that shares a patient (or an identical image)
  with the training folder is refused with the overlapping count: its "non-members" would be members.
* White-box attacks run when a model is given, black-box attacks when a release is given.
* Unequal group sizes are kept as they are, never subsampled to the smaller group: every metric is normalised
  within each class (see :mod:`.metrics`) and the bootstrap resamples each class separately. Only for
  cost, a group larger than ``max_per_class`` images is subsampled by whole patients (seeded), with a note.
* The result is the JSON value of ``report.release_checks["membership"]``: a list of two sections, image level
  and patient level (a patient is a member when any of their images was trained on; their score is the mean
  over their images). It holds metrics and counts only, never an image or patient identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...data.folder import ImageRecord, scan_folder
from ...data.images import list_images
from ...embed.base import Embedder
from ...embed.cache import ArrayCache
from ...errors import CheckError, InputError, ModelError
from ...fsutil import sha256_file
from ...policies.schema import Policy
from ...progress import NULL_PROGRESS, Progress
from .blackbox import MIN_RELEASE, BlackBoxOptions, score_release
from .evaluation import membership_sections
from .whitebox import DiffusionTarget, WhiteBoxOptions, prepare_images, score_images

MIN_PER_CLASS = 5
"""Fewer members or non-members cannot support any estimate; membership inference refuses them."""
DEFAULT_MAX_PER_CLASS = 2000
FAMILY_WHITE, FAMILY_BLACK = "white-box", "black-box"


@dataclass(frozen=True)
class MembershipSets:
    """The images attacked: members first, then non-members."""

    members: tuple[ImageRecord, ...]
    nonmembers: tuple[ImageRecord, ...]
    notes: tuple[str, ...] = ()

    @property
    def records(self) -> list[ImageRecord]:
        """Members then non-members, the order of every score array."""
        return [*self.members, *self.nonmembers]


def _unknown(patient_id: str) -> bool:
    return patient_id.startswith("?")  # no labels.csv: each image is its own patient


def check_disjoint(train: Sequence[ImageRecord], holdout: Sequence[ImageRecord]) -> None:
    """Refuse a holdout that shares patients or byte-identical images with the training folder."""
    overlap = {r.patient_id for r in holdout if not _unknown(r.patient_id)} & {r.patient_id for r in train}
    if overlap:
        raise InputError(f"holdout overlaps the training set: {len(overlap)} patient(s) appear in both; "
                         "membership inference needs patient-disjoint splits")
    shared = {sha256_file(r.path) for r in holdout} & {sha256_file(r.path) for r in train}
    if shared:
        raise InputError(f"holdout overlaps the training set: {len(shared)} identical image(s) appear in both")


def _from_card(train: list[ImageRecord], card: Any) -> tuple[list[ImageRecord], list[ImageRecord], list[str]]:
    """(members, extra non-members, notes) of ``train`` according to a training card."""
    from ...generation.card import data_fingerprint

    trained, held = set(card.data.train_files), set(card.data.holdout_files)
    members = [r for r in train if r.file_name in trained]
    if len(members) < len(trained):
        raise InputError(f"the training folder holds {len(members)} of the {len(trained)} images the model was "
                         "trained on; give the folder the model was trained from")
    if data_fingerprint([(r.file_name, r.path) for r in members]) != card.data.fingerprint:
        raise InputError("the training folder's images differ in content from those the model was trained on")
    extra = [r for r in train if r.file_name in held]
    notes = []
    unknown = len(train) - len(members) - len(extra)
    if unknown:
        notes.append(f"{unknown} image(s) of the training folder are not in the model's training card and were "
                     "left out")
    return members, extra, notes


def membership_sets(*, train_dir: Path, holdout_dir: Path, card: Any = None) -> MembershipSets:
    """Members and non-members for the given folders (and training card). Raises :class:`InputError` for
    overlapping splits, a training folder that does not match the card, or groups below :data:`MIN_PER_CLASS`."""
    train, holdout = scan_folder(train_dir), scan_folder(holdout_dir)
    check_disjoint(train, holdout)
    members, nonmembers, notes = train, holdout, []
    if card is not None:
        members, extra, notes = _from_card(train, card)
        nonmembers = holdout + extra
    if len(members) < MIN_PER_CLASS or len(nonmembers) < MIN_PER_CLASS:
        raise InputError(f"membership inference needs at least {MIN_PER_CLASS} member and {MIN_PER_CLASS} "
                         f"non-member images; got {len(members)} and {len(nonmembers)}")
    return MembershipSets(tuple(members), tuple(nonmembers), tuple(notes))


def _conditionable(sets: MembershipSets, conditioning: Any) -> MembershipSets:
    """Leave out non-members whose labels a conditional model was never trained with (with a note): they cannot
    be queried with their own labels, and no member has them. A member without usable labels is an error."""
    def ok(rec: ImageRecord) -> bool:
        try:
            conditioning.class_index({c: rec.labels[c] for c in conditioning.columns})
        except (KeyError, ValueError):
            return False
        return True

    bad = sum(not ok(r) for r in sets.members)
    if bad:
        raise InputError(f"{bad} training image(s) lack the label values ({', '.join(conditioning.columns)}) the "
                         "model was trained with; were the labels changed after training?")
    kept = tuple(r for r in sets.nonmembers if ok(r))
    if len(kept) == len(sets.nonmembers):
        return sets
    if len(kept) < MIN_PER_CLASS:
        raise InputError(f"only {len(kept)} non-member images have label values the conditional model knows; at "
                         f"least {MIN_PER_CLASS} are needed")
    note = (f"{len(sets.nonmembers) - len(kept)} non-member image(s) have label values the model was never "
            "conditioned on and were left out")
    return MembershipSets(sets.members, kept, (*sets.notes, note))


def subsample_patients(records: Sequence[ImageRecord], cap: int | None, seed: int) -> list[ImageRecord]:
    """At most about ``cap`` images, drawn as whole patients in a seeded random order (order of records kept)."""
    if cap is None or len(records) <= cap:
        return list(records)
    patients = sorted({r.patient_id for r in records})
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.patient_id] = counts.get(r.patient_id, 0) + 1
    keep, total = set(), 0
    for i in rng.permutation(len(patients)):
        if total >= cap:
            break
        keep.add(patients[i])
        total += counts[patients[i]]
    return [r for r in records if r.patient_id in keep]


@dataclass
class MembershipScores:
    """Per-image scores of every attack (private: aligned with ``sets.records``) and attack timings."""

    sets: MembershipSets
    scores: dict[str, np.ndarray]
    families: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each attack (black-box: scoring only)."""
    embed_seconds: float = 0.0
    """Wall time of embedding release, members and non-members for the black-box attacks."""
    notes: list[str] = field(default_factory=list)


def score_membership(*, train_dir: Path, holdout_dir: Path, release_dir: Path | None = None,
                     model_dir: Path | None = None, embedder: Embedder | str = "pixel",
                     cache: ArrayCache | None = None, whitebox: WhiteBoxOptions = WhiteBoxOptions(),
                     blackbox: BlackBoxOptions = BlackBoxOptions(), max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
                     seed: int = 0, progress: Progress = NULL_PROGRESS) -> MembershipScores:
    """Run the attacks and return per-image scores. The scores identify members: keep them private.

    Raises :class:`InputError`/:class:`ModelError` for unusable inputs and :class:`CheckError` when an attack
    fails while running (callers fail closed).
    """
    if release_dir is None and model_dir is None:
        raise InputError("membership inference needs a model (white-box) or a release (black-box)")
    model = None
    if model_dir is not None:
        from ...generation.model import load_model

        model = load_model(Path(model_dir))
    full = membership_sets(train_dir=train_dir, holdout_dir=holdout_dir, card=model.card if model else None)
    if model is not None and model.conditioning is not None:
        full = _conditionable(full, model.conditioning)
    members = subsample_patients(full.members, max_per_class, seed)
    nonmembers = subsample_patients(full.nonmembers, max_per_class, seed + 1)
    notes = list(full.notes)
    for what, kept, all_ in (("members", members, full.members), ("non-members", nonmembers, full.nonmembers)):
        if len(kept) < len(all_):
            notes.append(f"{what}: {len(kept)} of {len(all_)} images attacked (whole patients, seeded sample)")
    sets = MembershipSets(tuple(members), tuple(nonmembers), full.notes)
    result = MembershipScores(sets=sets, scores={}, families={}, notes=notes)
    try:
        if model is not None:
            _white_box(result, model, whitebox, progress)
        if release_dir is not None:
            _black_box(result, Path(release_dir), full.nonmembers, embedder, cache, blackbox, progress)
    except RuntimeError as exc:  # torch / FAISS failures (out of device memory, ...): the caller fails closed
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckError(f"membership attack failed: {first}") from None
    return result


def _white_box(result: MembershipScores, model: Any, options: WhiteBoxOptions, progress: Progress) -> None:
    target = DiffusionTarget(model.unet, model.scheduler, device=options.device)
    images = prepare_images(result.sets.records, resolution=target.resolution, in_channels=target.in_channels,
                            conditioning=model.conditioning, progress=progress)
    run = score_images(target, images, options=options, progress=progress)
    _collect(result, run.scores, run.seconds, FAMILY_WHITE)


def _black_box(result: MembershipScores, release_dir: Path, reference: Sequence[ImageRecord],
               embedder: Embedder | str, cache: ArrayCache | None, options: BlackBoxOptions,
               progress: Progress) -> None:
    n_release = len(list_images(release_dir, follow_links=False))
    if n_release < MIN_RELEASE:
        why = f"black-box attacks skipped: the release has {n_release} images, at least {MIN_RELEASE} are needed"
        result.notes.append(why)
        progress.log(f"warning: membership inference: {why}")
        return
    if isinstance(embedder, str):
        from ...embed.registry import embedder_from_spec

        embedder = embedder_from_spec(embedder)
    run = score_release(release_dir=release_dir, queries=result.sets.records, reference=reference,
                        embedder=embedder, cache=cache, options=options, progress=progress)
    _collect(result, run.scores, run.seconds, FAMILY_BLACK)
    result.embed_seconds = run.embed_seconds


def _collect(result: MembershipScores, scores: dict[str, np.ndarray], seconds: dict[str, float], family: str) -> None:
    for name, values in scores.items():
        result.scores[name] = values
        result.families[name] = family
        result.seconds[name] = seconds.get(name, 0.0)


def membership_report(scores: MembershipScores, *, n_boot: int, seed: int = 0) -> list[dict]:
    """The public report entry for ``scores``: image- and patient-level sections (see :mod:`.evaluation`)."""
    records = scores.sets.records
    is_member = np.arange(len(records)) < len(scores.sets.members)
    return membership_sections(scores.scores, is_member, [r.patient_id for r in records], families=scores.families,
                               n_boot=n_boot, seed=seed, notes=scores.notes)


def run_membership(*, policy: Policy, train_dir: Path, holdout_dir: Path, release_dir: Path | None = None,
                   model_dir: Path | None = None, embedder: Embedder | str = "pixel",
                   progress: Progress = NULL_PROGRESS, cache: ArrayCache | None = None,
                   whitebox: WhiteBoxOptions = WhiteBoxOptions(), blackbox: BlackBoxOptions = BlackBoxOptions(),
                   max_per_class: int | None = DEFAULT_MAX_PER_CLASS, seed: int = 0) -> list[dict]:
    """Run membership inference and return the value for ``report.release_checks["membership"]``.

    A list of two sections (image level, patient level), each ``{"attacks": {name: metrics}, "level": ...}``
    with bootstrap CIs from ``policy.membership.bootstrap`` resamples; sections with no attack and a note why
    when none could run (only a release below :data:`MIN_RELEASE` images, with a warning). Raises :class:`InputError` or
    :class:`ModelError` for unusable inputs (exit 2) and :class:`CheckError` when an attack fails.
    """
    scores = score_membership(train_dir=train_dir, holdout_dir=holdout_dir, release_dir=release_dir,
                              model_dir=model_dir, embedder=embedder, cache=cache, whitebox=whitebox,
                              blackbox=blackbox, max_per_class=max_per_class, seed=seed, progress=progress)
    if not scores.scores:  # nothing could be attacked: the sections say why, and the policy fails them closed
        return [{"level": level, "attacks": {}, "notes": list(scores.notes)} for level in ("image", "patient")]
    with progress.task("Membership: bootstrap", total=None):
        return membership_report(scores, n_boot=policy.membership.bootstrap, seed=seed)


def model_privacy(model_dir: Path) -> dict[str, Any]:
    """``{"dp", "epsilon", "delta"}`` of a model folder for ``report.release_checks["model"]`` (from its training
    card; a model without a card counts as not DP). Raises :class:`ModelError` for a folder that is no model."""
    from ...generation.card import read_card

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model folder not found: {model_dir}")
    card = read_card(model_dir)
    dp = card.dp if card is not None else None
    return {"dp": dp is not None, "epsilon": dp.epsilon if dp else None, "delta": dp.delta if dp else None}


def release_level_checks(*, policy: Policy, release_dir: Path, train_dir: Path | None, holdout_dir: Path | None,
                         model_dir: Path | None, embedder: Embedder | str, cache_dir: Path | None = None,
                         progress: Progress = NULL_PROGRESS) -> dict[str, Any]:
    """The ``report.release_checks`` entries an audit adds: ``"model"`` (DP facts) when a model is given, and
    ``"membership"`` when the policy enables it and training and holdout folders are given.

    An attack that fails while running becomes ``{"error": ...}`` (the policy then fails the release); unusable
    inputs raise :class:`InputError`/:class:`ModelError` (exit 2).
    """
    out: dict[str, Any] = {}
    if model_dir is not None:
        out["model"] = model_privacy(model_dir)
    if not policy.membership.enabled or train_dir is None or holdout_dir is None:
        return out
    cache = ArrayCache(Path(cache_dir) / "features.sqlite" if cache_dir is not None else None)
    try:
        sections = run_membership(policy=policy, train_dir=train_dir, holdout_dir=holdout_dir,
                                  release_dir=release_dir, model_dir=model_dir, embedder=embedder, cache=cache,
                                  progress=progress)
        if sections:
            out["membership"] = sections
    except CheckError as exc:
        out["membership"] = {"error": str(exc)}
    finally:
        cache.close()
    return out
