"""Property-based fuzzing of every command's untrusted inputs (hypothesis).

Generated bad images, label files, policies, reports, manifests and model folders go through the real CLI. For
every input the properties are the same: the exit code is 0, 1 or 2 (2 for bad input, never 1 for a crash), the
output carries no traceback, nothing is half-written, and no file outside the command's output paths changes.
The whole module runs in well under two minutes (``max_examples`` per property below).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from synfundus_guard.cli.main import app
from synfundus_guard.data.images import encode_png

runner = CliRunner()
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file (and link target) under the folders, to prove a command touched nothing it should not."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            key = str(p)
            if p.is_symlink():
                out[key] = b"->" + str(p.readlink()).encode()
            elif p.is_file():
                out[key] = p.read_bytes()
    return out


def invoke(args: list[str]):
    """Run the CLI in-process; assert the contract every command keeps whatever its input."""
    res = runner.invoke(app, [str(a) for a in args])
    crashed = res.exception is not None and not isinstance(res.exception, SystemExit)
    assert not crashed, f"{args[0]} crashed: {type(res.exception).__name__}: {res.exception}"
    assert res.exit_code in (0, 1, 2), (res.exit_code, res.output)
    assert "Traceback" not in res.output, res.output
    if res.exit_code == 2:
        errors = [ln for ln in res.output.splitlines() if ln.startswith("error")]
        assert errors, f"exit 2 without an error line: {res.output!r}"
    return res


# -- strategies ------------------------------------------------------------------------------------------------

def _png(size: int, seed: int) -> bytes:
    return encode_png(np.random.default_rng(seed).random((size, size, 3), dtype=np.float32))


def _animated(fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    frames = [Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)) for _ in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
    return buf.getvalue()


@st.composite
def bad_image_bytes(draw) -> bytes:
    """Garbage, truncated, tiny, animated, or flipped-byte images; some are valid, most are not."""
    seed = draw(st.integers(0, 2**16))
    kind = draw(st.sampled_from(["garbage", "truncated", "tiny", "gif", "webp", "flip", "empty", "valid"]))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=512))
    if kind == "empty":
        return b""
    if kind == "tiny":
        return encode_png(np.zeros((draw(st.integers(1, 31)), 40, 3), np.float32))
    if kind in ("gif", "webp"):
        return _animated(kind.upper(), seed)
    data = bytearray(_png(48, seed))
    if kind == "truncated":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data)


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False),
                      st.text(max_size=20))
JSON_ANY = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                        max_leaves=12)


@st.composite
def mutated_json(draw, base: dict) -> str:
    """A document of ours with one part replaced, deleted, deeply nested or cut, or plain garbage."""
    how = draw(st.sampled_from(["replace", "delete", "nest", "cut", "garbage", "type"]))
    doc = json.loads(json.dumps(base))
    if how == "garbage":
        return draw(st.text(max_size=200))
    if how == "nest":
        return "[" * draw(st.integers(100, 50_000)) + "]" * draw(st.integers(0, 10))
    if how == "type":
        return json.dumps(draw(JSON_ANY))
    text = json.dumps(doc)
    if how == "cut":
        return text[: draw(st.integers(0, len(text) - 1))]
    key = draw(st.sampled_from(sorted(doc)))
    if how == "delete":
        del doc[key]
    else:
        doc[key] = draw(JSON_ANY)
    return json.dumps(doc)


YAML_BITS = st.sampled_from([
    "name: x\n", "memorization: {k: -1}\n", "memorization: [1, 2]\n", "identity: {faces: {action: explode}}\n",
    "a: &a [1, 2]\nb: [*a, *a]\n", "membership: {max_auc: 7}\n", "generation: {max_epsilon: -3}\n", "!!python/object:os.system\n",
    "name: [", "\t- tab", "max_failed_fraction: .nan\n", "name: " + "[" * 200 + "\n", "? complex\n: key\n",
    "bogus: 1\n", "", "\x00", "name: ok\nmemorization: {enabled: false}\n",
])


# -- fixtures --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory) -> None:
    """Keep every cache this module could make out of the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GUARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def sealed(tmp_path_factory) -> Path:
    """A small released folder with its manifest (written by ``guard manifest``)."""
    release = tmp_path_factory.mktemp("fuzz") / "release"
    release.mkdir()
    for i in range(3):
        (release / f"img_{i}.png").write_bytes(_png(40, i))
    assert runner.invoke(app, ["manifest", str(release)]).exit_code == 0
    return release


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    from synfundus_guard.policies.evaluate import evaluate_release
    from synfundus_guard.policies.schema import load_policy
    from synfundus_guard.results import Report
    from synfundus_guard.release.report import write_report

    policy = load_policy("public")
    report = Report(policy=policy.fingerprint(), embedder={"name": "pixel"}, images=[], verdict="pending")
    report.verdict = evaluate_release(report, policy).verdict
    return write_report(report, tmp_path_factory.mktemp("report"))


# -- properties ------------------------------------------------------------------------------------------------

@FUZZ
@given(data=bad_image_bytes(), name=st.sampled_from(["x.png", "x.jpg", "x.gif.png", "x.webp", "x.tif"]))
def test_manifest_and_verify_on_bad_images(tmp_path_factory, data: bytes, name: str) -> None:
    root = tmp_path_factory.mktemp("img")
    release, bystander = root / "release", root / "bystander"
    release.mkdir()
    bystander.mkdir()
    (bystander / "keep.txt").write_text("untouched")
    (release / "ok.png").write_bytes(_png(40, 1))
    (release / name).write_bytes(data)
    before = snapshot(release, bystander)
    res = invoke(["manifest", release])
    if res.exit_code != 0:  # refused: nothing written into the release
        assert snapshot(release, bystander) == before
    else:
        verify = invoke(["verify", release])
        assert verify.exit_code == 0, verify.output
        assert snapshot(bystander) == {k: v for k, v in before.items() if "bystander" in k}


@FUZZ
@given(text=mutated_json({"schema": "synfundus-guard/manifest/v1", "files": [], "root_sha256": "0" * 64,
                          "counts": {"images": 0}, "metadata": {"file_name": "metadata.jsonl", "sha256": "0" * 64}}))
def test_verify_on_bad_manifests(sealed: Path, tmp_path_factory, text: str) -> None:
    release = tmp_path_factory.mktemp("man") / "release"
    shutil.copytree(sealed, release)
    (release / "manifest.json").write_text(text)
    before = snapshot(release)
    res = invoke(["verify", release])
    assert res.exit_code in (1, 2)  # a forged or broken manifest never verifies
    assert snapshot(release) == before


@FUZZ
@given(text=st.one_of(mutated_json({"schema": "synfundus-guard/report/v1", "verdict": "pass", "images": [],
                                    "policy": {}, "summary": {}}), st.text(max_size=300)))
def test_gate_on_bad_reports(report_file: Path, tmp_path_factory, text: str) -> None:
    root = tmp_path_factory.mktemp("gate")
    bad = root / "report.json"
    bad.write_text(text)
    junit, sarif = root / "out" / "j.xml", root / "out" / "s.sarif"
    res = invoke(["gate", bad, "--policy", "public", "--junit", junit, "--sarif", sarif])
    if res.exit_code == 2:
        assert not junit.exists() and not sarif.exists()  # all outputs or none


@FUZZ
@given(bits=st.lists(YAML_BITS, min_size=1, max_size=5))
def test_gate_on_bad_policies(report_file: Path, tmp_path_factory, bits: list[str]) -> None:
    policy = tmp_path_factory.mktemp("pol") / "policy.yaml"
    policy.write_text("".join(bits))
    invoke(["gate", report_file, "--policy", policy])


@FUZZ
@given(csv=st.one_of(st.text(max_size=300), st.lists(st.sampled_from([
    "file_name,image_id,patient_id\n", "a.png,A,P1\n", "a.png,A,P2\n", "../x.png,B,P3\n", "b.png,,\n",
    "file_name\n", "\"unterminated,1,2\n", "b.png,B,P1,extra\n", "\x00,\x00,\x00\n"]), max_size=6).map("".join)))
def test_split_on_bad_labels(phantom_dir: Path, tmp_path_factory, csv: str) -> None:
    root = tmp_path_factory.mktemp("split")
    src = root / "src"
    shutil.copytree(phantom_dir, src)
    (src / "labels.csv").write_text(csv)
    before = snapshot(src)
    res = invoke(["data", "split", src, root / "out", "--holdout-fraction", "0.5"])
    assert snapshot(src) == before
    if res.exit_code == 2:
        assert not (root / "out").exists()


@FUZZ
@given(config=st.one_of(mutated_json({"_class_name": "UNet2DModel", "sample_size": 32, "in_channels": 3,
                                      "out_channels": 3, "block_out_channels": [16, 32]}), JSON_ANY.map(json.dumps)),
       which=st.sampled_from(["unet/config.json", "scheduler/scheduler_config.json", "recipe.json",
                              "training_card.json"]))
def test_generate_on_bad_model_folders(tmp_path_factory, config: str, which: str) -> None:
    """A mutation that leaves the model usable samples through the metadata filter alone (the one check that
    needs no training index), so such an example costs a second, not an index build."""
    from synfundus_guard.generation.model import DEFAULT_MODEL_DIR

    root = tmp_path_factory.mktemp("model")
    policy = root / "metadata-only.yaml"
    policy.write_text("name: fuzz\nmemorization: {enabled: false}\nidentity:\n  vessels: {enabled: false}\n"
                      "  text: {enabled: false}\n  faces: {enabled: false}\n")
    model = root / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    (model / which).write_text(config)
    before = snapshot(model)
    res = invoke(["generate", "--model", model, "--n", "1", "--steps", "1", "--out", root / "release",
                  "--policy", policy])
    assert res.exit_code == 2 or (root / "release" / "manifest.json").exists(), res.output
    if res.exit_code == 2:
        assert not (root / "release").exists()
    assert snapshot(model) == before
