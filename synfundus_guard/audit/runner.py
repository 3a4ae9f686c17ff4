"""Audit a folder of synthetic images against a private training set: the library behind ``guard audit``.

Steps: load (or build) the training index, calibrate on the holdout set, build the checks the policy enables,
run them on the release in batches (fail closed), let the policy decide each image and the release, then
write the manifest into the release and the report (public ``report.json`` + ``private/``) atomically. A bad
input anywhere raises before anything is written, so there is never a half-written report.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.folder import ImageRecord, scan_folder
from ..data.images import list_images, read_image_bytes
from ..embed.base import Embedder
from ..embed.cache import ArrayCache
from ..embed.registry import DEFAULT_SPEC, embedder_from_spec
from ..errors import GuardError, IndexMismatchError, InputError
from ..formats import OutputFormat, ReportView, render_files, write_files
from ..fsutil import sha256_bytes
from ..index.calibrate import Calibration, calibrate
from ..index.store import (INDEX_VERSION, GuardIndex, build_index, dataset_fingerprint, hash_records,
                           identity_fingerprint, is_index_folder, load_index)
from ..policies.evaluate import evaluate_release, image_result
from ..policies.schema import Policy
from ..progress import NULL_PROGRESS, Progress
from ..release.report import check_report_folder, write_report
from ..results import ImageResult, ReleaseVerdict, Report, summarize
from ._align_torch import resolve_device
from .base import Check, Finding
from .journal import Journal, decode_findings, holds_journal
from .memorization import MemorizationCheck
from .pixel_match import SKETCH_VERSION, VESSEL_VERSION
from .identity.faces import FaceCheck
from .identity.metadata import MetadataCheck
from .identity._ocr import tesseract_path
from .identity.text import TextCheck, identifiers_of
from .vessels import VesselCheck, split_quantile
from .workers import ENGINES, auto_workers, map_batches


def default_cache_dir() -> Path:
    """``$GUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/synfundus-guard``, else ``~/.cache/synfundus-guard``.

    The cache holds features of training images: keep it private.
    """
    env = os.environ.get("GUARD_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "synfundus-guard"


@dataclass(frozen=True)
class Guard:
    """Everything the per-image checks need: the training index, its holdout calibration, and the identifying
    strings of both sets (private) that burned-in text must not spell."""

    index: GuardIndex
    calibration: Calibration
    identifiers: tuple[str, ...] = ()


def prepare_guard(
    *,
    train_dir: Path | None = None,
    holdout_dir: Path | None = None,
    k: int,
    train_records: Sequence[ImageRecord] | None = None,
    holdout_records: Sequence[ImageRecord] | None = None,
    embedder: str | Embedder = DEFAULT_SPEC,
    index_dir: Path | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 16,
    workers: int = 0,
    progress: Progress = NULL_PROGRESS,
) -> Guard:
    """Load or build the index of the training set and calibrate it on the holdout set.

    The sets are folders (``train_dir``, ``holdout_dir``) or record lists (e.g. the split a model's card
    names); the index is built and calibrated in ``workers`` processes (0: automatic, see
    :func:`~synfundus_guard.index.store.build_index` and :func:`~synfundus_guard.index.calibrate.calibrate`).
    With ``index_dir`` given and present, that index is used and must match the training set and embedder
    (:class:`IndexMismatchError` otherwise); absent, it is built there. Without it, indexes are cached
    under ``cache_dir/index/`` keyed by dataset and embedder fingerprints.
    """
    emb = embedder_from_spec(embedder) if isinstance(embedder, str) else embedder
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if train_records is None:
        if train_dir is None:
            raise InputError("a training set is required")
        train_records = scan_folder(train_dir)
    if holdout_records is None:
        if holdout_dir is None:
            raise InputError("a holdout set is required")
        holdout_records = scan_folder(holdout_dir)
    shas = hash_records(train_records, progress, "training set")
    data_fp, who_fp = dataset_fingerprint(shas), identity_fingerprint(train_records, shas)
    if index_dir is None:
        # keyed by names and patient ids too: the same bytes under other ids are another training set; and by the
        # stored templates' versions, so an upgrade that changes them builds a new index instead of refusing the old
        key = sha256_bytes(f"{emb.feature_fingerprint()}|{SKETCH_VERSION}|{VESSEL_VERSION}".encode())[:8]
        index_dir = cache_dir / "index" / f"{who_fp[:16]}-{key}-{INDEX_VERSION}"
    index_dir = Path(index_dir)
    cache = ArrayCache(cache_dir / "features.sqlite")
    try:
        if is_index_folder(index_dir):
            index = load_index(index_dir, emb)
            _check_same_training_set(index, data_fp, who_fp)
        else:
            index = build_index(records=train_records, shas=shas, out_dir=index_dir, embedder=emb, cache=cache,
                                batch_size=batch_size, workers=workers, progress=progress)
        cal = calibrate(index, holdout_records, k=k, batch_size=batch_size, workers=workers, progress=progress)
    finally:
        cache.close()
    return Guard(index=index, calibration=cal, identifiers=tuple(identifiers_of([*train_records, *holdout_records])))


def _check_same_training_set(index: GuardIndex, data_fp: str, who_fp: str) -> None:
    """Refuse an index of other images, or of the same images under other names or patient ids."""
    if index.dataset_fingerprint != data_fp:
        raise IndexMismatchError(f"index {index.path} was built from a different training set")
    built_for = index.meta.get("identity_fingerprint") or identity_fingerprint(
        index.records, [r["sha256"] for r in index.records])
    if built_for != who_fp:
        raise IndexMismatchError(f"index {index.path} was built from the same images under other file names or "
                                 "patient ids; use another --index folder")


def build_checks_for_model(
    *,
    model_dir: Path,
    policy: Policy,
    embedder: str = DEFAULT_SPEC,
    cache_dir: Path | None = None,
    progress: Progress = NULL_PROGRESS,
    device: str | None = None,
) -> list[Check]:
    """The checks for sampling from ``model_dir``: its card's training split is indexed, its holdout calibrates
    (``device``: as :func:`build_checks` takes it).

    Raises :class:`~synfundus_guard.errors.ModelError` for a model without a training card (its training data
    is unknown, so memorization cannot be checked) or whose training images are gone.
    """
    from ..errors import ModelError
    from ..generation.default import training_data_dir
    from ..generation.model import load_model

    model = load_model(model_dir)
    card = model.card
    if card is None:
        raise ModelError(f"{model_dir} has no training card: its training data is unknown, so generated images "
                         "cannot be checked against it (train it with guard train)")
    if not (policy.memorization.enabled or policy.identity.vessels.enabled):
        return build_checks(policy=policy, guard=None, progress=progress)  # no check needs the training data
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    data_dir = training_data_dir(model, cache_dir=cache_dir, progress=progress)
    by_name = {r.file_name: r for r in scan_folder(data_dir)}
    missing = [f for f in (*card.data.train_files, *card.data.holdout_files) if f not in by_name]
    if missing:
        raise ModelError(f"{len(missing)} image(s) of the model's training/holdout split are missing from {data_dir}")
    guard = prepare_guard(train_records=[by_name[f] for f in card.data.train_files],
                          holdout_records=[by_name[f] for f in card.data.holdout_files], k=policy.memorization.k,
                          embedder=embedder, cache_dir=cache_dir, progress=progress)
    return build_checks(policy=policy, guard=guard, progress=progress, device=device)


def build_checks(*, policy: Policy, guard: Guard | None, progress: Progress = NULL_PROGRESS,
                 device: str | None = None) -> list[Check]:
    """The per-image checks ``policy`` enables, with thresholds from the guard's calibration; ``device``: the torch
    device the memorization and vessels checks align on (resolved, :func:`~._align_torch.resolve_device`;
    ``None``: the CPU path).

    Raises :class:`InputError` when the policy enables the memorization check but no training data was given.
    """
    checks: list[Check] = []
    mp = policy.memorization
    if mp.enabled:
        if guard is None:
            raise InputError("the policy enables the memorization check: --train and --holdout are required")
        cal = guard.calibration
        checks.append(
            MemorizationCheck(
                index=guard.index,
                k=mp.k,
                embedding_threshold=cal.threshold(cal.embedding_sims, mp.embedding_quantile),
                pixel_threshold=cal.threshold(cal.pixel_nccs, mp.pixel_quantile),
                calibration_info={"embedding_quantile": mp.embedding_quantile, "pixel_quantile": mp.pixel_quantile,
                                  "n_holdout": int(len(cal.embedding_sims))},
                device=device,
            )
        )
    else:
        progress.log("warning: the policy disables the memorization check")
    vp = policy.identity.vessels
    if vp.enabled:
        if guard is None:
            raise InputError("the policy enables the vessels check: --train and --holdout are required")
        cal = guard.calibration
        margin = cal.margin_threshold(split_quantile(vp.quantile))  # two rules, each at half the tail
        q = vp.quantile if margin is None else split_quantile(vp.quantile)
        checks.append(VesselCheck(index=guard.index, threshold=cal.threshold(cal.vessel_scores, q),
                                  margin_threshold=margin,
                                  calibration_info={"quantile": vp.quantile, "rule_quantile": q,
                                                    "n_holdout": int(len(cal.vessel_scores))},
                                  first_pass=getattr(vp, "first_pass", True),  # a plain FilterPolicy: on
                                  device=device))
    summary = guard.calibration.summary() if checks and guard is not None else {}
    for check in checks:  # the calibrated checks carry the holdout distributions their thresholds come from
        check.calibration = summary
    # Filters that need no training data. Text: any burned-in text row flags (structural detector); where the
    # training and holdout sets are known, OCR reads each row for their identifiers (a hard block).
    identifiers = guard.identifiers if guard is not None else ()
    make_text = partial(TextCheck, blocklist=identifiers)
    if identifiers and policy.identity.text.enabled:
        progress.log(f"text: rows are read by OCR for {len(identifiers)} identifiers of the training and holdout "
                     "sets" + ("" if tesseract_path() else "; tesseract is not installed, so an image with a text "
                               "row fails closed (apt-get install -y tesseract-ocr)"))
    for name, make in (("text", make_text), ("faces", FaceCheck), ("metadata", MetadataCheck)):
        if getattr(policy.identity, name).enabled:
            checks.append(make())
        else:
            progress.log(f"warning: the policy disables the {name} check")
    return checks


@dataclass(frozen=True)
class AuditResult:
    """What :func:`audit_release` produced."""

    report: Report
    verdict: ReleaseVerdict
    report_path: Path


def _check_paths(release_dir: Path, out_dir: Path) -> None:
    rel, out = Path(release_dir).resolve(), Path(out_dir).resolve()
    if out == rel or rel in out.parents:
        raise InputError(f"--out {out_dir} is inside the release: private evidence must never enter a release")
    check_report_folder(out_dir, option="--out", accept=holds_journal)


def plan_checks(policy: Policy, index_dir: Path | None, embedder: str | Embedder,
                calibration: Calibration | None, identifiers: tuple[str, ...] = (),
                device: str | None = None) -> list[Check]:
    """Build the checks again from picklable parts (in a worker process: the index is loaded from its folder)."""
    guard = None
    if index_dir is not None and calibration is not None:
        emb = embedder_from_spec(embedder) if isinstance(embedder, str) else embedder
        guard = Guard(index=load_index(index_dir, emb), calibration=calibration, identifiers=identifiers)
    return build_checks(policy=policy, guard=guard, device=device)


def check_images(
    checks: Sequence[Check],
    release_dir: Path,
    policy: Policy,
    *,
    batch_size: int,
    progress: Progress,
    checked: dict[str, str] | None = None,
    workers: int = 1,
    factory: Callable[[], Sequence[Check]] | None = None,
    journal: Journal | None = None,
    engine: str = "local",
    address: str | None = None,
) -> tuple[list[ImageResult], dict[str, Any]]:
    """Run checks on every image of ``release_dir``; returns public results and private evidence.

    ``checked``, when given, receives the sha256 of the bytes each image was checked from, so the seal can
    prove it covers exactly what was checked. ``workers`` > 1 checks in that many processes, which build their
    checks with ``factory`` (:mod:`.workers`); results are the same, in the same order. With a ``journal``, each
    checked batch is committed to it, and images it already holds (same name, same bytes) are not checked again.
    """
    rels = list_images(release_dir, follow_links=False)
    done: dict[str, tuple[str, list[Finding]]] = {}
    old = journal.finished() if journal is not None else {}
    if old:
        with progress.task("Re-reading journaled images", total=len(rels)) as t:
            for rel in rels:
                name = rel.as_posix()
                if name in old and sha256_bytes(read_image_bytes(release_dir / rel)) == old[name][0]:
                    done[name] = (old[name][0], decode_findings(old[name][1]))
                t.advance(1)
    if done:
        progress.log(f"resuming: {len(done)} of {len(rels)} images were checked by an interrupted run of this "
                     "audit; they are not checked again")
    todo = [r for r in rels if r.as_posix() not in done]
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    with progress.task("Checking release", total=len(todo)) as t:
        for out in map_batches(factory or (lambda: checks), checks, release_dir, batches,
                               workers=workers if factory else 1, engine=engine if factory else "local",
                               address=address):
            if journal is not None:
                journal.add((cand.file_name, sha, findings) for cand, sha, findings in out)
            for cand, sha, findings in out:
                done[cand.file_name] = (sha, findings)
            t.advance(len(out))
    results: list[ImageResult] = []
    private: dict[str, Any] = {}
    for rel in rels:
        name = rel.as_posix()
        sha, findings = done[name]
        if checked is not None:
            checked[name] = sha
        results.append(image_result(name, findings, policy))
        private[name] = {f.check: f.private for f in findings if f.private}
    return results, private


def audit_release(
    *,
    release_dir: Path,
    out_dir: Path,
    policy: Policy,
    train_dir: Path | None = None,
    holdout_dir: Path | None = None,
    model_dir: Path | None = None,
    embedder: str = DEFAULT_SPEC,
    index_dir: Path | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 16,
    write_release_manifest: bool = True,
    workers: int = 0,
    engine: str = "local",
    address: str | None = None,
    formats: Sequence[str] = (),
    evaluate: Any = None,
    device: str = "cpu",
    progress: Progress = NULL_PROGRESS,
) -> AuditResult:
    """Audit ``release_dir`` under ``policy``; writes the report to ``out_dir``. See the module docstring.

    ``workers``: processes that check images (0: one per core, when the release is large enough to gain;
    :func:`.workers.auto_workers`); 1 checks in this process. ``formats``: report formats written beside
    ``report.json`` (:data:`~synfundus_guard.formats.OutputFormat` names) on top of :data:`AUDIT_FORMATS`.
    ``evaluate``: :class:`~synfundus_guard.fidelity.evaluate.EvaluateOptions` to also measure fidelity and
    utility against the holdout (``release_checks["fidelity"]``, judged by the policy's fidelity limits).
    ``device``: where the memorization and vessels checks align images (``cpu``, ``cuda``, ``cuda:N`` or ``auto``;
    :func:`~._align_torch.resolve_device`); the index, its calibration and the other checks use the CPU."""
    release_dir, out_dir = Path(release_dir), Path(out_dir)
    _check_paths(release_dir, out_dir)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"workers must be 0 (one per core) or a positive number (got {workers!r})")
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r} (use {' or '.join(ENGINES)})")
    if address is not None and engine != "ray":
        raise InputError("--address names a Ray cluster: use it with --engine ray")
    formats = _formats(formats)
    align_device = resolve_device(device)
    n_images = len(list_images(release_dir, follow_links=False))  # empty, missing or linked: refused up front
    if write_release_manifest:
        from ..release.manifest import refuse_hidden

        refuse_hidden(release_dir)  # it could not be sealed: say so now, not after the checks
    guard = None
    if train_dir is not None or holdout_dir is not None:
        if train_dir is None or holdout_dir is None:
            raise InputError("--train and --holdout must be given together")
        guard = prepare_guard(train_dir=train_dir, holdout_dir=holdout_dir, k=policy.memorization.k,
                              embedder=embedder, index_dir=index_dir, cache_dir=cache_dir,
                              batch_size=batch_size, workers=workers if engine == "local" else 0,
                              progress=progress)
    from .membership import release_level_checks  # membership inference + model DP facts

    release_checks = release_level_checks(
        policy=policy, release_dir=release_dir, train_dir=train_dir, holdout_dir=holdout_dir, model_dir=model_dir,
        embedder=guard.index.embedder if guard else embedder, cache_dir=cache_dir or default_cache_dir(),
        progress=progress)
    if evaluate is not None:
        if holdout_dir is None:
            raise InputError("--evaluate measures the release against real images: give --train and --holdout")
        from ..fidelity.evaluate import evaluate_release_fidelity

        release_checks["fidelity"] = evaluate_release_fidelity(release_dir=release_dir, real_dir=holdout_dir,
                                                               train_dir=train_dir, options=evaluate,
                                                               progress=progress)
    checks = build_checks(policy=policy, guard=guard, progress=progress, device=align_device)
    if align_device is not None:
        progress.log(f"aligning on {align_device}")
    n_workers = auto_workers(n_images, workers) if engine == "local" else workers
    if engine == "ray":
        progress.log(f"checking on Ray ({address or 'a local instance'}, "
                     f"{workers or 'all'} worker{'s' if workers != 1 else ''})")
    elif n_workers > 1:
        progress.log(f"checking in {n_workers} worker processes")
    factory = partial(plan_checks, policy, guard.index.path if guard else None,
                      guard.index.embedder if guard else embedder, guard.calibration if guard else None,
                      guard.identifiers if guard else (), align_device)
    made_out = not out_dir.exists()
    journal = Journal(out_dir, _journal_key(policy, checks, guard))
    try:
        return _finish_audit(release_dir, out_dir, policy, guard, checks, release_checks, journal,
                             write_release_manifest=write_release_manifest, batch_size=batch_size,
                             workers=n_workers, factory=factory, engine=engine, address=address,
                             train_dir=train_dir, formats=formats, progress=progress)
    except GuardError:  # bad input found midway: leave --out as it was (an interrupt keeps the journal)
        journal.remove()
        for folder in (out_dir / "private", out_dir) if made_out else ():
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _journal_key(policy: Policy, checks: Sequence[Check], guard: Guard | None) -> str:
    """What findings depend on: a journal written under another key is not reused."""
    parts = {"policy": policy.fingerprint(), "checks": [c.fingerprint() for c in checks],
             "index": guard.index.dataset_fingerprint if guard else None}
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())


def _finish_audit(release_dir: Path, out_dir: Path, policy: Policy, guard: Guard | None, checks: Sequence[Check],
                  release_checks: dict[str, Any], journal: Journal, *, write_release_manifest: bool,
                  batch_size: int, workers: int, factory: Callable[[], Sequence[Check]], engine: str,
                  address: str | None, train_dir: Path | None, formats: Sequence[str],
                  progress: Progress) -> AuditResult:
    checked: dict[str, str] = {}
    results, private = check_images(checks, release_dir, policy, batch_size=batch_size, progress=progress,
                                    checked=checked, workers=workers, factory=factory, journal=journal,
                                    engine=engine, address=address)
    report = Report(
        policy=policy.fingerprint(),
        embedder=guard.index.embedder.describe() if guard else {},
        images=results,
        verdict="pending",
        summary=summarize(results),
        checks=[c.fingerprint() for c in checks],
        calibration=guard.calibration.summary() if guard else {},
        release={"name": release_dir.resolve().name, "n_images": len(results)},
    )
    report.release_checks.update(release_checks)
    verdict = evaluate_release(report, policy)
    report.verdict = verdict.verdict
    report.violations = list(verdict.violations)
    # Seal last: the manifest is built (every image hashed, every path checked) before anything is written,
    # the report is written next, and the release is sealed only once the report is safely on disk. Any failure
    # before that leaves the release exactly as it was.
    manifest = _release_manifest(release_dir, results, policy, report, progress) if write_release_manifest else None
    if manifest is not None:
        _check_unchanged(manifest, checked)
    progress.log("rendering the report pages")
    view = ReportView(report, verdict, release_dir=release_dir, evidence={"images": private}, train_dir=train_dir)
    pages = render_files(view, list(formats), private=True)  # rendered before anything is written
    path = write_report(report, out_dir, private={"images": private})
    write_files(out_dir, pages)
    journal.remove()  # the report holds every result now
    if manifest is not None:
        from ..release.manifest import save_manifest

        save_manifest(release_dir, manifest)
    return AuditResult(report=report, verdict=verdict, report_path=path)


AUDIT_FORMATS = ("html",)
"""Formats every audit writes beside ``report.json``: the public and private HTML pages."""


def _formats(extra: Sequence[str]) -> tuple[str, ...]:
    """The formats an audit writes besides ``report.json`` (which it always writes); unknown names refused."""
    names = [getattr(f, "value", f) for f in extra]
    unknown = sorted(set(names) - {f.value for f in OutputFormat})
    if unknown:
        raise InputError(f"unknown report format {unknown[0]!r} (use {', '.join(f.value for f in OutputFormat)})")
    return tuple(dict.fromkeys([*AUDIT_FORMATS, *(n for n in names if n != "json")]))


def _check_unchanged(manifest: dict[str, Any], checked: dict[str, str]) -> None:
    """Refuse to seal when the release changed while it was being checked (a seal must cover what was checked)."""
    sealed = {f["file_name"]: f["sha256"] for f in manifest["files"]}
    if sealed != checked:
        changed = sorted(set(sealed) ^ set(checked) | {n for n in sealed.keys() & checked if sealed[n] != checked[n]})
        raise InputError(f"the release changed during the audit ({len(changed)} file(s), e.g. {changed[0]!r}); "
                         "nothing was written, run the audit again")


def _release_manifest(release_dir: Path, results: Sequence[ImageResult], policy: Policy, report: Report,
                      progress: Progress) -> dict[str, Any]:
    """The release's manifest with the audit's per-image verdicts and scores (built, not yet written)."""
    from ..release.manifest import build_manifest, refuse_hidden

    refuse_hidden(release_dir)
    entries = {r.file_name: {"verdict": r.verdict, "scores": r.scores} for r in results}
    fingerprints = {"policy": policy.fingerprint(), "embedder": report.embedder, "audit_verdict": report.verdict}
    return build_manifest(release_dir, entries=entries, fingerprints=fingerprints, progress=progress)
