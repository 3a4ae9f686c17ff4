"""A campaign of bad inputs across every command: one table row per class of input.

    .venv/bin/python bench/bench_campaign.py [--work DIR] [--only CLASS]

Each class runs in its own worker process (its peak RSS is read from the kernel with ``wait4``); inside it,
every case goes through the real CLI (``typer.testing.CliRunner``) in a fresh folder holding the case's inputs
and a bystander folder of user files. Per case it checks what the contract promises:

* the exit code is 0, 1 or 2, and 2 where the input is bad (a crash must never read as 1, "leak found");
* no traceback; an exit 2 carries an ``error:`` line;
* no half-written output: after an exit 2, every output path is as it was before (absent, or unchanged);
* nothing else touched: the inputs and the bystander folder are byte-identical afterwards, nothing deleted;
* its wall time (goal: under 60 s) and the worker's peak memory (goal: under 4 GB).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import table  # noqa: E402

POLICY = "public"


@dataclass
class Case:
    """One bad input: ``make(root)`` writes the inputs and returns the CLI arguments."""

    name: str
    make: Callable[[Path], list[str]]
    outputs: tuple[str, ...] = ()
    """Paths (relative to the case folder) the command may write; all else must stay untouched."""
    expect: tuple[int, ...] = (2,)


@dataclass
class Outcome:
    name: str
    code: int
    seconds: float
    problems: list[str] = field(default_factory=list)


# -- inputs ----------------------------------------------------------------------------------------------------

def png(size: int = 48, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(np.full((48, 48, 3), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
    return buf.getvalue()


BAD_IMAGES = {
    "garbage": b"\x89PNG not really", "empty": b"", "truncated": png()[:100], "tiny": png(8),
    "gif_animated": animated("GIF"), "webp_animated": animated("WEBP"), "text": b"patient P001, born 1950\n",
    "huge_header": png()[:16] + (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big") + png()[24:],
}
NESTED = "[" * 100_000
BAD_JSON = {"nested": NESTED, "garbage": "{not json", "empty": "", "list": "[]", "number": "1e999",
            "wrong_schema": json.dumps({"schema": "other/v1"}), "null": "null", "utf16": "\ufeff{}",
            "huge_string": json.dumps({"schema": "x" * 5_000_000})}
LABELS = {"empty": "", "unknown file": "file_name,patient_id\nnothere.png,P1\n", "binary": "\x00\xff\x00",
          "path escape": "file_name,patient_id\n../x.png,P1\n", "quote": "file_name,patient_id\n\"a.png,P1\n",
          "duplicate": "file_name,patient_id\na.png,P1\na.png,P2\n", "no file_name": "patient_id\nP1\n"}
BAD_POLICIES = {
    "alias_bomb": "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                  "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
    "nested": "name: " + "[" * 5000 + "\n", "python_tag": "!!python/object/apply:os.system ['true']\n",
    "unknown_key": "name: x\nbogus: 1\n", "bad_quantile": "name: x\nmemorization: {pixel_quantile: 3}\n",
    "bad_action": "name: x\nidentity: {faces: {action: explode}}\n", "not_mapping": "- 1\n- 2\n",
    "nan": "name: x\nmax_failed_fraction: .nan\n", "tab": "name:\t[\n", "binary": "\x00\x01\x02",
    "huge_int": "name: x\nmemorization: {k: " + "9" * 5000 + "}\n", "empty": "",
}


def user_files(root: Path) -> None:
    """A bystander folder of the user's own files next to every case."""
    (root / "mine").mkdir()
    (root / "mine" / "thesis.docx").write_bytes(b"years of work")
    (root / "mine" / "notes.txt").write_text("do not delete")


def release_with(root: Path, name: str, data: bytes, n_ok: int = 2) -> Path:
    rel = root / "release"
    rel.mkdir()
    for i in range(n_ok):
        (rel / f"ok_{i}.png").write_bytes(png(48, i))
    (rel / name).write_bytes(data)
    return rel


# -- case classes ----------------------------------------------------------------------------------------------

def manifest_cases() -> Iterator[Case]:
    # ``guard manifest`` seals bytes and reads headers only: a truncated or small image is sealed (the audit is
    # what decodes and refuses it); anything that is not an image, or holds several frames, is refused.
    for kind, data in BAD_IMAGES.items():
        for ext in ("png", "jpg", "webp", "tif", "bmp"):
            yield Case(f"image {kind}.{ext}", lambda r, d=data, e=ext: ["manifest", release_with(r, f"x.{e}", d)],
                       outputs=("release/manifest.json", "release/metadata.jsonl"),
                       expect=(0, 2) if kind in ("truncated", "tiny") else (2,))
    yield Case("missing folder", lambda r: ["manifest", r / "nope"])
    yield Case("a file, not a folder", lambda r: ["manifest", (r / "f.png").write_bytes(png()) and r / "f.png"])
    yield Case("empty folder", lambda r: ["manifest", (r / "e").mkdir() or r / "e"])
    yield Case("symlinked image", lambda r: ["manifest", _linked(r, folder=False)], outputs=("release/manifest.json",))
    yield Case("symlinked folder", lambda r: ["manifest", _linked(r, folder=True)], outputs=("release/manifest.json",))
    yield Case("private evidence inside", lambda r: ["manifest", _with_private(r)], outputs=("release/manifest.json",))


def _linked(root: Path, *, folder: bool) -> Path:
    rel = release_with(root, "ok_x.png", png(48, 9))
    if folder:
        os.symlink(root / "mine", rel / "sub")
    else:
        os.symlink(root / "mine" / "notes.txt", rel / "link.png")
    return rel


def _with_private(root: Path) -> Path:
    rel = release_with(root, "ok_x.png", png(48, 9))
    (rel / "private").mkdir()
    (rel / "private" / "evidence.json").write_text("{}")
    return rel


def verify_cases() -> Iterator[Case]:
    def sealed(root: Path) -> Path:
        rel = release_with(root, "ok_x.png", png(48, 9))
        from typer.testing import CliRunner

        from synfundus_guard.cli.main import app

        assert CliRunner().invoke(app, ["manifest", str(rel)]).exit_code == 0
        return rel

    for kind, text in BAD_JSON.items():
        yield Case(f"manifest {kind}", lambda r, t=text: ["verify", _write(sealed(r) / "manifest.json", t)])
    edits = {
        "added txt": lambda rel: (rel / "patients.csv").write_text("P001,Smith"),
        "added hidden": lambda rel: (rel / ".hidden").write_text("x"),
        "added image": lambda rel: (rel / "new.png").write_bytes(png(48, 5)),
        "symlinked folder": lambda rel: os.symlink(rel.parent / "mine", rel / "sub"),
        "modified image": lambda rel: (rel / "ok_0.png").write_bytes(png(48, 7)),
        "removed image": lambda rel: (rel / "ok_0.png").unlink(),
        "metadata edited": lambda rel: (rel / "metadata.jsonl").write_text("{}\n"),
        "path escape": lambda rel: _escape(rel),
    }
    for name, edit in edits.items():
        def make(r: Path, e=edit) -> list[str]:
            rel = sealed(r)
            e(rel)
            return ["verify", rel]
        yield Case(f"release {name}", make, expect=(1, 2))
    yield Case("missing folder", lambda r: ["verify", r / "nope"])


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path.parent


def _escape(rel: Path) -> None:
    doc = json.loads((rel / "manifest.json").read_text())
    doc["files"][0]["file_name"] = "../mine/notes.txt"
    (rel / "manifest.json").write_text(json.dumps(doc))


def gate_cases(report: Path) -> Iterator[Case]:
    outs = ("out/j.xml", "out/s.sarif")
    for kind, text in BAD_JSON.items():
        yield Case(f"report {kind}", lambda r, t=text: ["gate", _file(r / "report.json", t), "--policy", POLICY,
                                                         "--junit", r / outs[0], "--sarif", r / outs[1]],
                   outputs=outs)
    for kind, text in BAD_POLICIES.items():
        yield Case(f"policy {kind}", lambda r, t=text: ["gate", report, "--policy", _file(r / "p.yaml", t),
                                                         "--junit", r / outs[0]], outputs=outs)
    yield Case("junit == sarif", lambda r: ["gate", report, "--policy", POLICY, "--junit", r / "o.xml",
                                            "--sarif", r / "o.xml"], outputs=("o.xml",))
    yield Case("junit is a folder", lambda r: ["gate", report, "--policy", POLICY, "--junit", r / "mine"])
    yield Case("sarif under a file", lambda r: ["gate", report, "--policy", POLICY, "--junit", r / "j.xml",
                                                "--sarif", r / "mine" / "notes.txt" / "s.sarif"], outputs=("j.xml",))
    yield Case("missing report", lambda r: ["gate", r / "nope.json", "--policy", POLICY])


BAD_VALUES = {"null": None, "list": [], "string": "x", "object": {}, "huge": 1e308, "nested": [[[[[[[[1]]]]]]]]}


def report_field_cases(report: Path) -> Iterator[Case]:
    """Type confusion inside an otherwise valid report: every top-level field and every field of an image."""
    doc = json.loads(report.read_text())
    paths = [(k,) for k in doc] + [("images", 0, k) for k in doc["images"][0]]
    for path in paths:
        for vname, value in BAD_VALUES.items():
            def make(r: Path, path=path, value=value) -> list[str]:
                d = json.loads(report.read_text())
                target = d
                for part in path[:-1]:
                    target = target[part]
                target[path[-1]] = value
                return ["gate", _file(r / "report.json", json.dumps(d)), "--policy", POLICY]
            yield Case(f"report {'.'.join(map(str, path))}={vname}", make, expect=(1, 2))


def _file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def data_cases(phantom: Path) -> Iterator[Case]:
    for opt, values in (("--patients", ["0", "-1", "1e20", "abc", "nan", "9" * 400]), ("--visits", ["0", "101"]),
                        ("--size", ["8", "100000"]), ("--seed", ["-5", "1.5"])):
        for v in values:
            yield Case(f"phantom {opt} {v[:12]}", lambda r, o=opt, v=v: ["data", "phantom", r / "out", o, v,
                                                                        "--patients" if o != "--patients" else "--visits",
                                                                        "2" if o != "--patients" else "1"],
                       outputs=("out",))
    yield Case("phantom into user folder", lambda r: ["data", "phantom", r / "mine", "--patients", "2"])
    yield Case("phantom into a file", lambda r: ["data", "phantom", r / "mine" / "notes.txt", "--patients", "2"])
    labels = {"empty": "", "no patient column": "file_name\np00000_v0.png\n", "unknown file": "file_name,patient_id\n"
              "nothere.png,P1\n", "path escape": "file_name,patient_id\n../x.png,P1\n", "binary": "\x00\xff\x00",
              "duplicate rows": "file_name,patient_id\np00000_v0.png,P1\np00000_v0.png,P2\n",
              "one patient": None}
    ok_labels = ("no patient column",)  # documented: without patient_id each image is its own patient
    for kind, text in labels.items():
        def make(r: Path, t=text) -> list[str]:
            src = Path(shutil.copytree(phantom, r / "src"))
            if t is None:
                rows = (src / "labels.csv").read_text().splitlines()
                header = rows[0].split(",")
                i = header.index("patient_id")
                t = "\n".join([rows[0], *(",".join(c if j != i else "P1" for j, c in enumerate(x.split(",")))
                                         for x in rows[1:])]) + "\n"
            (src / "labels.csv").write_text(t, encoding="utf-8", errors="surrogateescape")
            return ["data", "split", src, r / "out"]
        yield Case(f"split labels {kind}", make, outputs=("out",), expect=(0, 2) if kind in ok_labels else (2,))
    for frac in ("0", "1", "-0.5", "nan", "abc"):
        yield Case(f"split fraction {frac}", lambda r, f=frac: ["data", "split", phantom, r / "out",
                                                                "--holdout-fraction", f], outputs=("out",))
    yield Case("split into user folder", lambda r: ["data", "split", phantom, r / "mine"])


def train_cases(phantom: Path) -> Iterator[Case]:
    base = lambda r: ["train", phantom, "--out", r / "model", "--steps", "1", "--resolution", "32"]  # noqa: E731
    for opt, v in (("--channels", "100000"), ("--channels", "0"), ("--channels", "48,64"), ("--steps", "0"),
                   ("--resolution", "7"), ("--lr", "nan"), ("--lr", "-1"), ("--batch-size", "0"),
                   ("--holdout-fraction", "1.5"), ("--channels", "a,b"), ("--seed", "-1")):
        yield Case(f"train {opt} {v}", lambda r, o=opt, v=v: [*base(r), o, v], outputs=("model",))
    yield Case("train missing folder", lambda r: ["train", r / "nope", "--out", r / "model"], outputs=("model",))
    yield Case("train into user folder", lambda r: ["train", phantom, "--out", r / "mine", "--steps", "1"])
    for kind, data in (("garbage", b"not a checkpoint"), ("list", None)):
        def make(r: Path, d=data) -> list[str]:
            import torch

            (r / "model" / "checkpoint").mkdir(parents=True)
            target = r / "model" / "checkpoint" / "last.pt"
            target.write_bytes(d) if d is not None else torch.save([1, 2, 3], target)
            return base(r)
        yield Case(f"train checkpoint {kind}", make, outputs=("model",))


def phantom_dir(r: Path) -> Path:
    """The class's shared phantom folder (made once by :func:`_audit_data` under the work folder)."""
    return r.parents[1] / "phantom"


def generate_cases() -> Iterator[Case]:
    from synfundus_guard.generation.model import DEFAULT_MODEL_DIR

    def model_with(r: Path, rel: str, text: str) -> Path:
        m = Path(shutil.copytree(DEFAULT_MODEL_DIR, r / "model"))
        (m / rel).write_text(text)
        return m

    edits = {"unet/config.json": ["{", "[]", json.dumps({"sample_size": -1}), NESTED],
             "scheduler/scheduler_config.json": ["{", json.dumps({"num_train_timesteps": -5}), NESTED],
             "recipe.json": [json.dumps({"phantom": {"patients": 10**8}}), json.dumps({"bogus": 1}), NESTED],
             "training_card.json": ["{", "[]", NESTED]}
    for rel, texts in edits.items():
        for i, text in enumerate(texts):
            yield Case(f"model {rel} #{i}", lambda r, rel=rel, t=text: ["generate", "--model", model_with(r, rel, t),
                                                                       "--n", "1", "--out", r / "release"],
                       outputs=("release", "release-quarantine"))
    for kind, text in BAD_POLICIES.items():
        yield Case(f"policy {kind}", lambda r, t=text: ["generate", "--out", r / "release", "--n", "1", "--policy",
                                                        _file(r / "p.yaml", t)], outputs=("release",))
    for kind, text in LABELS.items():
        def train_labels(r: Path, t=text) -> list[str]:
            src = Path(shutil.copytree(phantom_dir(r), r / "src"))
            (src / "labels.csv").write_text(t, encoding="utf-8", errors="surrogateescape")
            return ["train", src, "--out", r / "model", "--steps", "1"]
        yield Case(f"train labels {kind}", train_labels, outputs=("model",))
    yield Case("model missing", lambda r: ["generate", "--model", r / "nope", "--out", r / "release"],
               outputs=("release",))
    for opt, v in (("--n", "0"), ("--n", "-3"), ("--steps", "0"), ("--batch-size", "0"), ("--labels", "x=1"),
                   ("--labels", "garbage")):
        yield Case(f"generate {opt} {v}", lambda r, o=opt, v=v: ["generate", "--out", r / "release", o, v],
                   outputs=("release", "release-quarantine"))
    yield Case("generate into user folder", lambda r: ["generate", "--out", r / "mine", "--n", "1"])
    yield Case("quarantine inside release", lambda r: ["generate", "--out", r / "release", "--quarantine",
                                                       r / "release" / "q", "--n", "1"], outputs=("release",))


def audit_cases(ds: dict[str, Path]) -> Iterator[Case]:
    def args(r: Path, release: Path, **over: Path) -> list[str]:
        a = {"--release": release, "--train": ds["train"], "--holdout": ds["holdout"], "--policy": POLICY,
             "--out": r / "report", **over}
        return ["audit", *[x for k, v in a.items() for x in (k, str(v))]]

    outs = ("report", "release/manifest.json", "release/metadata.jsonl")
    for kind, data in BAD_IMAGES.items():
        yield Case(f"release image {kind}", lambda r, d=data: args(r, release_with(r, "x.png", d)), outputs=outs)
    yield Case("release symlinked image", lambda r: args(r, _linked(r, folder=False)), outputs=outs)
    yield Case("release symlinked folder", lambda r: args(r, _linked(r, folder=True)), outputs=outs)
    yield Case("release missing", lambda r: args(r, r / "nope"), outputs=outs)
    yield Case("out inside release", lambda r: args(r, release_with(r, "y.png", png(48, 3)),
                                                    **{"--out": r / "release" / "rep"}), outputs=outs)
    yield Case("out is user folder", lambda r: args(r, release_with(r, "y.png", png(48, 3)), **{"--out": r / "mine"}),
               outputs=outs)
    yield Case("index is user folder", lambda r: [*args(r, release_with(r, "y.png", png(48, 3))), "--index",
                                                  str(r / "mine")], outputs=outs)
    yield Case("index is the release", lambda r: [*args(r, release_with(r, "y.png", png(48, 3))), "--index",
                                                  str(r / "release")], outputs=outs)
    yield Case("train missing", lambda r: args(r, release_with(r, "y.png", png(48, 3)), **{"--train": r / "nope"}),
               outputs=outs)
    yield Case("holdout = train", lambda r: args(r, release_with(r, "y.png", png(48, 3)),
                                                 **{"--holdout": ds["train"]}), outputs=outs)
    for kind, text in list(BAD_POLICIES.items())[:6]:
        yield Case(f"policy {kind}", lambda r, t=text: args(r, release_with(r, "y.png", png(48, 3)),
                                                            **{"--policy": _file(r / "p.yaml", t)}), outputs=outs)
    for kind, text in LABELS.items():
        def with_labels(r: Path, t=text) -> list[str]:
            train = Path(shutil.copytree(ds["train"], r / "train"))
            (train / "labels.csv").write_text(t, encoding="utf-8", errors="surrogateescape")
            return args(r, release_with(r, "y.png", png(48, 3)), **{"--train": train})
        yield Case(f"train labels {kind}", with_labels, outputs=outs)
    for kind, text in list(BAD_POLICIES.items())[6:]:
        yield Case(f"policy {kind}", lambda r, t=text: args(r, release_with(r, "y.png", png(48, 3)),
                                                            **{"--policy": _file(r / "p.yaml", t)}), outputs=outs)
    yield Case("bad embedder", lambda r: [*args(r, release_with(r, "y.png", png(48, 3))), "--embedder",
                                          "openclip:nope"], outputs=outs)
    yield Case("batch size 0", lambda r: [*args(r, release_with(r, "y.png", png(48, 3))), "--batch-size", "0"],
               outputs=outs)


def demo_cases() -> Iterator[Case]:
    yield Case("demo into user folder", lambda r: ["demo", r / "mine"])
    yield Case("demo into a file", lambda r: ["demo", r / "mine" / "notes.txt"])
    yield Case("demo patients 1", lambda r: ["demo", r / "d", "--patients", "1"], outputs=("d",))


# -- running ---------------------------------------------------------------------------------------------------

def snapshot(root: Path, skip: tuple[str, ...]) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        if p.is_symlink():
            out[rel] = b"->" + os.readlink(p).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


@dataclass
class _Result:
    exit_code: int
    output: str
    exception: BaseException | None


def invoke(args: list[str]) -> _Result:
    """The console script's own entry point (:func:`synfundus_guard.cli.main.run`), streams captured."""
    import contextlib

    from synfundus_guard.cli.main import run

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = run(args)
        return _Result(code, buf.getvalue(), None)
    except BaseException as exc:  # noqa: BLE001 - run() promises never to raise: record it if it does
        return _Result(-1, buf.getvalue(), exc)


def run_case(case: Case, root: Path) -> Outcome:
    root.mkdir(parents=True)
    user_files(root)
    args = [str(a) for a in case.make(root)]
    before_all = snapshot(root, ())
    before = snapshot(root, case.outputs)
    t0 = time.perf_counter()
    res = invoke(args)
    seconds = time.perf_counter() - t0
    out = Outcome(case.name, res.exit_code, seconds)
    if res.exception is not None:
        out.problems.append(f"crash {type(res.exception).__name__}: {res.exception}")
    if "Traceback" in res.output:
        out.problems.append("traceback")
    if res.exit_code not in case.expect:
        out.problems.append(f"exit {res.exit_code}, expected {case.expect}: {res.output.strip()[-200:]}")
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error")]
    if res.exit_code == 2 and not errors:
        out.problems.append("exit 2 without an error line")
    after = snapshot(root, case.outputs)
    if after != before:
        changed = sorted(set(before) ^ set(after) | {k for k in before.keys() & after if before[k] != after[k]})
        out.problems.append(f"touched files outside its outputs: {changed[:3]}")
    if res.exit_code == 2:
        now = snapshot(root, ())
        partial = [o for o in case.outputs if {k: v for k, v in now.items() if k == o or k.startswith(o + "/")}
                   != {k: v for k, v in before_all.items() if k == o or k.startswith(o + "/")}]
        if partial or any((root / o).is_dir() and not (root / o).exists() for o in case.outputs):
            out.problems.append(f"partial output after exit 2: {partial}")
        leftovers = [p.name for p in root.iterdir() if ".partial" in p.name or p.name.endswith(".building")]
        if leftovers:
            out.problems.append(f"staging left behind: {leftovers}")
    if seconds > 60:
        out.problems.append(f"took {seconds:.0f} s")
    return out


def _audit_data(work: Path) -> dict[str, Path]:
    from synfundus_guard.data.phantom import generate_phantom
    from synfundus_guard.data.split import write_split

    if not (work / "split").exists():
        generate_phantom(work / "phantom", patients=40, visits=1, size=64, seed=3)
        write_split(work / "phantom", work / "split", holdout_fraction=0.55, seed=0)
    return {"train": work / "split" / "train", "holdout": work / "split" / "holdout", "phantom": work / "phantom"}


def _report(work: Path) -> Path:
    from synfundus_guard.policies.evaluate import evaluate_release
    from synfundus_guard.policies.schema import load_policy
    from synfundus_guard.results import Report
    from synfundus_guard.release.report import write_report

    from synfundus_guard.audit.base import Finding
    from synfundus_guard.policies.evaluate import image_result

    policy = load_policy(POLICY)
    found = [Finding("memorization", True, ("near-copy",), {"memorization.pixel_ncc": 0.97}),
             Finding("faces", False, (), {"faces.score": 0.1})]
    report = Report(policy=policy.fingerprint(), embedder={"name": "pixel"},
                    images=[image_result("s_000.png", found, policy)], verdict="pending",
                    summary={"n_images": 1}, release={"n_images": 1})
    report.verdict = evaluate_release(report, policy).verdict
    return write_report(report, work / "a-report")


def classes(work: Path) -> dict[str, Callable[[], Iterator[Case]]]:
    return {
        "manifest: bad images and folders": manifest_cases,
        "verify: bad manifests and changed releases": verify_cases,
        "gate: bad reports, policies, outputs": lambda: gate_cases(_report(work)),
        "gate: type confusion inside a report": lambda: report_field_cases(_report(work)),
        "data phantom/split: bad numbers, labels, outputs": lambda: data_cases(_audit_data(work)["phantom"]),
        "train: bad options, folders, checkpoints": lambda: train_cases(_audit_data(work)["phantom"]),
        "generate: bad model folders, options, policies": lambda: (_audit_data(work), generate_cases())[1],
        "audit: bad releases, sets, outputs, policies": lambda: audit_cases(_audit_data(work)),
        "demo: bad outputs and options": demo_cases,
    }


def worker(name: str, work: Path) -> None:
    os.environ["GUARD_CACHE_DIR"] = str(work / "cache")
    results = []
    for i, case in enumerate(classes(work)[name]()):
        root = Path(tempfile.mkdtemp(dir=work)) / f"case{i}"
        try:
            results.append(run_case(case, root).__dict__)
        except Exception as exc:  # noqa: BLE001 - a broken case is reported, not hidden
            results.append(Outcome(case.name, -1, 0.0, [f"case setup failed: {type(exc).__name__}: {exc}"]).__dict__)
        shutil.rmtree(root.parent, ignore_errors=True)
    print("RESULTS " + json.dumps(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--only", default=None, help="run the classes whose name starts with this")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-campaign-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.worker, work)
        return
    rows, failures, total = [], [], 0
    for name in classes(work):
        if args.only and not name.startswith(args.only):
            continue
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--work", str(work)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULTS ")), None)
        if line is None:
            failures.append(f"{name}: worker died (status {status})")
            continue
        results = json.loads(line[len("RESULTS "):])
        total += len(results)
        codes = sorted({r["code"] for r in results})
        bad = [r for r in results if r["problems"]]
        failures += [f"{name} / {r['name']}: {'; '.join(r['problems'])}" for r in bad]
        rows.append([name, len(results), ",".join(map(str, codes)), sum("traceback" in " ".join(r["problems"]) or
                     "crash" in " ".join(r["problems"]) for r in results),
                     sum(any(p.startswith("exit") for p in r["problems"]) for r in results),
                     sum(any("partial" in p or "staging" in p for p in r["problems"]) for r in results),
                     sum(any("touched" in p for p in r["problems"]) for r in results),
                     f"{max(r['seconds'] for r in results):.1f}", f"{usage.ru_maxrss / 1024:.0f}",
                     f"{time.perf_counter() - t0:.0f}"])
    table(f"bad-input campaign: {total} cases", ["class", "cases", "exit codes", "tracebacks/crashes",
                                                 "wrong exit", "half-written", "user files touched", "max s/case",
                                                 "peak RSS MB", "class s"], rows)
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
