"""A release's metadata.jsonl loads with Hugging Face ``datasets`` and converts to Parquet (empty structs pruned)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synfundus_guard.data.images import encode_png
from synfundus_guard.fsutil import sha256_bytes
from synfundus_guard.release.manifest import (KEY_ENV, MANIFEST_NAME, METADATA_NAME, build_manifest, render_metadata,
                                              save_manifest, verify_release)
from synfundus_guard.release.writer import ReleaseWriter

N = 4


def write_release(root: Path, labels: dict[str, str]) -> Path:
    """A real release from the writer, with the per-image fields the guarded sampler records."""
    accepted = []
    for i in range(N):
        png = encode_png(np.random.default_rng(i).random((32, 32, 3), dtype=np.float32))
        fields = {"index": i, "seed": 1000 + i, "labels": labels, "scores": {"test.brightness": 0.25 * i},
                  "model": "f" * 64, "warnings": []}
        accepted.append((f"sample_{i:05d}.png", png, fields))
    with ReleaseWriter(root, root.parent / f"{root.name}-quarantine", run_config={"labels": labels}) as writer:
        writer.commit_batch(accepted, [], next_index=N)
        writer.finalize({"model": {"fingerprint": "f" * 64}})
    return root


@pytest.fixture
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing is fetched, and every cache lies under tmp_path."""
    cache = tmp_path / "hf"
    for name, value in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"), ("HF_HOME", str(cache)),
                        ("HF_DATASETS_CACHE", str(cache / "datasets"))):
        monkeypatch.setenv(name, value)
    return cache


@pytest.mark.parametrize("labels", [{}, {"dr_grade": "2", "amd": "0"}], ids=["unconditional", "conditional"])
def test_release_converts_to_parquet(tmp_path: Path, offline_hf: Path, labels: dict[str, str]) -> None:
    datasets = pytest.importorskip("datasets")
    pq = pytest.importorskip("pyarrow.parquet")
    release = write_release(tmp_path / "release", labels)
    assert verify_release(release).ok
    rows = [json.loads(line) for line in (release / METADATA_NAME).read_text().splitlines()]
    assert all(("labels" in row) == bool(labels) for row in rows), "an empty labels object is not written"
    assert json.loads((release / MANIFEST_NAME).read_text())["files"][0]["labels"] == labels, "the manifest keeps it"

    train = datasets.load_dataset("imagefolder", data_dir=str(release), cache_dir=str(offline_hf / "cache"))["train"]
    out = tmp_path / "release.parquet"
    train.to_parquet(str(out))
    table = pq.read_table(out)
    expected = {"image", "index", "seed", "scores", "model", "verdict", "warnings"} | ({"labels"} if labels else set())
    assert table.num_rows == N and set(table.column_names) == expected
    assert sorted(table.column("seed").to_pylist()) == [1000 + i for i in range(N)]
    assert set(table.column("verdict").to_pylist()) == {"pass"}
    if labels:
        assert table.column("labels").to_pylist() == [labels] * N


def test_nested_empty_objects_are_pruned_everywhere() -> None:
    manifest = {"files": [{"file_name": "a.png", "sha256": "0" * 64, "size": 1, "width": 1, "height": 1,
                           "labels": {}, "scores": {"x": {}, "y": 1.0}, "extra": [{}, {"k": {}}, 3], "w": []}]}
    row = json.loads(render_metadata(manifest))
    assert row == {"file_name": "a.png", "scores": {"y": 1.0}, "extra": [None, None, 3], "w": []}
    legacy = json.loads(render_metadata(manifest, legacy=True))
    assert legacy["labels"] == {} and legacy["scores"]["x"] == {}


def _seal_legacy(release: Path) -> dict:
    """Seal ``release`` as versions before Parquet-safe rows did: metadata.jsonl keeps its empty objects."""
    manifest = build_manifest(release, entries={"a.png": {"labels": {}, "verdict": "pass", "seed": 1}})
    legacy = render_metadata(manifest, legacy=True)
    manifest["metadata"]["sha256"] = sha256_bytes(legacy)
    (release / METADATA_NAME).write_bytes(legacy)
    (release / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def test_releases_sealed_before_pruning_still_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    release = tmp_path / "old"
    release.mkdir()
    (release / "a.png").write_bytes(encode_png(np.zeros((32, 32, 3), dtype=np.float32)))
    manifest = _seal_legacy(release)
    assert b'"labels": {}' in (release / METADATA_NAME).read_bytes()
    assert verify_release(release).ok

    manifest["files"][0]["verdict"] = "fail"  # an edit by hand is still caught under either rendering
    (release / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    result = verify_release(release)
    assert not result.ok and any("per-image fields" in p for p in result.problems)

    manifest["files"][0]["verdict"] = "pass"
    monkeypatch.setenv(KEY_ENV, "release-key")
    save_manifest(release, manifest)  # re-saved to sign it: the rows its hash names are kept
    assert b'"labels": {}' in (release / METADATA_NAME).read_bytes()
    assert verify_release(release).ok and "hmac_sha256" in json.loads((release / MANIFEST_NAME).read_text())

    save_manifest(release, build_manifest(release, entries={"a.png": {"labels": {}, "verdict": "pass"}}))
    assert b"labels" not in (release / METADATA_NAME).read_bytes() and verify_release(release).ok
