"""Guarded vs unguarded sampling wall time, and training speed with and without DP.

    .venv/bin/python bench/bench_generation.py [--model DIR] [--n 64] [--batch-size 16] [--steps 25]
                                               [--policy public] [--train-steps 30] [--threads N]

1. Sampling: the same ``n`` images (same seeds) written as PNGs by a plain loop (unguarded), then through
   :func:`~synfundus_guard.generation.sampler.generate_release` (guarded: checks, quarantine, journal,
   manifest) with the policy's checks, with memorization only, with the identity filters only, and with the
   filters that need no training data. The one-time guard setup (training index, holdout calibration) is
   reported on its own line; the ratio compares wall time per drawn sample with the unguarded run. Goals:
   <= 1.10x with all checks (issue 3), <= 1.5x with the identity filters (issue 5). Then each check alone
   on the same images (images/s, and its time relative to sampling one image).
2. Training: steps/s of the default architecture on phantom data, plain and with Opacus DP-SGD.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synfundus_guard.data.images import encode_png  # noqa: E402
from synfundus_guard.data.phantom import generate_phantom  # noqa: E402
from synfundus_guard.fsutil import atomic_write_bytes  # noqa: E402
from synfundus_guard.generation.dp import DPConfig  # noqa: E402
from synfundus_guard.generation.model import DEFAULT_MODEL_DIR, LoadedModel, load_model  # noqa: E402
from synfundus_guard.generation.sample import sample_images  # noqa: E402
from synfundus_guard.generation.sampler import generate_release  # noqa: E402
from synfundus_guard.generation.train import train_model  # noqa: E402
from synfundus_guard.policies import load_policy  # noqa: E402
from synfundus_guard.policies.schema import FilterPolicy, GenerationPolicy, IdentityPolicy, Policy  # noqa: E402

from bench.common import table  # noqa: E402


def build_checks(model: LoadedModel, policy: Policy, work: Path) -> list:
    """The checks ``guard generate`` uses: the model's training split indexed, its holdout calibrating."""
    from synfundus_guard.audit.runner import build_checks_for_model

    return list(build_checks_for_model(model_dir=model.path, policy=policy, cache_dir=work / "cache"))


def bench_sampling(args: argparse.Namespace, work: Path) -> None:
    model = load_model(args.model)
    policy = load_policy(args.policy)
    # The bench measures overhead, not the policy's stop rule: never stop early on rejections.
    policy = replace(policy, generation=GenerationPolicy(max_rejection_rate=1.0))
    out = work / "plain"
    out.mkdir()

    def unguarded() -> float:
        t0 = time.perf_counter()
        for s in sample_images(model, n=args.n, seed=0, batch_size=args.batch_size, steps=args.steps):
            atomic_write_bytes(out / f"synth_{s.index:06d}.png", encode_png(s.image))
        return time.perf_counter() - t0

    list(sample_images(model, n=args.batch_size, seed=1, batch_size=args.batch_size, steps=args.steps))  # warm-up
    plain = unguarded()

    off = FilterPolicy(enabled=False)
    variants = [("all checks of the policy", policy),
                ("memorization only", replace(policy, identity=IdentityPolicy(off, off, off, off))),
                ("identity filters only (vessels, text, faces, metadata)",
                 replace(policy, memorization=replace(policy.memorization, enabled=False))),
                ("text, faces, metadata only", replace(policy, memorization=replace(policy.memorization, enabled=False),
                                                       identity=replace(policy.identity, vessels=off)))]
    runs = []
    for i, (label, pol) in enumerate(variants):
        t0 = time.perf_counter()
        checks = build_checks(model, pol, work)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = generate_release(model_dir=args.model, model=model, n=args.n, out_dir=work / f"guarded-{i}",
                               checks=checks, policy=pol, seed=0, batch_size=args.batch_size, steps=args.steps)
        runs.append((f"guarded, {label}: {res.accepted} released, {res.rejected} quarantined",
                     time.perf_counter() - t0, res.accepted + res.rejected))
        if i == 0:
            all_checks, first_setup = checks, setup
    plain = min(plain, unguarded())  # the baseline is the faster of two runs, before and after the guarded ones
    rows = [["unguarded (sample + PNG; best of 2)", f"{plain:.1f}", f"{args.n / plain:.2f}", "1.00x"]]
    rows += [[label, f"{wall:.1f}", f"{drawn / wall:.2f}", f"{wall / plain * args.n / max(1, drawn):.2f}x"]
             for label, wall, drawn in runs]
    rows.append(["one-time guard setup (index + calibration)", f"{first_setup:.1f}", "", ""])
    table(f"Sampling {args.n} images, {model.resolution}px, {args.steps} DDIM steps, batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s); ratio = wall time per drawn sample vs unguarded",
          ["run", "wall s", "drawn/s", "ratio"], rows)
    bench_checks(all_checks, out, plain / args.n)


def bench_checks(checks: list, folder: Path, sample_s: float) -> None:
    """Each check alone on the unguarded images, one batch, no overlap with sampling: its images/s and its cost
    relative to sampling an image (what the guarded sampler must hide behind sampling)."""
    from synfundus_guard.audit.base import Candidate
    from synfundus_guard.data.images import load_image

    cands = [Candidate(p.name, load_image(p)) for p in sorted(folder.glob("*.png"))]
    rows = [["sampling one image (unguarded)", f"{1 / sample_s:.2f}", "1.00x"]]
    for check in checks:
        t0 = time.perf_counter()
        check.check_batch(cands)
        dt = (time.perf_counter() - t0) / len(cands)
        rows.append([check.name, f"{1 / dt:.2f}", f"{dt / sample_s:.2f}x"])
    table(f"Per-check cost on the same {len(cands)} images (each alone, sequential)",
          ["check", "images/s", "time vs sampling"], rows)


def bench_training(args: argparse.Namespace, work: Path) -> None:
    data = work / "phantom"
    generate_phantom(data, patients=40, visits=2, size=64, seed=0)
    rows = []
    for label, dp in (("plain (AdamW)", None), ("DP-SGD (Opacus, eps 8)", DPConfig(target_epsilon=8.0))):
        res = train_model(train_dir=data, out_dir=work / f"train-{len(rows)}", steps=args.train_steps, resolution=32,
                          batch_size=16, channels=(32, 64, 64), dp=dp)
        rows.append([label, f"{res.parameters / 1e6:.2f} M", args.train_steps, f"{res.seconds:.1f}",
                     f"{res.steps_per_second:.2f}"])
    base = float(rows[0][-1])
    for r in rows:
        r.append(f"{float(r[-1]) / base:.2f}x")
    table(f"Training, default architecture, 32px, batch 16, {torch.get_num_threads()} thread(s)",
          ["mode", "params", "steps", "wall s", "steps/s", "vs plain"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--policy", default="public", help="policy file or shipped policy name")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        bench_sampling(args, Path(tmp))
        if not args.skip_training:
            bench_training(args, Path(tmp))


if __name__ == "__main__":
    main()
