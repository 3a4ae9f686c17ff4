"""``guard evaluate`` end to end on phantom images, and fidelity limits in a policy failing a collapsed release.

Real images: phantom patients the "model" never saw (``real``) and a training set (``train``), both with
``labels.csv``. Releases: new phantom patients (``diverse``: what a faithful generator draws) and many photographs
of only two patients (``collapsed``), sealed with their labels in ``metadata.jsonl``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from synfundus_guard.cli.main import run
from synfundus_guard.data.phantom import generate_phantom
from synfundus_guard.release.manifest import write_manifest
from synfundus_guard.release.report import write_report
from synfundus_guard.results import Report

SIZE = 64
LIMITS = """\
name: fidelity-limits
membership: {enabled: false}
fidelity:
  enabled: true
  min_coverage: 0.8
  min_recall: 0.6
"""


def _release(root: Path, name: str, *, seed: int, patients: int, visits: int) -> Path:
    """A phantom set sealed as a release whose metadata carries each image's dr_grade."""
    folder = root / name
    generate_phantom(folder, patients=patients, visits=visits, size=SIZE, seed=seed)
    with open(folder / "labels.csv", newline="") as fh:
        labels = {row["file_name"]: {"dr_grade": row["dr_grade"], "amd": row["amd"]} for row in csv.DictReader(fh)}
    (folder / "labels.csv").unlink()  # a release holds images and guard's own files only
    write_manifest(folder, entries={n: {"labels": lab} for n, lab in labels.items()})
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fidelity")
    generate_phantom(root / "train", patients=40, visits=2, size=SIZE, seed=11)
    generate_phantom(root / "real", patients=40, visits=2, size=SIZE, seed=12)
    return {"root": root, "train": root / "train", "real": root / "real",
            "diverse": _release(root, "diverse", seed=13, patients=40, visits=2),
            "collapsed": _release(root, "collapsed", seed=14, patients=2, visits=40)}


def _evaluate(sets: dict, release: str, out: Path, *extra: str) -> int:
    return run(["evaluate", "--release", str(sets[release]), "--real", str(sets["real"]), "--train",
                str(sets["train"]), "--out", str(out), "--bootstrap", "30", "--workers", "1", *extra])


@pytest.fixture(scope="module")
def results(sets: dict) -> dict[str, dict]:
    out = {}
    for name in ("diverse", "collapsed"):
        folder = sets["root"] / f"eval-{name}"
        assert _evaluate(sets, name, folder, *(["--labels", "amd"] if name == "diverse" else [])) == 0
        out[name] = json.loads((folder / "fidelity.json").read_text())
    return out


def test_fidelity_json_holds_metrics_with_cis_and_names_nothing(sets, results):
    doc = results["diverse"]
    assert doc["schema"] == "synfundus-guard/fidelity/v1" and doc["features"]["fingerprint"].startswith("stats-v1")
    assert doc["counts"] == {"release": 80, "real": 80, "train": 80}
    for name in ("fd", "kd", "precision", "recall", "density", "coverage", "authenticity"):
        m = doc["metrics"][name]
        assert m["lower"] <= m["point"] <= m["upper"], name
    consistency = doc["labels"]["amd"]["label_consistency"]
    assert 0 <= consistency["synthetic"]["balanced_accuracy"]["point"] <= 1
    assert "tstr" in doc["labels"]["amd"]["utility"]
    text = json.dumps(doc)
    names = [p.name for folder in ("train", "real", "diverse") for p in sets[folder].glob("*.png")]
    assert not [n for n in names if n in text] and "P000" not in text


def test_a_collapsed_release_covers_less_of_the_real_images(results):
    diverse, collapsed = results["diverse"]["metrics"], results["collapsed"]["metrics"]
    for metric in ("coverage", "recall"):
        assert collapsed[metric]["upper"] < diverse[metric]["lower"], metric
    assert collapsed["fd"]["point"] > diverse["fd"]["point"]


def test_gate_fails_the_collapsed_release_under_fidelity_limits(sets, results, tmp_path, capsys):
    policy = tmp_path / "limits.yaml"
    policy.write_text(LIMITS)
    report = write_report(Report(policy={"name": "x", "sha256": "y"}, embedder={}, images=[], verdict="pass"),
                          tmp_path / "audit")
    verdicts = {}
    for name in ("diverse", "collapsed"):
        verdicts[name] = run(["gate", str(report), "--policy", str(policy), "--fidelity",
                              str(sets["root"] / f"eval-{name}" / "fidelity.json")])
    out = capsys.readouterr().out
    assert verdicts == {"diverse": 0, "collapsed": 1}
    assert "fidelity-coverage" in out and "below the policy minimum 0.8" in out
    assert run(["gate", str(report), "--policy", str(policy)]) == 1  # required but not measured: fails closed


def test_bad_inputs_exit_2_with_one_line(sets, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [(["--labels", "no_such_label"], tmp_path / "o1"), ([], foreign), (["--features", "nope"], tmp_path / "o2")]
    for extra, out in cases:
        capsys.readouterr()
        assert _evaluate(sets, "diverse", out, *extra) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert (foreign / "notes.txt").read_text() == "mine" and not (tmp_path / "o1").exists()


def test_audit_evaluate_puts_fidelity_in_the_report_and_its_page(sets, tmp_path):
    policy = tmp_path / "limits.yaml"
    policy.write_text(LIMITS)
    out = tmp_path / "report"
    code = run(["audit", "--release", str(sets["diverse"]), "--train", str(sets["train"]), "--holdout",
                str(sets["real"]), "--policy", str(policy), "--out", str(out), "--evaluate", "--labels", "amd",
                "--workers", "1", "--no-manifest"])
    report = json.loads((out / "report.json").read_text())
    assert code == (0 if report["verdict"] == "pass" else 1)
    fidelity = report["release_checks"]["fidelity"]
    assert fidelity["metrics"]["higher_is_better"]["coverage"] is True and "amd" in fidelity["labels"]
    assert not [v for v in report["violations"] if v.startswith(("coverage", "recall"))]
    assert "Fidelity against real images" in (out / "report.html").read_text()


def test_torchvision_features_from_a_local_checkpoint(sets, tmp_path, capsys):
    """``--features torchvision:ARCH:CKPT`` loads a real torchvision network from a local state_dict file (random
    weights here: no weights can be downloaded), its fingerprint names the file's hash; a bad file is exit 2."""
    import torch
    import torchvision

    torch.manual_seed(0)
    ckpt = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ckpt)
    out = tmp_path / "tv"
    assert _evaluate(sets, "diverse", out, "--features", f"torchvision:resnet18:{ckpt}", "--bootstrap", "0") == 0
    doc = json.loads((out / "fidelity.json").read_text())
    assert doc["features"]["fingerprint"].startswith("torchvision:resnet18:sha256:") and doc["features"]["dim"] == 512
    assert doc["metrics"]["coverage"]["lower"] is None and 0 <= doc["metrics"]["coverage"]["point"] <= 1
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert _evaluate(sets, "diverse", tmp_path / "tv2", "--features", f"torchvision:resnet18:{bad}") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot load torchvision resnet18" in err
