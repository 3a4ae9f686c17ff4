"""Membership inference as an audit runs it: member/non-member sets, refusals, the report entry, ``guard audit``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from synfundus_guard.audit.membership import WhiteBoxAttack, WhiteBoxOptions, release_level_checks, run_membership
from synfundus_guard.audit.membership.run import membership_sets, score_membership
from synfundus_guard.cli.main import app
from synfundus_guard.data.images import encode_png, load_image
from synfundus_guard.data.phantom import generate_phantom
from synfundus_guard.data.split import write_split
from synfundus_guard.errors import InputError
from synfundus_guard.fsutil import atomic_write_bytes
from synfundus_guard.generation.dp import DPConfig
from synfundus_guard.generation.model import load_model
from synfundus_guard.generation.train import train_model
from synfundus_guard.policies.evaluate import evaluate_release
from synfundus_guard.policies.schema import load_policy, parse_policy
from synfundus_guard.progress import Progress
from synfundus_guard.results import Report

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PUBLIC = load_policy("public")
FAST = WhiteBoxOptions(attacks=(WhiteBoxAttack.LOSS, WhiteBoxAttack.PIA))



@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("run")
    generate_phantom(root / "all", patients=24, visits=2, size=64, seed=11)
    split = write_split(root / "all", root / "split", holdout_fraction=0.5, seed=0)
    model = root / "model"
    train_model(train_dir=split.train_dir, out_dir=model, steps=6, resolution=16, batch_size=8, channels=(8, 16),
                holdout_fraction=0.2, seed=0)
    generate_phantom(root / "others", patients=6, visits=2, size=64, seed=12)
    release = root / "release"
    for i, p in enumerate(sorted((root / "others").glob("*.png"))):
        atomic_write_bytes(release / f"sample_{i:03d}.png", encode_png(load_image(p)))
    return {"root": root, "train": split.train_dir, "holdout": split.holdout_dir, "model": model, "release": release}


def labels(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def write_labels(folder: Path, rows: list[dict[str, str]]) -> None:
    with open(folder / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def holdout_with(data, tmp_path: Path, extra: list[dict[str, str]], rename: bool = False) -> Path:
    """A copy of the holdout folder with some training images (rows of the training labels) added."""
    out = tmp_path / "holdout"
    shutil.copytree(data["holdout"], out)
    rows = labels(out)
    for row in extra:
        row = dict(row)
        name = ("x_" + row["file_name"]) if rename else row["file_name"]
        shutil.copy(data["train"] / row["file_name"], out / name)
        patient = "NEW" + row["patient_id"] if rename else row["patient_id"]
        rows.append({**row, "file_name": name, "patient_id": patient})
    write_labels(out, rows)
    return out


def test_a_holdout_sharing_patients_is_refused_with_the_count(data, tmp_path):
    train_rows = labels(data["train"])
    pair = {train_rows[0]["patient_id"], train_rows[-1]["patient_id"]}
    two_patients = [r for r in train_rows if r["patient_id"] in pair]
    holdout = holdout_with(data, tmp_path, two_patients)
    with pytest.raises(InputError, match=r"holdout overlaps the training set: 2 patient\(s\) appear in both"):
        membership_sets(train_dir=data["train"], holdout_dir=holdout)
    result = CliRunner().invoke(app, ["audit", "--release", str(data["release"]), "--model", str(data["model"]),
                                      "--train", str(data["train"]), "--holdout", str(holdout), "--policy",
                                      "public", "--out", str(tmp_path / "out"),
                                      "--cache-dir", str(tmp_path / "cache"), "--no-manifest"])
    assert result.exit_code == 2
    assert "2 patient(s)" in result.output and "Traceback" not in result.output


def test_a_training_image_in_the_holdout_under_another_name_is_refused(data, tmp_path):
    holdout = holdout_with(data, tmp_path, labels(data["train"])[:1], rename=True)
    with pytest.raises(InputError, match=r"1 identical image\(s\) appear in both"):
        membership_sets(train_dir=data["train"], holdout_dir=holdout)


def test_inputs_that_cannot_support_an_attack_are_refused(data, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for row in labels(data["holdout"])[:3]:
        shutil.copy(data["holdout"] / row["file_name"], small / row["file_name"])
    with pytest.raises(InputError, match=r"at least 5 member and 5 non-member images; got 24 and 3"):
        membership_sets(train_dir=data["train"], holdout_dir=small)
    with pytest.raises(InputError, match="needs a model .* or a release"):
        score_membership(train_dir=data["train"], holdout_dir=data["holdout"])


def test_the_training_folder_must_hold_what_the_model_was_trained_on(data, tmp_path):
    card = load_model(data["model"]).card
    train = tmp_path / "train"
    shutil.copytree(data["train"], train)
    victim = train / card.data.train_files[0]
    atomic_write_bytes(victim, encode_png(np.clip(load_image(victim) + 0.05, 0, 1)))
    with pytest.raises(InputError, match="differ in content from those the model was trained on"):
        membership_sets(train_dir=train, holdout_dir=data["holdout"], card=card)
    victim.unlink()
    rows = [r for r in labels(train) if r["file_name"] != card.data.train_files[0]]
    write_labels(train, rows)
    n = len(card.data.train_files)
    with pytest.raises(InputError, match=rf"holds {n - 1} of the {n} images the model was trained on"):
        membership_sets(train_dir=train, holdout_dir=data["holdout"], card=card)


def test_unequal_groups_are_kept_whole_and_counted(data):
    card = load_model(data["model"]).card
    sections = run_membership(policy=PUBLIC, train_dir=data["train"], holdout_dir=data["holdout"],
                              model_dir=data["model"], whitebox=FAST)
    n_members, n_non = len(card.data.train_files), 24 + len(card.data.holdout_files)
    assert n_members != n_non
    image, patient = sections
    assert (image["level"], patient["level"]) == ("image", "patient")
    for m in image["attacks"].values():
        assert (m["n_members"], m["n_nonmembers"]) == (n_members, n_non)
    for m in patient["attacks"].values():
        assert (m["n_members"], m["n_nonmembers"]) == (n_members // 2, n_non // 2)
    assert image["notes"] == []
    capped = score_membership(train_dir=data["train"], holdout_dir=data["holdout"], model_dir=data["model"],
                              whitebox=FAST, max_per_class=10)
    assert len(capped.sets.nonmembers) == 10 and len({r.patient_id for r in capped.sets.nonmembers}) == 5
    assert any(n.startswith("non-members: 10 of") for n in capped.notes)


def test_release_level_checks_carry_dp_facts_and_fail_closed(data, tmp_path):
    dp_model = tmp_path / "dp"
    train_model(train_dir=data["train"], out_dir=dp_model, steps=2, resolution=16, batch_size=8, channels=(8, 16),
                holdout_fraction=0.2, dp=DPConfig(target_epsilon=None, noise_multiplier=1.0))
    off = parse_policy("name: no-membership\nmembership: {enabled: false}\n")
    out = release_level_checks(policy=off, release_dir=data["release"], train_dir=data["train"],
                               holdout_dir=data["holdout"], model_dir=dp_model, embedder="pixel")
    assert set(out) == {"model"} and out["model"]["dp"] is True and out["model"]["delta"] == 1e-5
    assert out["model"]["epsilon"] > 0

    broken = tmp_path / "nan"
    shutil.copytree(data["model"], broken)
    model = load_model(broken)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.fill_(float("nan"))
    model.unet.save_pretrained(broken / "unet", safe_serialization=True)
    out = release_level_checks(policy=PUBLIC, release_dir=data["release"], train_dir=data["train"],
                               holdout_dir=data["holdout"], model_dir=broken, embedder="pixel")
    assert out["model"] == {"dp": False, "epsilon": None, "delta": None}
    assert "non-finite" in out["membership"]["error"]
    report = Report(policy=PUBLIC.fingerprint(), embedder={}, images=[], verdict="pending", release_checks=out)
    verdict = evaluate_release(report, PUBLIC)
    assert verdict.verdict == "fail" and verdict.violations[0].startswith("membership inference could not run")


def test_guard_audit_runs_membership_and_reports_no_identities(data, tmp_path):
    result = CliRunner().invoke(app, ["audit", "--release", str(data["release"]), "--model", str(data["model"]),
                                      "--train", str(data["train"]), "--holdout", str(data["holdout"]), "--policy",
                                      "internal", "--out", str(tmp_path / "out"),
                                      "--cache-dir", str(tmp_path / "cache"), "--no-manifest"])
    assert result.exit_code in (0, 1), result.output
    text = (tmp_path / "out" / "report.json").read_text()
    report = json.loads(text)
    assert report["release_checks"]["model"] == {"dp": False, "epsilon": None, "delta": None}
    sections = report["release_checks"]["membership"]
    assert [s["level"] for s in sections] == ["image", "patient"]
    assert set(sections[0]["attacks"]) == {"loss", "pia", "secmi", "nearest-synthetic", "density-ratio"}
    for row in labels(data["train"]) + labels(data["holdout"]):
        assert row["file_name"] not in text and row["patient_id"] not in text
    assert "membership-auc" in result.output


def test_a_release_too_small_for_black_box_attacks_is_skipped_with_a_warning_and_a_note(data, tmp_path):
    small = tmp_path / "small"
    for p in sorted(data["release"].glob("*.png"))[:6]:
        atomic_write_bytes(small / p.name, p.read_bytes())

    class Recorder(Progress):
        def __init__(self):
            self.lines: list[str] = []

        def log(self, message: str) -> None:
            self.lines.append(message)

    progress = Recorder()
    out = release_level_checks(policy=PUBLIC, release_dir=small, train_dir=data["train"], holdout_dir=data["holdout"],
                               model_dir=None, embedder="pixel", progress=progress)
    # nothing measured: sections without attacks that say why (the policy then fails them closed)
    assert [sec["attacks"] for sec in out["membership"]] == [{}, {}]
    assert all("at least 10 are needed" in sec["notes"][0] for sec in out["membership"])
    assert any("the release has 6 images, at least 10 are needed" in line for line in progress.lines)
    with_model = run_membership(policy=PUBLIC, train_dir=data["train"], holdout_dir=data["holdout"],
                                release_dir=small, model_dir=data["model"], whitebox=FAST)
    assert set(with_model[0]["attacks"]) == {"loss", "pia"}
    assert any("black-box attacks skipped" in n for n in with_model[0]["notes"])
