"""``--select-confident``: the guarded sampler releases only samples whose labels a real-data classifier confirms.

A 2-step tiny model draws near-noise, so which samples a classifier confirms is not up to the test. Instead every
test computes the reference itself: the same samples (same seed, indices, batch size), the selector's fitted
classifier's probability of each conditioning label, and each sample's brightness (the routing check). The
thresholds are then chosen against that reference, and the sampler must do exactly what it predicts.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from typer.testing import CliRunner

from synfundus_guard.audit.base import Candidate, Check, Finding
from synfundus_guard.cli.main import app
from synfundus_guard.errors import InputError, ModelError
from synfundus_guard.generation.model import load_model
from synfundus_guard.generation.sample import sample_images
from synfundus_guard.generation.sampler import GenerateStatus, generate_release
from synfundus_guard.generation.select import (UNSELECTED_LIMIT_FACTOR, ConfidentSelector, exhausted, features,
                                               unselected_count)
from synfundus_guard.generation.train import train_model
from synfundus_guard.policies.schema import FilterPolicy, GenerationPolicy, IdentityPolicy, Policy
from synfundus_guard.release.manifest import read_manifest, verify_release
from tests.interrupt import StopAfterBatches

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(steps=2, resolution=32, batch_size=4, channels=(16, 32), seed=2)
RUN = dict(seed=1, labels={"eye": "OD"}, batch_size=4, steps=2)
WINDOW = 48
"""Reference samples computed; every run below ends within them."""
_OFF = FilterPolicy(enabled=False)
MEMO_ONLY = IdentityPolicy(vessels=_OFF, text=_OFF, faces=_OFF, metadata=_OFF)
LENIENT = Policy(name="test", identity=MEMO_ONLY,
                 generation=GenerationPolicy(max_rejection_rate=0.9, min_samples_before_stop=100))
SHORT = Policy(name="short", identity=MEMO_ONLY,
               generation=GenerationPolicy(max_rejection_rate=0.9, min_samples_before_stop=4))


class BrightnessCheck(Check):
    """A real, deterministic check named ``memorization`` (so the policy blocks on it): flags bright images."""

    name = "memorization"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def check_batch(self, batch: Sequence[Candidate]) -> list[Finding]:
        means = [float(c.image.mean()) for c in batch]
        return [Finding(check=self.name, flagged=m > self.threshold, scores={"test.brightness": m},
                        reasons=(f"brightness {m:.4f}",) if m > self.threshold else ()) for m in means]

    def fingerprint(self) -> dict:
        return {"name": self.name, "threshold": self.threshold}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "guard-cache"))


@pytest.fixture(scope="module")
def data_dir(phantom_14x2: Path) -> Path:
    """14 phantom patients x 2 visits (16 OD, 12 OS images): eye is the label with enough images per class."""
    return phantom_14x2


@pytest.fixture(scope="module")
def eye_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sel") / "eye"
    train_model(train_dir=data_dir, out_dir=out, condition_on=("eye",), holdout_fraction=0.2, **TINY)
    return out


@pytest.fixture(scope="module")
def selector(eye_dir: Path) -> ConfidentSelector:
    return ConfidentSelector.fit(model=load_model(eye_dir), labels=["eye"], threshold=0.5)


@pytest.fixture(scope="module")
def reference(eye_dir: Path, selector: ConfidentSelector) -> dict[str, np.ndarray]:
    """Per sample of the run: the classifier's probability of its label, and its brightness."""
    samples = list(sample_images(load_model(eye_dir), n=WINDOW, **RUN))
    clf = selector.classifiers["eye"]
    proba = clf.predict_proba(features([s.image for s in samples]))
    p = proba[np.arange(WINDOW), [list(clf.classes_).index(s.labels["eye"]) for s in samples]]
    return {"p": p, "bright": np.array([float(s.image.mean()) for s in samples])}


def _expected(ref: dict[str, np.ndarray], *, threshold: float, bright: float, n: int) -> tuple[list, list, int]:
    """(released indices, quarantined indices, unconfirmed count) the sampler must produce, batch by batch."""
    released, quarantined, unselected, i = [], [], 0, 0
    while len(released) < n:
        assert i + RUN["batch_size"] <= WINDOW, "the reference window is too short for this run"
        for k in range(i, i + RUN["batch_size"]):
            if ref["bright"][k] > bright:
                quarantined.append(k)
            elif len(released) < n:
                if ref["p"][k] >= threshold:
                    released.append(k)
                else:
                    unselected += 1
        i += RUN["batch_size"]
    return released, quarantined, unselected


def _files(out: Path) -> list[tuple[str, str]]:
    return sorted((f["file_name"], f["sha256"]) for f in read_manifest(out)["files"])


def test_selection_releases_only_confirmed_samples(eye_dir: Path, selector: ConfidentSelector,
                                                   reference: dict, tmp_path: Path) -> None:
    threshold = 0.999  # the near-noise samples of the tiny model get extreme probabilities
    assert np.abs(reference["p"] - threshold).min() > 1e-4, "no reference probability sits on the threshold"
    bright = float(np.median(reference["bright"][:8]))
    released, quarantined, unselected = _expected(reference, threshold=threshold, bright=bright, n=5)
    assert unselected >= 2 and quarantined, "the reference run exercises every route"
    res = generate_release(model_dir=eye_dir, n=5, out_dir=tmp_path / "r", checks=[BrightnessCheck(bright)],
                           policy=LENIENT, select=dataclasses.replace(selector, threshold=threshold), **RUN)
    assert res.status is GenerateStatus.COMPLETE and verify_release(tmp_path / "r").ok
    assert (res.accepted, res.rejected, res.unselected) == (5, len(quarantined), unselected)
    assert res.drawn == 5 + len(quarantined) and res.rejection_rate == len(quarantined) / (5 + len(quarantined))
    manifest = read_manifest(tmp_path / "r")
    assert sorted(f["index"] for f in manifest["files"]) == released
    assert all(reference["p"][f["index"]] >= threshold for f in manifest["files"])
    assert len(list((tmp_path / "r-quarantine").glob("*.png"))) == len(quarantined), "unconfirmed: not quarantined"
    assert manifest["fingerprints"]["selection"] == {
        "threshold": threshold, "labels": ["eye"], "features": selector.fingerprint()["features"],
        "classifier": selector.fingerprint()["classifier"], "training_images": {"eye": 22},
        "kept": 5, "dropped": unselected}
    text = json.dumps(manifest)
    assert not any(name in text for name in load_model(eye_dir).card.data.train_files), "no training name leaks"


def test_low_threshold_keeps_everything_and_gives_the_same_release(eye_dir: Path, selector: ConfidentSelector,
                                                                   reference: dict, tmp_path: Path) -> None:
    lowest = float(reference["p"].min())
    assert lowest > 0
    kw = dict(model_dir=eye_dir, n=6, checks=[BrightnessCheck(2.0)], policy=LENIENT, **RUN)
    plain = generate_release(out_dir=tmp_path / "plain", **kw)
    kept = generate_release(out_dir=tmp_path / "kept", select=dataclasses.replace(selector, threshold=lowest), **kw)
    assert kept.status is GenerateStatus.COMPLETE and kept.unselected == 0 and plain.unselected == 0
    assert _files(tmp_path / "kept") == _files(tmp_path / "plain")
    assert read_manifest(tmp_path / "kept")["fingerprints"]["selection"]["dropped"] == 0
    assert "selection" not in read_manifest(tmp_path / "plain")["fingerprints"]


def test_threshold_one_stops_the_run_without_a_release(eye_dir: Path, selector: ConfidentSelector,
                                                      reference: dict, tmp_path: Path) -> None:
    limit = UNSELECTED_LIMIT_FACTOR * 2 + SHORT.generation.min_samples_before_stop
    # no sample is certain (log-probability 0): threshold 1.0 confirms none, even where predict_proba rounds to 1.0
    strict = dataclasses.replace(selector, threshold=1.0)
    kw = dict(model_dir=eye_dir, n=2, out_dir=tmp_path / "r", checks=[BrightnessCheck(2.0)], policy=SHORT,
              select=strict, **RUN)
    res = generate_release(report_dir=tmp_path / "report", **kw)
    assert res.status is GenerateStatus.DRAW_LIMIT and not res.status.passed and res.manifest is None
    assert (res.accepted, res.rejected, res.drawn, res.unselected) == (0, 0, 0, limit)
    assert "too few samples confirmed" in res.message and "--select-confident 1" in res.message
    assert not list((tmp_path / "r").glob("*.png")) and not (tmp_path / "r" / "manifest.json").exists()
    assert json.loads((tmp_path / "report" / "report.json").read_text())["verdict"] == "fail"
    again = generate_release(**kw)  # resuming a stopped run stops at once, sampling nothing more
    assert again.status is GenerateStatus.DRAW_LIMIT and again.unselected == limit and again.resumed_at == limit


def test_interrupted_selected_release_resumes_to_the_same_result(eye_dir: Path, selector: ConfidentSelector,
                                                                 reference: dict, tmp_path: Path) -> None:
    threshold = 0.999
    assert np.abs(reference["p"] - threshold).min() > 1e-4
    released, _, unselected = _expected(reference, threshold=threshold, bright=2.0, n=8)
    first = range(2 * RUN["batch_size"])  # what the two batches before the cut hold
    cut_unselected = sum(reference["p"][k] < threshold for k in first if reference["bright"][k] <= 2.0)
    assert 0 < cut_unselected and max(first) < released[-1], "the cut comes after unconfirmed samples, mid-run"
    kw = dict(model_dir=eye_dir, n=8, checks=[BrightnessCheck(2.0)], policy=LENIENT,
              select=dataclasses.replace(selector, threshold=threshold), **RUN)
    straight = generate_release(out_dir=tmp_path / "straight", **kw)
    with pytest.raises(KeyboardInterrupt):
        generate_release(out_dir=tmp_path / "cut", progress=StopAfterBatches(2), **kw)
    res = generate_release(out_dir=tmp_path / "cut", **kw)
    assert res.resumed_at == 8 and res.status is GenerateStatus.COMPLETE
    assert res.unselected == straight.unselected == unselected > cut_unselected
    assert _files(tmp_path / "cut") == _files(tmp_path / "straight") and verify_release(tmp_path / "cut").ok
    assert read_manifest(tmp_path / "cut")["fingerprints"] == read_manifest(tmp_path / "straight")["fingerprints"]
    with pytest.raises(InputError, match="different release"):  # the selection is part of the run's identity
        generate_release(out_dir=tmp_path / "cut", **{**kw, "select": dataclasses.replace(selector, threshold=0.6)})


def test_unselected_count_and_limit() -> None:
    # indices 0..7 judged; 1 and 5 quarantined; released 0, 3, 6 (n=3): 2 and 4 unconfirmed, 7 was surplus
    assert unselected_count(accepted=[0, 3, 6], quarantined=[1, 5, 7], next_index=8, complete=True) == 2
    assert unselected_count(accepted=[0, 3], quarantined=[1, 5], next_index=8, complete=False) == 4
    assert unselected_count(accepted=[], quarantined=[], next_index=0, complete=False) == 0
    assert not exhausted(unselected=23, n=2, warmup=4) and exhausted(unselected=24, n=2, warmup=4)


def _external_model(folder: Path) -> Path:
    unet = UNet2DModel(sample_size=32, block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    return folder


def test_selector_input_errors(eye_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    model = load_model(eye_dir)
    for bad in (0, -0.1, 1.5, float("nan"), "high"):
        with pytest.raises(InputError, match=r"--select-confident must be a probability in \(0, 1\]"):
            ConfidentSelector.fit(model=model, labels=["eye"], threshold=bad)
    with pytest.raises(InputError, match="needs conditioning labels"):
        ConfidentSelector.fit(model=model, labels=[], threshold=0.9)
    with pytest.raises(ModelError, match="not conditioned on 'dr_grade'"):
        ConfidentSelector.fit(model=model, labels=["dr_grade"], threshold=0.9)
    with pytest.raises(ModelError, match="no training card"):
        ConfidentSelector.fit(model=load_model(_external_model(tmp_path / "ext")), labels=["eye"], threshold=0.9)
    grade = tmp_path / "grade"  # dr_grade: 2 of its 5 grades have under 5 training images
    train_model(train_dir=data_dir, out_dir=grade, condition_on=("dr_grade",), holdout_fraction=0.2, **TINY)
    with pytest.raises(InputError, match="label 'dr_grade'.*at least 5 images per class"):
        ConfidentSelector.fit(model=load_model(grade), labels=["dr_grade"], threshold=0.9)
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    train_model(train_dir=copy, out_dir=tmp_path / "m", condition_on=("eye",), holdout_fraction=0.2, **TINY)
    with open(copy / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(copy / "labels.csv", "w", newline="") as fh:  # the column goes after training: the images stay
        writer = csv.DictWriter(fh, fieldnames=[c for c in rows[0] if c != "eye"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ModelError, match="lack column 'eye'"):
        ConfidentSelector.fit(model=load_model(tmp_path / "m"), labels=["eye"], threshold=0.9)


def _write_policy(path: Path) -> Path:
    path.write_text("name: selection-only\nmemorization: {enabled: false}\ngeneration: {min_samples_before_stop: 4}\n"
                    "identity:\n  vessels: {enabled: false}\n  text: {enabled: false}\n  faces: {enabled: false}\n"
                    "  metadata: {enabled: false}\n")
    return path


def test_cli_select_confident(eye_dir: Path, reference: dict, tmp_path: Path) -> None:
    base = ["generate", "--model", str(eye_dir), "--n", "2", "--steps", "2", "--batch-size", "4", "--seed", "1",
            "--policy", str(_write_policy(tmp_path / "p.yaml"))]
    for extra, needle in ((["--select-confident", "0.9"], "needs conditioning labels"),
                          (["--labels", "eye=OD", "--select-confident", "1.5"], "(0, 1]")):
        res = CliRunner().invoke(app, [*base, *extra, "--out", str(tmp_path / "bad")])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
        assert not (tmp_path / "bad").exists()
    lowest = float(reference["p"].min())
    res = CliRunner().invoke(app, [*base, "--labels", "eye=OD", "--select-confident", repr(lowest),
                                   "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert "not confirmed by the label classifier" in res.output and ": 0 sample(s)" in res.output
    assert read_manifest(tmp_path / "ok")["fingerprints"]["selection"]["threshold"] == lowest
    res = CliRunner().invoke(app, [*base, "--labels", "eye=OD", "--select-confident", "1",
                                   "--out", str(tmp_path / "none")])
    assert res.exit_code == 1 and "too few samples confirmed" in res.output
    usage = " ".join(CliRunner().invoke(app, ["generate", "--help"]).output.replace("│", " ").split())
    assert "--select-confident" in usage and "Needs --labels" in usage
