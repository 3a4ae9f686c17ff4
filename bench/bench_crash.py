"""kill -9 at random moments of ``guard audit`` and ``guard generate``, then the same command again.

    .venv/bin/python bench/bench_crash.py [--kills 50] [--seed 0] [--work DIR]

Each trial starts the real CLI in a subprocess, sends SIGKILL at a moment drawn uniformly from the length of an
uninterrupted run of the same command (measured first, in this run), then checks what a crash may leave:

* the release is never sealed with a verdict the audit did not reach (a manifest, when present, carries the
  uninterrupted run's verdict and verifies), and a generated release has no manifest until it is complete;
* nothing private lands in a public folder: the release holds only its images and the manifest pair;
* re-running the same command finishes with the uninterrupted run's exit code and a release that
  ``guard verify`` accepts (for ``generate``: the identical release, same ``root_sha256``).

Prints one table row per command (trials, kills that landed after the first write, violations) and the time
per trial. The audit release is leaky (planted copies), so a seal that said "pass" would be caught.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table  # noqa: E402
from synfundus_guard.data.images import encode_png, load_image  # noqa: E402
from synfundus_guard.data.phantom import generate_phantom  # noqa: E402
from synfundus_guard.data.split import write_split  # noqa: E402
from synfundus_guard.fsutil import atomic_write_bytes  # noqa: E402
from synfundus_guard.release.manifest import MANIFEST_NAME, METADATA_NAME, verify_release  # noqa: E402

POLICY = "public"
PUBLIC_NAMES = {MANIFEST_NAME, METADATA_NAME}


def _guard(*args: str) -> list[str]:
    return [sys.executable, "-m", "synfundus_guard.cli.main", *args]


def _env(work: Path) -> dict[str, str]:
    return {**os.environ, "GUARD_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1"}


def make_audit_data(work: Path) -> dict[str, Path]:
    """Phantom patients split patient-disjoint into train/holdout; a release of novel patients plus copies."""
    generate_phantom(work / "phantom", patients=40, visits=2, size=96, seed=5)
    write_split(work / "phantom", work / "split", holdout_fraction=0.5, seed=0)
    novel = work / "novel"
    generate_phantom(novel, patients=6, visits=1, size=96, seed=77)
    release = work / "release_src"
    release.mkdir()
    for i, p in enumerate(sorted(novel.glob("*.png"))):
        atomic_write_bytes(release / f"synthetic_{i:03d}.png", encode_png(load_image(p)))
    for j, p in enumerate(sorted((work / "split" / "train").glob("*.png"))[:3]):
        atomic_write_bytes(release / f"synthetic_{100 + j:03d}.png", encode_png(load_image(p)[::-1]))
    return {"train": work / "split" / "train", "holdout": work / "split" / "holdout", "release": release}


def audit_args(data: dict[str, Path], release: Path, out: Path) -> list[str]:
    return _guard("audit", "--release", str(release), "--train", str(data["train"]), "--holdout",
                  str(data["holdout"]), "--policy", str(POLICY), "--out", str(out))


def generate_args(out: Path) -> list[str]:
    return _guard("generate", "--out", str(out), "--n", "12", "--batch-size", "4", "--steps", "8", "--seed", "3")


def _run(args: list[str], env: dict[str, str]) -> tuple[int, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    return proc.returncode, time.perf_counter() - t0


def _kill_at(args: list[str], env: dict[str, str], delay: float) -> bool:
    """Run ``args`` and SIGKILL it after ``delay`` s; True when it was killed (not already finished)."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _foreign_files(release: Path) -> list[str]:
    """Files in the release other than images and the manifest pair (hidden state of a running writer allowed)."""
    out = []
    for p in release.rglob("*"):
        rel = p.relative_to(release)
        if rel.parts[0] == ".guard" or p.is_dir():
            continue
        if p.suffix.lower() != ".png" and rel.as_posix() not in PUBLIC_NAMES:
            out.append(rel.as_posix())
    return out


def audit_trial(data: dict[str, Path], work: Path, env: dict[str, str], delay: float,
                straight: tuple[int, str]) -> tuple[bool, list[str]]:
    release, out = work / "release", work / "report"
    shutil.rmtree(release, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(data["release"], release)
    killed = _kill_at(audit_args(data, release, out), env, delay)
    problems = []
    if (release / MANIFEST_NAME).exists():
        sealed = json.loads((release / MANIFEST_NAME).read_text())["fingerprints"].get("audit_verdict")
        if sealed != straight[1]:
            problems.append(f"sealed with verdict {sealed!r}, the audit reached {straight[1]!r}")
        if not (release / METADATA_NAME).exists():
            problems.append("manifest without metadata")
    problems += [f"foreign file in release: {f}" for f in _foreign_files(release)]
    if (out / "report.json").exists() and json.loads((out / "report.json").read_text())["verdict"] != straight[1]:
        problems.append("report with another verdict")
    code, _ = _run(audit_args(data, release, out), env)
    if code != straight[0]:
        problems.append(f"re-run exit {code}, expected {straight[0]}")
    elif not verify_release(release).ok:
        problems.append(f"re-run release does not verify: {verify_release(release)}")
    return killed, problems


def generate_trial(work: Path, env: dict[str, str], delay: float, root: str) -> tuple[bool, list[str]]:
    release = work / "gen"
    shutil.rmtree(release, ignore_errors=True)
    shutil.rmtree(work / "gen-quarantine", ignore_errors=True)
    killed = _kill_at(generate_args(release), env, delay)
    problems = []
    if killed and (release / MANIFEST_NAME).exists() and (release / ".guard").exists():
        problems.append("manifest written while the run was unfinished")
    problems += [f"foreign file in release: {f}" for f in _foreign_files(release)] if release.exists() else []
    code, _ = _run(generate_args(release), env)
    if code != 0:
        problems.append(f"re-run exit {code}")
    else:
        result = verify_release(release)
        got = json.loads((release / MANIFEST_NAME).read_text())["root_sha256"]
        if not result.ok or got != root:
            problems.append(f"resumed release differs (verify ok={result.ok}, same root={got == root})")
    return killed, problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50, help="trials per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    env, rng = _env(work), random.Random(args.seed)
    data = make_audit_data(work / "data") if not (work / "data" / "release_src").exists() else {
        "train": work / "data" / "split" / "train", "holdout": work / "data" / "split" / "holdout",
        "release": work / "data" / "release_src"}
    rows, failures = [], []
    # uninterrupted runs first (they also warm the index and default-model caches the trials share)
    shutil.copytree(data["release"], work / "straight_release", dirs_exist_ok=True)
    code, t_audit = _run(audit_args(data, work / "straight_release", work / "straight_report"), env)
    verdict = json.loads((work / "straight_report" / "report.json").read_text())["verdict"]
    code, t_audit = _run(audit_args(data, work / "straight_release", work / "straight_report"), env)  # warm
    gen_code, t_gen = _run(generate_args(work / "straight_gen"), env)
    shutil.rmtree(work / "straight_gen")
    _, t_gen = _run(generate_args(work / "straight_gen"), env)
    root = json.loads((work / "straight_gen" / MANIFEST_NAME).read_text())["root_sha256"]
    print(f"uninterrupted: audit exit {code} verdict {verdict} in {t_audit:.1f} s; generate exit {gen_code} "
          f"in {t_gen:.1f} s", flush=True)
    for name, length, trial in (
        ("guard audit", t_audit, lambda d: audit_trial(data, work, env, d, (code, verdict))),
        ("guard generate", t_gen, lambda d: generate_trial(work, env, d, root)),
    ):
        killed, bad, t0 = 0, 0, time.perf_counter()
        for i in range(args.kills):
            delay = rng.uniform(0.0, length)
            was_killed, problems = trial(delay)
            killed += was_killed
            bad += bool(problems)
            failures += [f"{name} trial {i} (kill at {delay:.2f} s): {p}" for p in problems]
            print(f"  {name} {i + 1}/{args.kills}: kill at {delay:.2f} s, killed={was_killed}, "
                  f"{'OK' if not problems else problems}", flush=True)
        rows.append([name, args.kills, killed, bad, f"{length:.1f}", f"{(time.perf_counter() - t0) / args.kills:.1f}"])
    table("kill -9 at random moments, then the same command again",
          ["command", "trials", "killed mid-run", "violations", "uninterrupted s", "s/trial"], rows)
    for f in failures:
        print("VIOLATION:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
