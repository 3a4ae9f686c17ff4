"""croissant.json: every release carries a Croissant 1.1 + RAI document that mlcroissant validates and reads,
and that names no training data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from synfundus_guard.audit.identity.metadata import MetadataCheck
from synfundus_guard.data.images import encode_png
from synfundus_guard.errors import ManifestError
from synfundus_guard.generation.card import DPRecord, read_card
from synfundus_guard.generation.model import DEFAULT_MODEL_DIR
from synfundus_guard.generation.sampler import GenerateStatus, generate_release
from synfundus_guard.policies.schema import FilterPolicy, IdentityPolicy, MemorizationPolicy, Policy
from synfundus_guard.release.croissant import CONFORMS_TO, CROISSANT_NAME, build_croissant, write_croissant
from synfundus_guard.release.manifest import read_manifest, verify_release, write_manifest
from synfundus_guard.release.writer import ReleaseWriter

mlc = pytest.importorskip("mlcroissant")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

_OFF = FilterPolicy(enabled=False)
METADATA_ONLY = Policy(name="croissant-test", memorization=MemorizationPolicy(enabled=False),
                       identity=IdentityPolicy(vessels=_OFF, text=_OFF, faces=_OFF))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release of the built-in (unconditional) model, written by the guarded sampler with one real check."""
    out = tmp_path_factory.mktemp("croissant") / "release"
    res = generate_release(model_dir=None, n=3, out_dir=out, checks=[MetadataCheck()], policy=METADATA_ONLY,
                           seed=0, batch_size=3, steps=2)
    assert res.status is GenerateStatus.COMPLETE
    return out


def records(release: Path) -> list[dict]:
    """Validate croissant.json with mlcroissant (raises on errors) and read every record of ``images``."""
    return list(mlc.Dataset(jsonld=str(release / CROISSANT_NAME)).records("images"))


def test_generated_release_is_valid_croissant(generated: Path) -> None:
    manifest = read_manifest(generated)
    assert verify_release(generated).ok, "croissant.json is allowed beside the images"
    recs = records(generated)
    assert len(recs) == manifest["counts"]["images"] == 3
    files = {f["file_name"]: f for f in manifest["files"]}
    for rec in recs:
        f = files[rec["images/file_name"].decode()]
        assert rec["images/image"].size == (f["width"], f["height"])
        assert rec["images/seed"] == f["seed"] and rec["images/verdict"] == b"pass"
        assert "images/labels" not in rec, "an unconditional model's empty labels are not a column"
    doc = json.loads((generated / CROISSANT_NAME).read_text())
    assert doc["conformsTo"] == CONFORMS_TO and doc["@type"] == "sc:Dataset"
    assert manifest["fingerprints"]["model"]["fingerprint"] in doc["rai:dataCollection"]
    assert "Synthetic" in doc["rai:dataCollection"]
    assert any("metadata (no file metadata" in s for s in doc["rai:personalSensitiveInformation"])
    assert any("not trained with differential privacy" in s for s in doc["rai:dataLimitations"])


def _training_identifiers() -> set[str]:
    """Everything the built-in model's private card says about its training data."""
    card = read_card(DEFAULT_MODEL_DIR)
    names = card.data.train_files + card.data.holdout_files
    stems = {Path(n).stem for n in names}
    return {card.data.train_dir, *names, *stems, *{s.split("_")[0] for s in stems}}


def test_croissant_names_no_training_data(generated: Path, tmp_path: Path) -> None:
    secrets = _training_identifiers()
    assert len(secrets) > 100
    with_card = write_croissant(tmp_path, manifest=read_manifest(generated), card=read_card(DEFAULT_MODEL_DIR))
    for path in (generated / CROISSANT_NAME, with_card):
        text = path.read_text().lower()
        leaked = sorted(s for s in secrets if s.lower() in text)
        assert not leaked, f"{path} leaks {leaked[:3]}"
        assert "train_files" not in text and "data_fingerprint" not in text
    widths = "/".join(map(str, read_card(DEFAULT_MODEL_DIR).block_out_channels))
    assert f"block_out_channels {widths}" in with_card.read_text(), "the card adds the architecture"


def test_dp_facts_come_from_the_card(generated: Path) -> None:
    card = dataclasses.replace(read_card(DEFAULT_MODEL_DIR), dp=DPRecord(
        epsilon=7.5, delta=1e-5, noise_multiplier=1.1, max_grad_norm=1.0, sample_rate=0.01, steps=100))
    doc = build_croissant(manifest=read_manifest(generated), card=card)
    assert "epsilon = 7.5, delta = 1e-05" in " ".join(doc["rai:personalSensitiveInformation"])


def _png(i: int) -> bytes:
    return encode_png(np.random.default_rng(i).random((32, 32, 3), dtype=np.float32))


def test_labels_become_subfields_and_resume_completes_the_card(tmp_path: Path) -> None:
    release, config = tmp_path / "release", {"labels": "conditional"}
    accepted = [(f"s{i}.png", _png(i), {"seed": i, "labels": {"dr_grade": str(i % 3), "amd": "0"},
                                        "scores": {"test.brightness": 0.5}}) for i in range(5)]
    with ReleaseWriter(release, tmp_path / "q", run_config=config) as writer:
        writer.commit_batch(accepted, [], next_index=5)
        writer.finalize({"model": {"fingerprint": "f" * 64}})
    recs = sorted(records(release), key=lambda r: r["images/file_name"])
    assert [r["images/labels"]["images/labels/dr_grade"] for r in recs] == [b"0", b"1", b"2", b"0", b"1"]
    assert recs[0]["images/scores"]["images/scores/test.brightness"] == 0.5

    written = (release / CROISSANT_NAME).read_bytes()
    (release / CROISSANT_NAME).unlink()  # as if the finalize had been cut short right after sealing
    (release / ".croissant.json.x1y2.tmp").write_text("{")
    with ReleaseWriter(release, tmp_path / "q", run_config=config) as writer:
        assert writer.state.finalized
    assert (release / CROISSANT_NAME).read_bytes() == written, "no creation time: the same bytes again"
    assert not (release / ".croissant.json.x1y2.tmp").exists() and verify_release(release).ok


def test_sealed_folder_with_subfolders(tmp_path: Path) -> None:
    """``guard manifest`` seals any folder: its croissant.json says what is not known, and nested files load."""
    release = tmp_path / "folder"
    (release / "sub").mkdir(parents=True)
    for i, name in enumerate(("a.png", "sub/b.png", "sub/c.png")):
        (release / name).write_bytes(_png(i))
    with pytest.raises(ManifestError, match="no manifest.json"):
        write_croissant(release)
    write_manifest(release)
    write_croissant(release)
    assert sorted(r["images/file_name"] for r in records(release)) == [b"a.png", b"sub/b.png", b"sub/c.png"]
    doc = json.loads((release / CROISSANT_NAME).read_text())
    assert doc["rai:dataCollection"].startswith("Not recorded")
    assert verify_release(release).ok


def test_guard_manifest_writes_croissant_but_keeps_a_hand_made_one(tmp_path: Path, capsys) -> None:
    from synfundus_guard.cli.main import run

    release = tmp_path / "folder"
    release.mkdir()
    (release / "a.png").write_bytes(_png(0))
    assert run(["manifest", str(release)]) == 0
    assert json.loads((release / CROISSANT_NAME).read_text())["conformsTo"] == CONFORMS_TO
    mine = '{"name": "my own card"}\n'
    (release / CROISSANT_NAME).write_text(mine)
    assert run(["manifest", str(release), "--force"]) == 0
    assert (release / CROISSANT_NAME).read_text() == mine and "kept your own croissant.json" in capsys.readouterr().out
