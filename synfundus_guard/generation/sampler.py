"""The guarded sampler: generate until ``n`` images pass every check; quarantine the rest with reasons.

Batch by batch, samples go through the per-image checks (:func:`~synfundus_guard.audit.base.run_checks`, fail
closed) and the policy decides each image (:func:`~synfundus_guard.policies.evaluate.image_result`). Passing
images enter the release through :class:`~synfundus_guard.release.writer.ReleaseWriter` with a manifest entry
(index, seed, labels, scores, model fingerprint); failing ones go to the private quarantine with their reasons
and private evidence. Sampling stops early, without finalizing the release, when the rejection rate exceeds
the policy's limit: a memorizing model must not be able to grind out a release by drawing long enough.

Image ``i`` depends only on ``(seed, i)``; the writer's journal records the next index after each batch, so a
run killed at any moment and started again regenerates exactly the samples it had not committed.

With a :class:`~.select.ConfidentSelector` (``--select-confident``), passing samples whose conditioning labels a
real-data classifier does not confirm are neither released nor quarantined (they are no leak) and never count
towards the rejection rate; the journal's ``next_index`` covers them, and :func:`.select.exhausted` stops a run
whose classifier confirms too few (status ``DRAW_LIMIT``).
"""

from __future__ import annotations

import enum
import json
import shutil
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

from ..audit.base import Candidate, Check, run_checks
from ..data.images import encode_png
from ..errors import InputError
from ..policies.evaluate import IMAGE_CHECKS, action_for, image_result
from ..policies.schema import GenerationPolicy, Policy
from ..progress import NULL_PROGRESS, Progress
from ..results import ImageResult
from ..release.writer import ReleaseWriter, WriterState
from .model import DEFAULT_MODEL_DIR, LoadedModel, load_model
from .sample import DEFAULT_STEPS, Sample, resolve_labels, sample_batch
from .select import ConfidentSelector, exhausted, limit_message, unselected_count

ChecksOrFactory = Union[Sequence[Check], Callable[[], Sequence[Check]]]
"""The checks, or a function building them (called only once the release folder is known to be usable)."""
DRAW_LIMIT_FACTOR = 100
"""Hard stop after ``DRAW_LIMIT_FACTOR * n + min_samples_before_stop`` draws, whatever the policy's rate."""


class GenerateStatus(str, enum.Enum):
    """How a guarded generation run ended."""

    COMPLETE = "complete"
    """``n`` images accepted; the release is finalized (manifest written)."""
    REJECTION_RATE_EXCEEDED = "rejection_rate_exceeded"
    """Too many samples failed the checks; the release is left unfinished (no manifest)."""
    DRAW_LIMIT = "draw_limit"
    """The hard draw limit was reached before ``n`` images passed (or, with ``--select-confident``, too many
    samples went unconfirmed); the release is left unfinished."""
    REFUSED = "refused"
    """The policy refuses the model itself (DP required, ε too large); nothing was sampled."""

    @property
    def passed(self) -> bool:
        """True only for a finished release."""
        return self is GenerateStatus.COMPLETE


@dataclass(frozen=True)
class GenerateResult:
    """Outcome of :func:`generate_release`."""

    status: GenerateStatus
    message: str
    """One line for the user."""
    release_dir: Path
    quarantine_dir: Path
    accepted: int
    rejected: int
    drawn: int
    """Samples judged (accepted + rejected); surplus passing samples of the last batch are not counted."""
    manifest: Path | None
    """The release manifest when the status is ``COMPLETE``."""
    model: dict[str, Any]
    """:meth:`LoadedModel.public_info` (fingerprint, DP, ε)."""
    reasons: dict[str, int] = field(default_factory=dict)
    """Rejections per check name in this call."""
    seconds: float = 0.0
    resumed_at: int = 0
    """Sample index this call started from (0 for a fresh run)."""
    report_dir: Path | None = None
    """Where the run's report pages were written (None when none was asked for, or the policy refused)."""
    unselected: int = 0
    """Samples (whole run) that passed every check but whose labels the selector did not confirm: neither
    released nor quarantined, and not in :attr:`drawn` nor the rejection rate."""

    @property
    def rejection_rate(self) -> float:
        """Rejected over judged samples (0.0 before any)."""
        return self.rejected / self.drawn if self.drawn else 0.0


def dp_problems(model_info: Mapping[str, Any], gp: GenerationPolicy) -> list[str]:
    """Why ``gp`` refuses the model up front (DP required, or ε above ``max_epsilon``); [] when it does not."""
    if not gp.require_dp and gp.max_epsilon is None:
        return []
    if not model_info.get("dp"):
        return ["the policy requires a model trained with differential privacy; this one was not"
                if gp.require_dp else
                f"the policy sets max_epsilon {gp.max_epsilon:g}; this model was not trained with differential privacy"]
    eps = model_info.get("epsilon")
    if gp.max_epsilon is not None and (eps is None or not eps <= gp.max_epsilon):
        return [f"model epsilon {eps} exceeds the policy's max_epsilon {gp.max_epsilon:g}"]
    return []


def default_quarantine_dir(release_dir: Path) -> Path:
    """``RELEASE-quarantine`` beside the release (never inside it)."""
    release_dir = Path(release_dir).resolve()  # "." has no name of its own
    return release_dir.parent / f"{release_dir.name}-quarantine"


def file_name_for(index: int) -> str:
    """Release (and quarantine) file name of sample ``index``."""
    return f"synth_{index:06d}.png"


def _jsonable(value: Any) -> Any:
    """Private evidence as plain JSON (numpy scalars and arrays from checks included)."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


@dataclass(frozen=True)
class _Judged:
    """One checked sample, its PNG, and the policy's verdict."""

    sample: Sample
    png: bytes
    verdict: ImageResult
    private: dict[str, Any]


def _judge(samples: Sequence[Sample], checks: Sequence[Check], policy: Policy) -> list[_Judged]:
    """Run the checks on one batch and let the policy decide each image (pure: safe in a worker thread)."""
    cands = [Candidate(file_name_for(s.index), s.image) for s in samples]
    return [_Judged(s, encode_png(s.image), image_result(c.file_name, findings, policy),
                    {f.check: f.private for f in findings if f.private})
            for s, c, findings in zip(samples, cands, run_checks(checks, cands))]


def _unconfirmed(judged: Sequence[_Judged], select: ConfidentSelector | None) -> set[int]:
    """Indices of the passing samples whose labels ``select`` does not confirm (none without a selector)."""
    passing = [j.sample for j in judged if j.verdict.verdict == "pass"]
    if select is None or not passing:
        return set()
    return {s.index for s, keep in zip(passing, select.keep(passing)) if not keep}


def _route(judged: Sequence[_Judged], room: int, fingerprint: str,
           select: ConfidentSelector | None = None) -> tuple[list, list, Counter]:
    """(accepted, rejected, rejections per check) for the writer; at most ``room`` passing images are kept.

    Passing samples beyond ``room`` (the end of the last batch), or not confirmed by ``select``, are neither
    released nor quarantined.
    """
    accepted, rejected, why = [], [], Counter()
    unconfirmed = _unconfirmed(judged, select)
    for j in judged:
        s, v = j.sample, j.verdict
        base = {"index": s.index, "seed": s.seed, "labels": s.labels, "scores": v.scores}
        if v.verdict == "pass":
            if len(accepted) < room and s.index not in unconfirmed:
                accepted.append((v.file_name, j.png, {**base, "model": fingerprint, "warnings": list(v.warnings)}))
            continue
        rejected.append((v.file_name, j.png, {**base, "reasons": list(v.reasons), "evidence": _jsonable(j.private)}))
        why.update(name for name, status in v.checks.items() if status != "pass")
    return accepted, rejected, why


def sampling_leaves_cpu_free(model: LoadedModel) -> bool:
    """Whether checks on a worker thread can run beside sampling: the model samples on an accelerator, or the
    machine has more cores than torch's intra-op threads."""
    import os

    import torch

    on_cpu = model.device.type == "cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return not on_cpu or cores > torch.get_num_threads()


class _Pipeline:
    """Samples batch k+1 on the calling thread while a worker thread checks batch k, where that can help.

    Checks are pure functions of the images, so overlapping them with sampling changes nothing in what is
    committed; it hides the checks' wall time behind sampling when sampling leaves the CPU room (a GPU, or
    more cores than torch's threads). Where torch's threads already take every core, the two only contend:
    on 2 cores (``bench/bench_generation.py``) the identity filters cost 1.52-1.55x overlapped against
    1.37-1.44x in turn, so there batches are checked in turn. A batch is sampled ahead only while overlapping
    and while the batches in flight cannot already complete the release, so a short run samples nothing it
    does not need.
    """

    def __init__(self, *, model: LoadedModel, seed: int, matching: Any, steps: int, batch_size: int,
                 checks: Sequence[Check], policy: Policy, start: int):
        self.model, self.seed, self.matching, self.steps, self.batch_size = model, seed, matching, steps, batch_size
        self.checks, self.policy, self.next_index = checks, policy, start
        self.overlap = sampling_leaves_cpu_free(model)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-checks") if self.overlap else None
        self.in_flight: deque[tuple[int, Future]] = deque()

    def _submit(self) -> None:
        indices = list(range(self.next_index, self.next_index + self.batch_size))
        samples = sample_batch(self.model, indices, seed=self.seed, matching=self.matching, steps=self.steps)
        if self.pool is not None:
            future = self.pool.submit(_judge, samples, self.checks, self.policy)
        else:
            future = Future()
            future.set_result(_judge(samples, self.checks, self.policy))
        self.in_flight.append((indices[-1] + 1, future))
        self.next_index = indices[-1] + 1

    def next_batch(self, missing: int) -> tuple[list[_Judged], int]:
        """The next checked batch and the sample index after it; ``missing`` = images still to accept."""
        if not self.in_flight:
            self._submit()
        if self.overlap and len(self.in_flight) * self.batch_size < missing:
            self._submit()  # sampled now, checked while the next call samples
        end, future = self.in_flight.popleft()
        return future.result(), end

    def close(self) -> None:
        """Drop batches sampled ahead (never committed) without waiting for their checks."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _materialize(checks: ChecksOrFactory, policy: Policy, progress: Progress) -> list[Check]:
    """Build the checks and refuse to sample when one the policy enables is missing (fail closed, as audits do)."""
    built = list(checks() if callable(checks) else checks)
    names = {c.name for c in built}
    missing = [name for name in IMAGE_CHECKS if action_for(policy, name) is not None and name not in names]
    if missing:
        raise InputError(f"the policy {policy.name!r} enables the {', '.join(missing)} check(s) but they were not "
                         "set up; refusing to release unscreened samples (disable them in the policy to opt out)")
    if not built:
        progress.log("warning: no per-image checks are configured; samples are not screened for leaks")
    return built


def _stop_reason(state: WriterState, n: int, gp: GenerationPolicy, select: bool = False) -> GenerateStatus | None:
    """Why sampling must stop now (None: go on); ``select``: a selector drops unconfirmed samples."""
    if state.finalized or state.accepted >= n:
        return GenerateStatus.COMPLETE
    drawn = state.accepted + state.quarantined
    if drawn >= gp.min_samples_before_stop and state.quarantined / drawn > gp.max_rejection_rate:
        return GenerateStatus.REJECTION_RATE_EXCEEDED
    if state.next_index >= DRAW_LIMIT_FACTOR * n + gp.min_samples_before_stop or (
            select and exhausted(unselected=state.next_index - drawn, n=n, warmup=gp.min_samples_before_stop)):
        return GenerateStatus.DRAW_LIMIT
    return None


def _message(status: GenerateStatus, state: WriterState, n: int, gp: GenerationPolicy,
             select: ConfidentSelector | None = None, unselected: int = 0) -> str:
    drawn = state.accepted + state.quarantined
    if (status is GenerateStatus.DRAW_LIMIT and select is not None
            and exhausted(unselected=unselected, n=n, warmup=gp.min_samples_before_stop)):
        return limit_message(select, accepted=state.accepted, unselected=unselected, n=n)
    rate = state.quarantined / drawn if drawn else 0.0
    if status is GenerateStatus.COMPLETE:
        return f"released {state.accepted} images ({state.quarantined} quarantined, rejection rate {rate:.1%})"
    if status is GenerateStatus.REJECTION_RATE_EXCEEDED:
        return (f"rejection rate exceeded: {state.quarantined} of {drawn} samples failed the checks "
                f"({rate:.1%} > {gp.max_rejection_rate:.1%}); the release was not finalized")
    return f"draw limit reached after {state.next_index} samples with {state.accepted} of {n} accepted"


def _check_report_dir(report_dir: Path, out_dir: Path, quarantine_dir: Path) -> None:
    """Refuse a report folder inside the release or the quarantine, or one holding files guard did not write."""
    from ..release.report import check_report_folder

    where = report_dir.resolve()
    for folder in (out_dir.resolve(), quarantine_dir.resolve()):
        if where == folder or folder in where.parents or where in folder.parents:
            raise InputError(f"--report {report_dir} must lie outside the release and the quarantine")
    check_report_folder(report_dir, option="--report")


def _write_report(report_dir: Path, writer: ReleaseWriter, model: LoadedModel, policy: Policy,
                  checks: Sequence[Check], *, passed: bool, message: str) -> None:
    from .report import generation_report, write_generation_report

    rows = writer.quarantine_rows()
    calibration = next((c.calibration for c in checks if c.calibration), {})  # holdout histograms, where any
    report, verdict = generation_report(accepted=writer.accepted_entries(), rejected=rows, policy=policy,
                                        check_fingerprints=[c.fingerprint() for c in checks],
                                        release_name=writer.release_dir.name, passed=passed, message=message,
                                        calibration=calibration)
    evidence = {str(r["file_name"]): r.get("evidence", {}) for r in rows}
    write_generation_report(report_dir, report, verdict, release_dir=writer.release_dir,
                            quarantine_dir=writer.quarantine_dir, evidence=evidence, train_dir=_train_dir(model))


def _train_dir(model: LoadedModel) -> Path | None:
    """The model's training images, for the private page (None when they cannot be had)."""
    from ..errors import GuardError
    from ..audit.runner import default_cache_dir
    from .default import training_data_dir

    if model.card is None:
        return None
    try:
        return training_data_dir(model, cache_dir=default_cache_dir())
    except (GuardError, OSError):
        return None


def _unselected(writer: ReleaseWriter, state: WriterState, status: GenerateStatus) -> int:
    """Unconfirmed samples of the whole run, from the committed indices (:func:`.select.unselected_count`)."""
    accepted = [int(e["index"]) for e in writer.accepted_entries().values()]
    quarantined = [int(r["index"]) for r in writer.quarantine_rows() if "index" in r]
    return unselected_count(accepted=accepted, quarantined=quarantined, next_index=state.next_index,
                            complete=status is GenerateStatus.COMPLETE)


def default_report_dir(release_dir: Path) -> Path:
    """``RELEASE-report`` beside the release."""
    release_dir = Path(release_dir)
    return release_dir.parent / f"{release_dir.name}-report"


def generate_release(*, model_dir: Path | None, n: int, out_dir: Path, quarantine_dir: Path | None = None,
                     checks: ChecksOrFactory, policy: Policy, seed: int = 0, labels: Mapping[str, str] | None = None,
                     batch_size: int = 16, steps: int = DEFAULT_STEPS, model: LoadedModel | None = None,
                     report_dir: Path | None = None, select: ConfidentSelector | None = None,
                     progress: Progress = NULL_PROGRESS) -> GenerateResult:
    """Sample from the model until ``n`` images pass ``checks`` under ``policy``; see the module docstring.

    ``model_dir`` None means the built-in default model; an already loaded ``model`` may be passed instead.
    ``checks`` may be a function that builds them (index, calibration): it is called only after the output
    folder was found usable and the release is not already finished, so bad input fails fast.
    ``report_dir``: where the run's report pages go (:mod:`.report`; None writes none). ``select``: release only
    samples whose labels it confirms (:mod:`.select`); it is part of the run's identity and of the manifest.
    Re-running with the same arguments resumes an interrupted run, or returns the finished release. Raises
    :class:`InputError` for ``n``/``batch_size``/``steps`` below 1 or an output folder holding a different
    release, and :class:`ModelError` for a missing or unusable model or labels it cannot generate.
    """
    if n < 1 or batch_size < 1 or steps < 1:
        raise InputError(f"n, batch size and steps must be >= 1 (got n={n}, batch size={batch_size}, steps={steps})")
    model = model or load_model(model_dir if model_dir is not None else DEFAULT_MODEL_DIR)
    labels = {str(k): str(v) for k, v in (labels or {}).items()}
    matching = resolve_labels(model, labels)
    out_dir = Path(out_dir)
    quarantine_dir = Path(quarantine_dir) if quarantine_dir is not None else default_quarantine_dir(out_dir)
    info, gp = model.public_info(), policy.generation
    if report_dir is not None:
        _check_report_dir(Path(report_dir), out_dir, quarantine_dir)
    common = dict(release_dir=out_dir, quarantine_dir=quarantine_dir, model=info)
    refusal = dp_problems(info, gp)
    if refusal:
        return GenerateResult(status=GenerateStatus.REFUSED, message="; ".join(refusal), accepted=0, rejected=0,
                              drawn=0, manifest=None, **common)
    generation = {"seed": seed, "n": n, "labels": labels, "batch_size": batch_size, "steps": steps,
                  "sampler": "DDIM eta=0, trailing timesteps"}
    # The checks are not part of the run identity: they follow from the policy and the model's training data.
    run_config = {"model": model.fingerprint, "policy": policy.fingerprint(), "generation": generation}
    if select is not None:  # absent otherwise, so releases made without selection keep their config hash
        run_config["selection"] = select.fingerprint()
    t0 = time.perf_counter()
    why: Counter = Counter()
    manifest = None
    fresh = not out_dir.exists()
    with ReleaseWriter(out_dir, quarantine_dir, run_config=run_config, progress=progress) as writer:
        state = writer.state
        start = state.next_index
        try:
            active = _materialize(checks, policy, progress) if not state.finalized else []
        except BaseException:
            if fresh and state.batches == 0:  # the folder is ours and holds nothing yet: leave no trace
                writer.close()
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        pipe = _Pipeline(model=model, seed=seed, matching=matching, steps=steps, batch_size=batch_size,
                         checks=active, policy=policy, start=start)
        try:
            with progress.task("Generating (accepted images)", total=n) as task:
                task.advance(state.accepted)
                while (status := _stop_reason(state, n, gp, select is not None)) is None:
                    judged, end = pipe.next_batch(n - state.accepted)
                    accepted, rejected, batch_why = _route(judged, n - state.accepted, model.fingerprint, select)
                    why.update(batch_why)
                    state = writer.commit_batch(accepted, rejected, end)
                    task.advance(len(accepted))
        finally:
            pipe.close()
        unselected = _unselected(writer, state, status) if select is not None else 0
        if status is GenerateStatus.COMPLETE:
            selection = {"selection": {**select.fingerprint(), "kept": state.accepted, "dropped": unselected}
                         } if select is not None else {}
            manifest = writer.finalize({"model": info, "policy": policy.fingerprint(), "generation": generation,
                                        "checks": [c.fingerprint() for c in active], **selection})
            state = writer.state
        message = _message(status, state, n, gp, select, unselected)
        if report_dir is not None:
            progress.log("rendering the report pages")
            _write_report(Path(report_dir), writer, model, policy, active, passed=status.passed, message=message)
    return GenerateResult(status=status, message=message, accepted=state.accepted, unselected=unselected,
                          rejected=state.quarantined, drawn=state.accepted + state.quarantined, manifest=manifest,
                          reasons=dict(why), seconds=time.perf_counter() - t0, resumed_at=start,
                          report_dir=Path(report_dir) if report_dir is not None else None, **common)
