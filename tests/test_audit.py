"""End-to-end audits on real phantom folders: detection, exit codes, privacy of public files, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synfundus_guard.cli.main import app
from tests.guard_data import make_dataset

runner = CliRunner()
POLICY = "public"
SMALL_POLICY = str(Path(__file__).resolve().parent / "policies" / "public_without_membership.yaml")
"""public.yaml without membership inference: for releases too small for a membership test (they fail closed)."""


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("guard"))


def audit_args(ds, release: Path, out: Path, *extra: str, policy: str = POLICY) -> list[str]:
    return ["audit", "--release", str(release), "--train", str(ds["train"]), "--holdout", str(ds["holdout"]),
            "--policy", policy, "--out", str(out), "--cache-dir", str(ds["root"] / "cache"), *extra]


def copy_release(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in ("manifest.json", "metadata.jsonl"):
        (dst / f).unlink(missing_ok=True)
    return dst


@pytest.fixture(scope="module")
def leaky_run(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("leaky_report")
    release = copy_release(ds["leaky"], tmp_path_factory.mktemp("r") / "leaky")
    res = runner.invoke(app, audit_args(ds, release, out))
    return res, out, release


def test_leaky_release_fails_and_every_planted_copy_is_flagged(ds, leaky_run):
    res, out, _ = leaky_run
    assert res.exit_code == 1, res.output
    report = json.loads((out / "report.json").read_text())
    by_name = {img["file_name"]: img for img in report["images"]}
    n = ds["n_novel"]
    copies = [by_name[f"synthetic_{i:03d}.png"] for i in range(n, n + ds["n_copies"])]
    novel = [by_name[f"synthetic_{i:03d}.png"] for i in range(n)]
    assert all(c["verdict"] == "fail" for c in copies)
    assert all(any("near-copy" in r for r in c["reasons"]) for c in copies)
    # the copies' aligned pixel scores are far above every novel patient's
    worst_copy = min(c["scores"]["memorization.pixel_ncc"] for c in copies)
    best_novel = max(i["scores"]["memorization.pixel_ncc"] for i in novel)
    assert worst_copy > best_novel + 0.2
    assert report["verdict"] == "fail"
    assert report["summary"]["n_images"] == n + ds["n_copies"]


def test_clean_release_passes(ds, tmp_path):
    release = copy_release(ds["clean"], tmp_path / "clean")
    res = runner.invoke(app, audit_args(ds, release, tmp_path / "out", policy=SMALL_POLICY))
    assert res.exit_code == 0, res.output
    # the report folder is public (the usual mode), its private/ owner-only, and the journal is gone
    assert (tmp_path / "out").stat().st_mode & 0o044 == 0o044
    assert (tmp_path / "out" / "private").stat().st_mode & 0o777 == 0o700
    assert not (tmp_path / "out" / "private" / "journal.sqlite").exists()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "pass"
    assert (release / "manifest.json").is_file() and (release / "metadata.jsonl").is_file()


def _training_identifiers(ds) -> set[str]:
    ids = {str(ds["train"].resolve()), str(ds["train"])}
    for line in (ds["train"] / "labels.csv").read_text().splitlines()[1:]:
        name, image_id, patient = line.split(",")
        ids |= {name, Path(name).stem, image_id, patient}
    return ids


def test_no_public_file_names_training_data_but_private_evidence_does(ds, leaky_run, tmp_path):
    res, out, release = leaky_run
    gate = runner.invoke(app, ["gate", str(out / "report.json"), "--policy", POLICY,
                               "--junit", str(tmp_path / "junit.xml"), "--sarif", str(tmp_path / "guard.sarif")])
    assert gate.exit_code == 1, gate.output
    public = [out / "report.json", release / "manifest.json", release / "metadata.jsonl",
              tmp_path / "junit.xml", tmp_path / "guard.sarif"]
    secrets = _training_identifiers(ds)
    for path in public:
        text = path.read_text()
        leaked = sorted(s for s in secrets if s in text)
        assert not leaked, f"{path.name} leaks {leaked[:3]}"
    for stream in (res.output, gate.output):
        assert not [s for s in secrets if s in stream]
    private = (out / "private" / "evidence.json").read_text()
    assert "train_p" in private  # the closest training images are named, privately
    sarif = json.loads((tmp_path / "guard.sarif").read_text())
    flagged = [r for r in sarif["runs"][0]["results"] if r.get("ruleId") == "SFG-MEMORIZATION"]
    assert len(flagged) == ds["n_copies"]


def test_corrupt_image_in_release_is_exit_2_with_no_report(ds, tmp_path):
    release = copy_release(ds["clean"], tmp_path / "rel")
    data = (release / "synthetic_000.png").read_bytes()
    (release / "synthetic_000.png").write_bytes(data[: len(data) // 2])
    res = runner.invoke(app, audit_args(ds, release, tmp_path / "out"))
    assert res.exit_code == 2
    assert "synthetic_000.png" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out" / "report.json").exists()
    assert not (release / "manifest.json").exists()


@pytest.mark.parametrize("case", ["empty_release", "missing_train", "out_inside_release", "train_without_holdout",
                                  "not_an_image", "bad_policy"])
def test_bad_inputs_exit_2_with_one_line(ds, tmp_path, case):
    release = copy_release(ds["clean"], tmp_path / "rel")
    out = tmp_path / "out"
    if case == "empty_release":
        empty = tmp_path / "empty"
        empty.mkdir()
        args = audit_args(ds, empty, out)
    elif case == "missing_train":
        args = audit_args(ds, release, out)
        args[args.index("--train") + 1] = str(tmp_path / "nope")
    elif case == "out_inside_release":
        args = audit_args(ds, release, release / "report")
    elif case == "train_without_holdout":
        args = ["audit", "--release", str(release), "--train", str(ds["train"]), "--policy", POLICY, "--out", str(out)]
    elif case == "not_an_image":
        (release / "notes.png").write_text("this is not an image")
        args = audit_args(ds, release, out)
    else:
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: x\nmemorization: {k: 0, pixel_quantile: 3}\nbogus: 1\n")
        args = audit_args(ds, release, out)
        args[args.index("--policy") + 1] = str(bad)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert "error:" in res.output
    if case == "bad_policy":
        assert "memorization.k" in res.output and "pixel_quantile" in res.output and "bogus" in res.output
    assert not (out / "report.json").exists()


def test_holdout_sharing_patients_with_train_is_refused_with_count(ds, tmp_path):
    holdout = tmp_path / "holdout"
    shutil.copytree(ds["holdout"], holdout)
    src = sorted(ds["train"].glob("*.png"))[:2]
    lines = (holdout / "labels.csv").read_text().splitlines()
    for p in src:
        shutil.copy(p, holdout / p.name)
        lines.append(f"{p.name},X-{p.stem},PAT-000")
    (holdout / "labels.csv").write_text("\n".join(lines) + "\n")
    args = audit_args(ds, ds["clean"], tmp_path / "out", "--no-manifest")
    args[args.index("--holdout") + 1] = str(holdout)
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert "1 patient(s)" in res.output


def test_index_from_another_training_set_or_embedder_is_refused(ds, tmp_path):
    index = tmp_path / "index"
    ok = runner.invoke(app, audit_args(ds, ds["clean"], tmp_path / "o1", "--index", str(index), "--no-manifest",
                                       policy=SMALL_POLICY))
    assert ok.exit_code == 0, ok.output
    assert (index / "meta.json").is_file()
    # same index, different training set
    other_train = tmp_path / "train2"
    shutil.copytree(ds["train"], other_train)
    victim = sorted(other_train.glob("*.png"))[0]
    victim.unlink()
    lines = [ln for ln in (other_train / "labels.csv").read_text().splitlines() if not ln.startswith(victim.name)]
    (other_train / "labels.csv").write_text("\n".join(lines) + "\n")
    args = audit_args(ds, ds["clean"], tmp_path / "o2", "--index", str(index), "--no-manifest")
    args[args.index("--train") + 1] = str(other_train)
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "different training set" in res.output
    # same index, different embedder fingerprint
    meta = json.loads((index / "meta.json").read_text())
    ok_fp, meta["feature_fingerprint"] = meta["feature_fingerprint"], "openclip:ViT-B-32:sha256:0000"
    (index / "meta.json").write_text(json.dumps(meta))
    res = runner.invoke(app, audit_args(ds, ds["clean"], tmp_path / "o3", "--index", str(index), "--no-manifest"))
    assert res.exit_code == 2 and "built with embedder" in res.output
    # vessel templates of another guard version
    meta["feature_fingerprint"], meta["vessel_version"] = ok_fp, "vessel-v2:96"
    (index / "meta.json").write_text(json.dumps(meta))
    res = runner.invoke(app, audit_args(ds, ds["clean"], tmp_path / "o4", "--index", str(index), "--no-manifest"))
    assert res.exit_code == 2 and "another guard version" in res.output and "vessel-v2:96" in res.output


def test_cached_index_of_another_template_version_is_rebuilt_not_refused(ds, tmp_path, monkeypatch):
    """An upgrade that changes the stored templates builds a new cached index beside the old one."""
    from synfundus_guard.audit import runner as audit_runner
    from synfundus_guard.index import store

    cache = tmp_path / "cache"
    with monkeypatch.context() as m:  # the index an older guard left in the cache
        m.setattr(audit_runner, "VESSEL_VERSION", "vessel-v2:96")
        m.setattr(store, "VESSEL_VERSION", "vessel-v2:96")
        old = audit_runner.prepare_guard(train_dir=ds["train"], holdout_dir=ds["holdout"], k=5, cache_dir=cache)
    assert json.loads((old.index.path / "meta.json").read_text())["vessel_version"] == "vessel-v2:96"
    new = audit_runner.prepare_guard(train_dir=ds["train"], holdout_dir=ds["holdout"], k=5, cache_dir=cache)
    assert new.index.path != old.index.path and (old.index.path / "meta.json").is_file()
    assert new.index.meta["vessel_version"] == store.VESSEL_VERSION


def test_worker_processes_give_the_same_report_as_one_process(ds, leaky_run, tmp_path):
    """--workers 2 (two spawned processes, each loading the index from its folder) against the in-process run."""
    _, out1, _ = leaky_run
    release = copy_release(ds["leaky"], tmp_path / "leaky")
    res = runner.invoke(app, audit_args(ds, release, tmp_path / "out", "--workers", "2", "--batch-size", "3"))
    assert res.exit_code == 1, res.output
    one, two = (json.loads((o / "report.json").read_text()) for o in (out1, tmp_path / "out"))
    assert [i["file_name"] for i in two["images"]] == [i["file_name"] for i in one["images"]]
    for a, b in zip(one["images"], two["images"]):
        assert (a["verdict"], a["reasons"], a["checks"]) == (b["verdict"], b["reasons"], b["checks"])
        assert a["scores"].keys() == b["scores"].keys()
        for k in a["scores"]:  # single-threaded workers may sum in another order: same to 1e-5
            assert abs(a["scores"][k] - b["scores"][k]) <= 1e-5 * max(1.0, abs(a["scores"][k])), k
    assert one["summary"] == two["summary"] and one["verdict"] == two["verdict"]
    ev1, ev2 = (json.loads((o / "private" / "evidence.json").read_text()) for o in (out1, tmp_path / "out"))
    assert ev1["images"].keys() == ev2["images"].keys()
    for name in ev1["images"]:  # the same evidence names the same closest training images
        m1, m2 = ev1["images"][name]["memorization"], ev2["images"][name]["memorization"]
        assert m1["closest_training_image"] == m2["closest_training_image"]


def test_workers_must_be_a_count(ds, tmp_path):
    release = copy_release(ds["clean"], tmp_path / "clean")
    res = runner.invoke(app, audit_args(ds, release, tmp_path / "out", "--workers", "-1"))
    assert res.exit_code == 2 and not (tmp_path / "out").exists()


def _journal_rows(out: Path) -> int:
    import sqlite3

    path = out / "private" / "journal.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as db:
            return db.execute("SELECT COUNT(*) FROM done").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_audit_killed_midway_resumes_without_redoing_finished_images(ds, leaky_run, tmp_path):
    """kill -9 once some batches are journaled; the same command again checks only the rest and writes the
    report an uninterrupted run writes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    _, straight, _ = leaky_run
    release = copy_release(ds["leaky"], tmp_path / "leaky")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "synfundus_guard.cli.main",
           *audit_args(ds, release, out, "--batch-size", "1", "--workers", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _journal_rows(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = _journal_rows(out)
    n = ds["n_novel"] + ds["n_copies"]
    assert 2 <= finished < n, "the kill must land after some images and before the last"
    assert not (out / "report.json").exists() and not (release / "manifest.json").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stdout + again.stderr
    said = again.stdout + again.stderr
    assert f"resuming: {finished} of {n} images" in " ".join(said.split())
    one, two = (json.loads((o / "report.json").read_text()) for o in (straight, out))
    assert [(i["file_name"], i["verdict"], i["reasons"]) for i in one["images"]] == \
        [(i["file_name"], i["verdict"], i["reasons"]) for i in two["images"]]
    assert one["summary"] == two["summary"] and one["verdict"] == two["verdict"]
    assert not (out / "private" / "journal.sqlite").exists()  # the report holds the results now


def test_a_release_too_small_for_the_membership_test_fails_closed_under_public(ds, tmp_path):
    """6 images: the black-box attacks cannot run, and public.yaml enables membership: not a pass."""
    release = copy_release(ds["clean"], tmp_path / "clean")
    res = runner.invoke(app, audit_args(ds, release, tmp_path / "out"))
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "fail" and report["summary"]["n_fail"] == 0
    assert any("membership inference ran no attack" in v and "opt out explicitly" in v for v in report["violations"])


def test_ray_engine_gives_the_same_report_as_the_local_engine(ds, leaky_run, tmp_path):
    """A real local Ray instance (2 actors, each loading the index from its folder) against the local run."""
    ray = pytest.importorskip("ray")
    try:  # a machine that cannot run Ray at all (no shared memory, no local ports) is not this test's subject
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"this machine cannot start a local Ray instance: {type(exc).__name__}: {exc}")
    finally:
        ray.shutdown()
    _, local, _ = leaky_run
    release = copy_release(ds["leaky"], tmp_path / "leaky")
    res = runner.invoke(app, audit_args(ds, release, tmp_path / "out", "--engine", "ray", "--workers", "2",
                                        "--batch-size", "4"))
    assert res.exit_code == 1, res.output
    assert "checking on Ray (a local instance, 2 workers)" in " ".join(res.output.split())
    one, two = (json.loads((o / "report.json").read_text()) for o in (local, tmp_path / "out"))
    assert [(i["file_name"], i["verdict"], i["reasons"], i["checks"]) for i in one["images"]] == \
        [(i["file_name"], i["verdict"], i["reasons"], i["checks"]) for i in two["images"]]
    for a, b in zip(one["images"], two["images"]):
        assert all(abs(a["scores"][k] - b["scores"][k]) <= 1e-5 * max(1.0, abs(a["scores"][k])) for k in a["scores"])
    assert one["summary"] == two["summary"] and one["verdict"] == two["verdict"]


def test_engine_and_address_are_checked(ds, tmp_path):
    release = copy_release(ds["clean"], tmp_path / "clean")
    bad = runner.invoke(app, audit_args(ds, release, tmp_path / "o1", "--engine", "spark"))
    assert bad.exit_code == 2 and "unknown engine" in bad.output and not (tmp_path / "o1").exists()
    lone = runner.invoke(app, audit_args(ds, release, tmp_path / "o2", "--address", "10.0.0.1:6379"))
    assert lone.exit_code == 2 and "--engine ray" in lone.output and not (tmp_path / "o2").exists()


def test_the_alignment_device_is_checked_and_its_torch_path_gives_the_same_verdicts(ds, leaky_run, tmp_path):
    """``--device``: an unknown name, or CUDA on a machine without a GPU, is a one-line error before any work;
    ``torch-cpu`` runs the GPU code path on the CPU: the local run's verdicts and reasons, scores within 0.005."""
    import torch

    release = copy_release(ds["leaky"], tmp_path / "leaky")
    bad = runner.invoke(app, audit_args(ds, release, tmp_path / "o1", "--device", "tpu"))
    assert bad.exit_code == 2 and "unknown device" in bad.output and not (tmp_path / "o1").exists()
    if not torch.cuda.is_available():
        gpu = runner.invoke(app, audit_args(ds, release, tmp_path / "o2", "--device", "cuda"))
        assert gpu.exit_code == 2 and "no CUDA GPU" in gpu.output and not (tmp_path / "o2").exists()
    res = runner.invoke(app, audit_args(ds, release, tmp_path / "out", "--device", "torch-cpu", "--workers", "1"))
    assert res.exit_code == 1, res.output
    assert "aligning on cpu" in res.output
    _, local, _ = leaky_run
    one, two = (json.loads((o / "report.json").read_text()) for o in (local, tmp_path / "out"))
    def verdicts(report):  # the reasons quote scores to 3 decimals: compare which checks gave them
        return [(i["file_name"], i["verdict"], [r.split(":")[0] for r in i["reasons"]]) for i in report["images"]]

    assert verdicts(one) == verdicts(two)
    for a, b in zip(one["images"], two["images"]):
        assert all(abs(a["scores"][k] - b["scores"][k]) <= 0.005 for k in a["scores"])


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed: apt-get install tesseract-ocr")
def test_a_burned_in_training_patient_id_blocks_even_where_text_only_warns(ds, tmp_path):
    """The audit reads text rows for the training and holdout sets' identifiers: a training patient's id burned
    into a release image fails it under a policy whose text filter only warns; other text stays a warning."""
    import numpy as np

    from synfundus_guard.audit.identity.overlays import draw_text
    from synfundus_guard.data.images import encode_png, load_image

    release = copy_release(ds["clean"], tmp_path / "release")
    for name, text in (("synthetic_000.png", "PAT-004"), ("synthetic_001.png", "OD RIGHT EYE")):
        img, _ = draw_text(load_image(release / name), text, font="pil-default", size=20, position="bottom-left",
                           light=True, colour=(255, 255, 255))
        (release / name).write_bytes(encode_png(np.asarray(img)))
    policy = tmp_path / "text_warns.yaml"
    policy.write_text(Path(SMALL_POLICY).read_text().replace("text: {enabled: true, action: block}",
                                                             "text: {enabled: true, action: warn}"))
    res = runner.invoke(app, audit_args(ds, release, tmp_path / "out", "--no-manifest", policy=str(policy)))
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    by_name = {img["file_name"]: img for img in report["images"]}
    hit, other = by_name["synthetic_000.png"], by_name["synthetic_001.png"]
    assert hit["verdict"] == "fail" and any("burned-in identifier" in r for r in hit["reasons"])
    assert hit["scores"]["text.identifier"] == 1.0 and "PAT-004" not in json.dumps(report)
    assert other["verdict"] == "pass" and other["scores"]["text.identifier"] == 0.0
    assert any("burned-in text" in w for w in other["warnings"])
    private = (tmp_path / "out" / "private" / "evidence.json").read_text()
    assert '"matched_identifier": "PAT004"' in private, "the private report says which identifier matched"
