"""Audit throughput at scale (issue 10): per-stage cost, end-to-end img/s against a same-run decode baseline,
worker processes, index build rate, and a projection for a SynFundus-sized audit (1 M vs 1.3 M) on this machine.

    .venv/bin/python bench/bench_scale.py [--train 400] [--holdout 100] [--release 256] [--size 256]
                                          [--workers 1,2] [--build-train 1200] [--index-sizes 1000,10000] [--quick]
                                          [--device cuda]

Data: phantom patients of seed 31 (training, one visit each), seed 32 (holdout) and seed 33 (the "release":
novel patients), written as PNG files at ``--size`` px; policy ``public`` (every per-image check).
Stages are timed on the release files in batches of 16, each check alone in this process (with, after the sum, the
vessels check as it was before its first pass: every candidate of every image refined); the end-to-end rows
run ``audit_release`` with a warm index (built and calibrated once before, so the rows time the checks) and
``--workers`` processes (and Ray actors); their steady rate counts the batches after the first one, as a large
release sees it. The baseline is PIL decoding the same release files, measured in the same run. The index-build
rows build and calibrate an index of ``--build-train`` other patients (seed 34) with 1 and 2 worker processes.
With ``--device`` (``cuda``, ``auto``), the memorization and vessels checks are also timed with their
alignment on that torch device (per-stage rows and a one-worker end-to-end run, beside the CPU rows of the same run).
The last table times every check per image (alone, in this process, on the same release images) against training
indexes of ``--index-sizes`` other patients (seed 35): the searches grow with the index, alignment does not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table  # noqa: E402
from synfundus_guard.audit._align_torch import resolve_device  # noqa: E402
from synfundus_guard.audit.runner import audit_release, build_checks, prepare_guard  # noqa: E402
from synfundus_guard.audit.vessels import VesselCheck  # noqa: E402
from synfundus_guard.audit.workers import read_candidate  # noqa: E402
from synfundus_guard.data.phantom import generate_phantom  # noqa: E402
from synfundus_guard.data.images import list_images  # noqa: E402
from synfundus_guard.policies import load_policy  # noqa: E402
from synfundus_guard.progress import Progress, ProgressTask  # noqa: E402
from synfundus_guard.parallel import single_thread_blas  # noqa: E402

POLICY = "public"
CALIBRATING = "Calibrating on holdout"
"""The progress task :func:`~synfundus_guard.index.calibrate.calibrate` starts once the index is built."""


def decode_rate(folder: Path) -> float:
    """PIL decode (to RGB arrays) of every image in ``folder``: images/s (best of two passes)."""
    files = [folder / r for r in list_images(folder)]
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        for f in files:
            with Image.open(f) as im:
                np.asarray(im.convert("RGB"))
        best = min(best, time.perf_counter() - t0)
    return len(files) / best


class Timeline(Progress):
    """Records when each batch of the release check finishes, for the steady-state rate: images checked after
    the first batch over the time since it (worker start-up, index load and the report are left out)."""

    def __init__(self) -> None:
        self.times: list[tuple[float, int]] = []
        self.started: dict[str, float] = {}
        """When each task (by description) first started."""

    def task(self, description: str, total: int | None = None) -> ProgressTask:
        timeline = self
        self.started.setdefault(description, time.perf_counter())

        class _Task(ProgressTask):
            def advance(self, n: int = 1) -> None:
                if description.startswith("Checking release"):
                    timeline.times.append((time.perf_counter(), n))

        return _Task()

    def steady_rate(self) -> float:
        if len(self.times) < 2:
            return float("nan")
        return sum(n for _, n in self.times[1:]) / (self.times[-1][0] - self.times[0][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--holdout", type=int, default=100)
    ap.add_argument("--release", type=int, default=256)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--build-train", type=int, default=1200, help="training images of the index-build rows (0: skip)")
    ap.add_argument("--ray", default="1,2", help="Ray actor counts to time ('' to skip)")
    ap.add_argument("--index-sizes", type=lambda v: [int(x) for x in v.split(",") if x], default=[1000, 10_000],
                    help="training-index sizes of the check-time rows ('' to skip; 100000 takes ~1 h to index)")
    ap.add_argument("--quick", action="store_true", help="small sets (smoke run)")
    ap.add_argument("--device", default="cpu", help="also time the alignment on this torch device (cuda, auto): "
                    "per-stage rows and a one-worker end-to-end run beside the CPU ones")
    args = ap.parse_args()
    if args.quick:
        args.train, args.holdout, args.release, args.build_train, args.index_sizes = 60, 30, 64, 0, [100]
    policy = load_policy(POLICY)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        generate_phantom(tmp / "train", patients=args.train, visits=1, size=args.size, seed=31)
        generate_phantom(tmp / "holdout", patients=args.holdout, visits=1, size=args.size, seed=32)
        generate_phantom(tmp / "release", patients=args.release, visits=1, size=args.size, seed=33)
        (tmp / "release" / "labels.csv").unlink()
        print(f"data written in {time.perf_counter() - t0:.0f} s")

        guard = prepare_guard(train_dir=tmp / "train", holdout_dir=tmp / "holdout", k=policy.memorization.k,
                              cache_dir=tmp / "cache", workers=1)
        build_s, cal_s = {}, {}
        if args.build_train:  # a larger training set of its own: worker start-up (~4 s) is paid once per build
            generate_phantom(tmp / "build", patients=args.build_train, visits=1, size=args.size, seed=34)
            for w in (1, 2):
                timeline = Timeline()
                t0 = time.perf_counter()
                prepare_guard(train_dir=tmp / "build", holdout_dir=tmp / "holdout", k=policy.memorization.k,
                              cache_dir=tmp / f"cache_build{w}", workers=w, progress=timeline)
                end = time.perf_counter()
                build_s[w] = end - t0
                cal_s[w] = end - timeline.started.get(CALIBRATING, end)  # 0 where calibration was cached
        base = decode_rate(tmp / "release")

        # Per stage, in this process.
        checks = build_checks(policy=policy, guard=guard)
        rels = list_images(tmp / "release")
        batches = [rels[i:i + 16] for i in range(0, len(rels), 16)]
        t0 = time.perf_counter()
        cands = [[read_candidate(tmp / "release", r)[0] for r in b] for b in batches]
        read_s = time.perf_counter() - t0
        rows = [["read + hash + decode", f"{len(rels) / read_s:.1f}", f"{1000 * read_s / len(rels):.1f}",
                 f"{base * read_s / len(rels):.2f}"]]
        stage_s = time_checks(checks, cands)
        for name, s in stage_s.items():
            rows.append([name, f"{len(rels) / s:.1f}", f"{1000 * s / len(rels):.1f}", f"{base * s / len(rels):.2f}"])
        total = read_s + sum(stage_s.values())
        rows.append(["sum of stages", f"{len(rels) / total:.1f}", f"{1000 * total / len(rels):.1f}",
                     f"{base * total / len(rels):.2f}"])
        ves = next(c for c in checks if isinstance(c, VesselCheck))
        full = ves.full_path()
        s = time_checks([full], cands)[full.name]
        rows.append(["(baseline) vessels, every candidate refined", f"{len(rels) / s:.1f}",
                     f"{1000 * s / len(rels):.1f}", f"{base * s / len(rels):.2f}"])
        if args.device != "cpu":  # the alignment on a torch device, beside the CPU rows above
            device = resolve_device(args.device)
            on_device = [c for c in build_checks(policy=policy, guard=guard, device=device)
                         if c.name in ("memorization", "vessels")]
            for name, s in time_checks(on_device, cands).items():
                rows.append([f"{name}, aligned on {args.device}", f"{len(rels) / s:.1f}", f"{1000 * s / len(rels):.1f}",
                             f"{base * s / len(rels):.2f}"])
        table(f"Per-stage cost, one process, {args.size} px, {len(rels)} release images vs {args.train} training "
              f"images (baseline: PIL decode {base:.0f} img/s)", ["stage", "img/s", "ms/img", "x decode"], rows)

        # End to end, warm index, 1..N worker processes.
        rows = []
        runs = [("local", int(x), "cpu") for x in args.workers.split(",") if x]
        runs += [("ray", int(x), "cpu") for x in args.ray.split(",") if x]
        runs += [("local", 1, args.device)] if args.device != "cpu" else []
        first: dict[str, float] = {}
        verdicts = set()
        for engine, w, device in runs:
            out = tmp / f"report_{engine}{w}{device}"
            timeline = Timeline()
            t0 = time.perf_counter()
            res = audit_release(release_dir=tmp / "release", out_dir=out, policy=policy, train_dir=tmp / "train",
                                holdout_dir=tmp / "holdout", cache_dir=tmp / "cache", workers=w, engine=engine,
                                write_release_manifest=False, device=device, progress=timeline)
            s = time.perf_counter() - t0
            rate, steady = len(rels) / s, timeline.steady_rate()
            first.setdefault(engine, steady)
            if device == "cpu":  # scores on another device differ by rounding, and so may the reasons' digits
                verdicts.add(tuple((i.file_name, i.verdict, tuple(i.reasons)) for i in res.report.images))
            label = engine if device == "cpu" else f"{engine}, aligned on {device}"
            rows.append([label, w, f"{s:.1f}", f"{rate:.2f}", f"{steady:.2f}", f"{base / steady:.0f}x",
                         f"{steady / first[engine]:.2f}", res.verdict.verdict, res.report.summary["n_fail"]])
        jobs = []
        if rows:  # --workers '' --ray '': no end-to-end runs
            table(f"End-to-end audit_release (warm index), {len(rels)} images at {args.size} px. img/s: the whole "
                  "call (index load, worker start-up, membership tests, report); steady: batches after the first one, "
                  f"what a large release sees. Identical per-image verdicts across runs: {len(verdicts) == 1}",
                  ["engine", "workers", "s", "img/s", "steady img/s", "vs decode", "speed-up", "verdict",
                   "failed images"], rows)
            best = max(float(r[4]) for r in rows)
            jobs.append(["audit 1 M release images", f"{1_000_000 / best / 3600:.1f}"])
        if build_s:
            n_build = args.build_train + args.holdout
            table("Index build + holdout calibration (cold cache, incl. hashing and worker start-up); the build alone "
                  "(until calibration starts) is what grows with the training set, calibration with the holdout",
                  ["training + holdout images", "workers", "s", "img/s", "speed-up", "build s",
                   "training img/s (build alone)", "calibration s", "holdout img/s"],
                  [[n_build, w, f"{build_s[w]:.1f}", f"{n_build / build_s[w]:.1f}", f"{build_s[1] / build_s[w]:.2f}",
                    f"{build_s[w] - cal_s[w]:.1f}", f"{args.build_train / (build_s[w] - cal_s[w]):.1f}",
                    f"{cal_s[w]:.1f}", f"{args.holdout / cal_s[w]:.1f}" if cal_s[w] > 0 else "cached"]
                   for w in (1, 2)])
            build_rate = max(args.build_train / (build_s[w] - cal_s[w]) for w in build_s)
            jobs.append(["index 1.3 M training images (build alone: calibration costs per holdout image, above)",
                         f"{1_300_000 / build_rate / 3600:.1f}"])
        if jobs:
            table("Projection on this machine (best rates, linear; exact search grows with the training set, so this "
                  "is a floor)", ["job", "hours"], jobs)
        if args.index_sizes:
            check_time_by_index_size(tmp, args, policy, cands)


def time_checks(checks, cands: list[list]) -> dict[str, float]:
    """Seconds each check takes alone, in this process, over the batches of candidates, with numpy's BLAS on one
    thread as :func:`~synfundus_guard.audit.base.run_checks` runs them (its idle threads otherwise cost the
    alignment's small matrix products more than they save)."""
    out = {}
    with single_thread_blas():
        for check in checks:
            t0 = time.perf_counter()
            for b in cands:
                check.check_batch(b)
            out[check.name] = time.perf_counter() - t0
    return out


def check_time_by_index_size(tmp: Path, args: argparse.Namespace, policy, cands: list[list]) -> None:
    """Per-image check time against training indexes of ``--index-sizes`` images (other patients, seed 35; built
    and calibrated on all cores, searched as the library searches them: exact up to 250 000)."""
    rows, first, names = [], None, []
    n_img = sum(len(b) for b in cands)
    for n in args.index_sizes:
        t0 = time.perf_counter()
        generate_phantom(tmp / f"train{n}", patients=n, visits=1, size=args.size, seed=35)
        made = time.perf_counter() - t0
        t0 = time.perf_counter()
        guard = prepare_guard(train_dir=tmp / f"train{n}", holdout_dir=tmp / "holdout", k=policy.memorization.k,
                              cache_dir=tmp / f"cache{n}", workers=0)
        built = time.perf_counter() - t0
        checks = build_checks(policy=policy, guard=guard)  # builds (and keeps) the vessel search
        s = time_checks(checks, cands)
        names = list(s)
        total = 1000 * sum(s.values()) / n_img
        first = first or total
        rows.append([f"{n:,}", f"{made:.0f}", f"{built:.0f}", *(f"{1000 * v / n_img:.1f}" for v in s.values()),
                     f"{total:.1f}", f"{total / first:.2f}"])
        del guard, checks
    table(f"Check time per image against the size of the training index ({n_img} release images, {args.size} px, "
          "each check alone in one process; the training images rendered, then indexed and calibrated on all cores)",
          ["indexed", "render s", "index + calibrate s", *(f"{c} ms/img" for c in names), "all checks ms/img",
           "vs first"], rows)


if __name__ == "__main__":
    main()
